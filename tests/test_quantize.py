"""INT8: explicit Q/DQ graphs with per-channel weights, fp32 I/O, metadata, parity within the int8 tolerances;
and the exact CPU rewrites they are built on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vaekit.data import to_float
from vaekit.errors import VaekitError
from vaekit.export.precisions import int8
from vaekit.export.precisions.int8 import quantize_int8
from vaekit.runtimes import load_decoder
from vaekit.runtimes.artifacts import load_inputs
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu
from vaekit.runtimes.backends.onnxrt import OrtDecoder
from vaekit.runtimes.proving.parity import fixed_latents, load_reference, run_parity, typical_rows


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_int8_graph_is_explicit_qdq_with_per_channel_weights(int8_art: tuple[Path, dict[str, Any]], role: str) -> None:
    art, reports = int8_art
    model = onnx.load(str(art / f"{role}.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "ConvTranspose" not in ops  # the CPU provider has no int8 ConvTranspose: upsampling became convs
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    float_layers = set(reports[role]["fp32_layers"])
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.name not in float_layers]
    assert weighted
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        q_weight, scale, zero = (inits[i] for i in dq.input[:3])
        assert q_weight.dtype == np.int8
        assert scale.ndim == 1 and scale.size > 1, node.name  # one scale per output channel
        if node.op_type == "Conv":
            assert scale.size == q_weight.shape[0], node.name
        assert not zero.any()  # symmetric, as TensorRT requires
    activation_zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in activation_zero_points)
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    fp32_meta = {p.key: p.value for p in onnx.load(str(art / f"{role}.onnx")).metadata_props}
    assert meta["precision"] == "int8"
    assert meta["int8_scheme"] == reports[role]["scheme"] and meta["int8_target"] == "any"
    own = ("precision", "int8_scheme", "int8_target")
    assert {k: v for k, v in meta.items() if k not in own} == {k: v for k, v in fp32_meta.items() if k not in own}
    if reports[role]["scheme"] == int8.SCHEME_7BIT:  # what makes it hold without VNNI: no pair sum can saturate
        assert all(np.abs(inits[producers[n.input[1]].input[0]].astype(int)).max() <= 64 for n in weighted)


def test_int8_parity_within_the_int8_tolerances(int8_art: tuple[Path, dict[str, Any]], conv_run: Path) -> None:
    art, reports = int8_art
    images_u8, z = load_inputs(art)
    images = to_float(images_u8, (0.0, 1.0))
    report = run_parity(art, load_reference(art, conv_run, images, z), images, z, devices=("cpu",))
    cases = [c for c in report.cases if c.runtime.endswith("int8")]
    assert {c.output for c in cases} == {"mu", "log_var", "image", "image_stress"}
    assert all(c.passed for c in cases), [(c.output, c.broken) for c in cases]
    image = next(c for c in cases if c.output == "image")
    assert 30.0 <= image.metrics["psnr"] < 200.0  # lossy, but within the int8 tolerance
    for role, r in reports.items():  # which layers stay float is the search's measured choice, on any CPU
        assert r["within_tolerance"] and r["quantized_layers"] > 0, role
        assert len(r["fp32_layers"]) <= int8.MAX_FP32_LAYERS, role
    assert reports["decoder"]["calibration_count"] > reports["encoder"]["calibration_count"]  # mu + prior latents
    assert "mu" in reports["decoder"]["calibration"]


def test_layers_fall_back_to_fp32_when_the_target_is_missed(
    tmp_path: Path, int8_art: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    art, _ = int8_art
    monkeypatch.setattr(int8, "PSNR_MARGIN_DB", 500.0)  # an unreachable target forces every fallback
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(art / name, tmp_path / name)
    images_u8, z = load_inputs(art)
    r = quantize_int8(tmp_path / "decoder.onnx", tmp_path / "decoder.int8.onnx", to_float(images_u8, (0.0, 1.0)), z)
    fallbacks = [a["fp32_layers"] for a in r["attempts"][2:]]  # after the two calibrations, ever more float layers
    assert [len(f) for f in fallbacks] == list(range(1, int8.MAX_FP32_LAYERS + 1))
    assert r["fp32_layers"] == []  # float layers that do not reach the target are not worth their speed
    model = onnx.load(str(tmp_path / "decoder.int8.onnx"))
    float_weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert not float_weights & {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    assert load_decoder(tmp_path / "decoder.int8.onnx").decode(z).shape == (len(z), 1, 16, 16)


def test_quantize_refuses_what_it_cannot_start_from(int8_art: tuple[Path, dict[str, Any]]) -> None:
    art, _ = int8_art
    images = np.zeros((4, 1, 16, 16), np.float32)
    with pytest.raises(VaekitError, match="already int8"):
        quantize_int8(art / "decoder.int8.onnx", art / "again.onnx", images, fixed_latents(4, 4))
    with pytest.raises(VaekitError, match="at least one image"):
        quantize_int8(art / "encoder.onnx", art / "again.onnx", images[:0], fixed_latents(4, 4))


def test_stress_latents_are_told_apart() -> None:
    z = fixed_latents(64, 16)  # rows 0-2 are the +-4 corners
    kept = z[typical_rows(z)]
    assert len(kept) == 61 and not (np.abs(kept) == 4.0).all(axis=1).any()


@pytest.mark.parametrize("every_upsample", [False, True])
def test_cpu_rewrites_are_exact(conv_art: Path, every_upsample: bool) -> None:
    src = conv_art / "decoder.onnx"
    model = onnx.load(str(src))
    done = rewrite_for_cpu(model, every_upsample=every_upsample)
    assert any("one Gemm" in d for d in done) and any("phase space" in d for d in done)
    onnx.checker.check_model(model, full_check=True)
    z = fixed_latents(8, 4) * 0.75
    reference = OrtDecoder(src, rewrite=False).decode(z)
    import onnxruntime as ort

    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert OrtDecoder(src).rewrites == rewrite_for_cpu(onnx.load(str(src)))  # the runtime applies the same passes


def test_a_failed_int8_graph_is_set_aside_and_the_verified_export_published(
    tmp_path: Path, conv_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from vaekit.cli.app import PARTIAL
    from vaekit.cli.main import app
    from vaekit.runtimes.proving.parity import TOLERANCES, Tolerance

    monkeypatch.setitem(TOLERANCES[("int8", "cpu")], "image", Tolerance(min_psnr=300.0))  # no int8 image meets it
    out = tmp_path / "art"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(conv_run), "--out", str(out), "--int8"])
    assert result.exit_code == PARTIAL, result.output
    assert "not published: decoder.int8.onnx" in result.output and "--int8-target vnni" in result.output
    assert "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["dropped"]) == {"decoder.int8.onnx"} and manifest["parity"]["passed"]
    assert "decoder.int8.onnx" not in manifest["files"] and "encoder.int8.onnx" in manifest["files"]
    assert not (out / "decoder.int8.onnx").exists() and (tmp_path / "art-rejected" / "decoder.int8.onnx").is_file()
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and {c["path"] for c in parity["cases"]} >= {"decoder.onnx", "encoder.int8.onnx"}
    assert load_decoder(out / "decoder.onnx").decode(fixed_latents(2, 4)).shape == (2, 1, 16, 16)
