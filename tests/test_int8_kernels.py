"""The numpy model of the non-VNNI int8 kernels, on any machine; and, where qemu-user can present an AVX2-only
CPU, against ONNX Runtime's own AVX2 kernels, so a VNNI machine checks what an AVX2 box computes."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vaekit.data import to_float
from vaekit.export.precisions import int8
from vaekit.runtimes.artifacts import load_inputs
from vaekit.runtimes.backends.onnxrt import cpu_session
from vaekit.runtimes.cpu import int8_class
from vaekit.runtimes.proving.int8_kernels import (
    INT16_MAX,
    fused,
    saturating_matmul,
    saturation_free,
    simulate,
)
from vaekit.runtimes.proving.parity import TOLERANCES, judge, metrics

QEMU = shutil.which("qemu-x86_64")
AVX2_CPU = "Haswell"  # AVX2 + FMA, no AVX-512, no VNNI: the Zen 1-3 / Haswell-Comet Lake class


def qdq_conv(weight: np.ndarray, x_scale: float, pads: int = 1) -> onnx.ModelProto:
    """x (float) -> Q -> DQ -> Conv(DQ(int8 weight)) -> Q -> DQ -> y: the pattern ONNX Runtime fuses."""
    cout, cin = weight.shape[:2]
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
        numpy_helper.from_array(weight.astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.array(4.0, np.float32), "ys"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], "conv", pads=[pads] * 4),
        helper.make_node("QuantizeLinear", ["c", "ys", "xz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "xz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_pair_sums_saturate_as_the_instruction_does() -> None:
    a = np.full((3, 64), 255, np.int32)
    w = np.full((2, 64), 127, np.int8)
    got, evaluated, clipped = saturating_matmul(a, w)
    assert (got == 32 * INT16_MAX).all()  # each of the 32 pairs: 2 x 255 x 127 = 64770, clipped to 32767
    assert evaluated == clipped == 3 * 2 * 32
    rng = np.random.default_rng(0)
    small = rng.integers(0, 100, (5, 9)).astype(np.int32)
    wide = rng.integers(-127, 128, (4, 9)).astype(np.int8)
    exact, _, none = saturating_matmul(small, wide)  # odd K padded; |pair| <= 2 x 99 x 127 < 32767
    assert none == 0 and (exact == small.astype(np.int64) @ wide.T.astype(np.int64)).all()


def test_opposite_signs_and_seven_bit_weights_never_saturate() -> None:
    a = np.full((2, 8), 255, np.int32)
    w = np.array([[127, -127] * 4, [64, 64] * 4], np.int8)
    got, _, clipped = saturating_matmul(a, w)
    assert clipped == 0 and (got == a.astype(np.int64) @ w.T.astype(np.int64)).all()


def test_a_saturating_conv_is_computed_as_the_kernel_computes_it() -> None:
    weight = np.full((2, 4, 3, 3), 127, np.int8)
    model = qdq_conv(weight, x_scale=1 / 127)
    x = np.ones((1, 4, 6, 6), np.float32)  # q = 127, the kernel's u8 view 255: every pair saturates
    (got,), found = simulate(model, x)
    # interior pixels: 9 taps x 4 channels = 18 pairs, each 32767 after the clip, minus the shift 128 x sum(w)
    acc = 18 * INT16_MAX - 128 * 127 * 36
    expected = np.clip(np.round(acc * (1 / 127) * 0.01 / 4.0), -128, 127) * 4.0
    assert got[0, :, 2:4, 2:4] == pytest.approx(np.full((2, 2, 2), expected))
    exact = np.clip(np.round(127 * 127 * 36 * (1 / 127) * 0.01 / 4.0), -128, 127) * 4.0
    assert expected < exact  # what VNNI computes for the same graph
    assert found.saturated["conv"] > 0 and not saturation_free(model)
    assert saturation_free(qdq_conv(np.full((2, 4, 3, 3), 64, np.int8), 1 / 127))


def test_a_shared_dequantize_leaves_its_readers_in_float(int8_art: tuple[Path, dict[str, Any]]) -> None:
    art, _ = int8_art
    encoder = onnx.load(str(art / "encoder.int8.onnx"))
    names = {n.name for n in fused(encoder)}
    gemms = [n for n in encoder.graph.node if n.op_type == "Gemm"]
    assert gemms and not names & {n.name for n in gemms}  # fc_mu and fc_var read one DQ
    assert any(n.op_type == "Conv" for n in fused(encoder))


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_the_model_computes_a_saturation_free_graph_as_onnx_runtime_does(
    int8_art: tuple[Path, dict[str, Any]], role: str
) -> None:
    art, reports = int8_art
    path = art / f"{role}.int8.onnx"
    model = onnx.load(str(path))
    images, z = load_inputs(art)
    feed = to_float(images, (0.0, 1.0)) if role == "encoder" else z
    got, found = simulate(model, feed)
    ort = cpu_session(str(path)).run(None, {model.graph.input[0].name: feed})
    if reports[role]["scheme"] == int8.SCHEME_7BIT:
        assert saturation_free(model) and found.total == 0
    if found.total == 0:  # exact integer sums on both sides: only the float rescaling may round differently
        for a, b in zip(got, ort, strict=True):
            assert metrics(b, a, None)["min_cosine"] > 0.9999


def test_the_portable_int8_graph_holds_on_the_avx2_class(int8_art: tuple[Path, dict[str, Any]]) -> None:
    """Judged by the kernel model on any machine: the graph `--int8-target any` ships must meet the int8 rows."""
    art, reports = int8_art
    images, z = load_inputs(art)
    for role, feed in (("encoder", to_float(images, (0.0, 1.0))), ("decoder", z)):
        got, _ = simulate(onnx.load(str(art / f"{role}.int8.onnx")), feed)
        ref = cpu_session(str(art / f"{role}.onnx")).run(None, {"image" if role == "encoder" else "z": feed})
        for name, a, b in zip(("mu", "log_var") if role == "encoder" else ("image",), ref, got, strict=True):
            tol = TOLERANCES[("int8", "cpu")][name]
            assert not judge(metrics(a, b, (0.0, 1.0) if name == "image" else None), tol), (role, name)
        assert reports[role]["cpu_classes"]["classes"]["avx2"].endswith("within tolerance")


def test_the_class_of_this_cpu_is_read_from_its_flags() -> None:
    assert int8_class({"avx2", "fma", "avx512f", "avx512_vnni"}) == "vnni"
    assert int8_class({"avx2", "fma", "avx_vnni"}) == "vnni"  # Alder Lake and later: VNNI without AVX-512
    assert int8_class({"avx2", "fma", "avx512f", "avx512bw"}) == "avx2"  # Skylake-X: AVX-512 but no VNNI
    assert int8_class({"avx2", "fma"}) == "avx2"
    assert int8_class({"asimd", "asimddp"}) == "arm64"


# --- against ONNX Runtime's AVX2 kernels, under qemu-user presenting an AVX2-only CPU ---------------------------

RUN_UNDER_QEMU = """
import sys, numpy as np, onnxruntime as ort
model, inputs, out = sys.argv[1:4]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.load(inputs)["x"]
np.savez(out, *s.run(None, {s.get_inputs()[0].name: x}))
"""


def on_avx2(model: Path, x: np.ndarray, tmp: Path) -> list[np.ndarray]:
    np.savez(tmp / "in.npz", x=x)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(QEMU), "-cpu", AVX2_CPU, sys.executable, "-c", RUN_UNDER_QEMU, str(model), str(tmp / "in.npz")]
    done = subprocess.run([*cmd, str(tmp / "out.npz")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    found = np.load(tmp / "out.npz")
    return [found[k] for k in found.files]


needs_qemu = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs an x86-64 machine with qemu-user (Debian: apt-get install qemu-user)",
)


@needs_qemu
def test_onnx_runtime_saturates_on_avx2_as_the_model_says(tmp_path: Path) -> None:
    model = qdq_conv(np.full((2, 4, 3, 3), 127, np.int8), x_scale=1 / 127)
    onnx.save(model, str(tmp_path / "conv.onnx"))
    x = np.ones((1, 4, 6, 6), np.float32)
    (avx2,) = on_avx2(tmp_path / "conv.onnx", x, tmp_path)
    (modelled,), _ = simulate(model, x)
    assert avx2 == pytest.approx(modelled)
    (here,) = cpu_session(str(tmp_path / "conv.onnx")).run(None, {"x": x})
    if int8_class() in ("vnni", "arm64"):  # int32 accumulation here: the same graph computes more
        assert (here > avx2).any()


@needs_qemu
@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_the_shipped_int8_graphs_meet_parity_on_avx2_kernels(
    int8_art: tuple[Path, dict[str, Any]], role: str, tmp_path: Path
) -> None:
    art, _ = int8_art
    images, z = load_inputs(art)
    feed = to_float(images, (0.0, 1.0)) if role == "encoder" else z
    got = on_avx2(art / f"{role}.int8.onnx", feed, tmp_path)
    modelled, _ = simulate(onnx.load(str(art / f"{role}.int8.onnx")), feed)
    ref = cpu_session(str(art / f"{role}.onnx")).run(None, {"image" if role == "encoder" else "z": feed})
    for name, a, b, m in zip(("mu", "log_var") if role == "encoder" else ("image",), ref, got, modelled, strict=True):
        vr = (0.0, 1.0) if name == "image" else None
        assert not judge(metrics(a, b, vr), TOLERANCES[("int8", "cpu")][name]), (role, name)
        assert metrics(b, m, vr)["min_cosine"] > 0.9999  # the kernel model is what AVX2 computes


def test_a_failing_int8_graph_says_what_this_cpu_class_means_for_it(
    int8_art: tuple[Path, dict[str, Any]], conv_art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaekit.runtimes import cpu
    from vaekit.runtimes.proving.parity import Tolerance, load_reference, run_parity

    art, _ = int8_art
    for item in [*art.iterdir(), conv_art / "golden_outputs.npz"]:
        shutil.copy(item, tmp_path / item.name)
    model = onnx.load(str(tmp_path / "decoder.int8.onnx"))
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "int8_target": "vnni"})
    onnx.save(model, str(tmp_path / "decoder.int8.onnx"))
    monkeypatch.setattr(cpu, "int8_class", lambda flags=None: "avx2")  # as an AVX2 box would report itself
    monkeypatch.setitem(TOLERANCES[("int8", "cpu")], "image", Tolerance(min_psnr=300.0))  # and fail there
    images_u8, z = load_inputs(tmp_path)
    images = to_float(images_u8, (0.0, 1.0))
    report = run_parity(tmp_path, load_reference(tmp_path, None, images, z), images, z, devices=("cpu",))
    line = report.failure()
    assert "decoder.int8.onnx was made for vnni, arm64 CPUs (--int8-target vnni)" in line
    assert "this CPU is avx2" in line and "re-export with --int8-target any" in line
    assert cpu.int8_class_note("x.onnx", "any", here="avx2").endswith("does not explain this failure")
    assert "predates CPU-class checks" in cpu.int8_class_note("x.onnx", None, here="vnni")
