"""TensorRT engines: the sidecar, the checks made before deserializing, and (on a GPU) builds and parity.

Everything above the `gpu` marker runs anywhere: it needs neither tensorrt nor a GPU, which is the point
of the sidecar. The `gpu` tests build fp32 and fp16 engines for the tiny model and compare with PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from vaekit.cli.main import app
from vaekit.errors import VaekitError
from vaekit.export.tensorrt.build import check_gpu_precision, check_precision, make_sidecar
from vaekit.runtimes.artifacts import read_sidecar, sidecar_path
from vaekit.runtimes.backends.trt import check_compatible, layer_precisions
from vaekit.runtimes.registry import BACKENDS, describe, load_decoder

runner = CliRunner()
ORIN = {"name": "Orin", "compute_capability": "8.7"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
XAVIER = {"name": "Xavier", "compute_capability": "7.2"}
TRT_MISSING = BACKENDS["trt"].status("cuda")
no_tensorrt_here = pytest.mark.skipif(not TRT_MISSING, reason="TensorRT and a GPU are usable here")
gpu = pytest.mark.gpu
needs_tensorrt = pytest.mark.skipif(bool(TRT_MISSING), reason=f"needs TensorRT on a CUDA GPU: {TRT_MISSING}")


@pytest.fixture(scope="module")
def fp32_art(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("trt_art")
    export_artifacts(conv_run, out, max_batch=8)
    return out


def fake_plan(art: Path, name: str = "decoder.plan", **overrides: object) -> Path:
    """Bytes standing in for an engine, with the sidecar build_engine would write for it."""
    plan = art / name
    data = os.urandom(4096)
    plan.write_bytes(data)
    graph = onnx.load(art / "decoder.onnx", load_external_data=False)
    sidecar = make_sidecar(
        {p.key: p.value for p in graph.metadata_props},
        plan=data,
        precision="fp32",
        tensorrt_version="10.3.0",
        gpu=ORIN,
        profile={"input": "z", "min": [1, 4], "opt": [6, 4], "max": [6, 4]},
        source_onnx="decoder.onnx",
        source_sha256=hashlib.sha256((art / "decoder.onnx").read_bytes()).hexdigest(),
        layers={"fp32": 5},
        build_seconds=1.0,
    )
    sidecar.update(overrides)
    sidecar_path(plan).write_text(json.dumps(sidecar))
    return plan


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_sidecar_describes_the_engine_without_tensorrt(fp32_art: Path) -> None:
    plan = fake_plan(fp32_art)
    info = describe(plan)
    graph = describe(fp32_art / "decoder.onnx")
    assert (info.role, info.latent_dim, info.image_shape, info.value_range) == (
        "decoder",
        graph.latent_dim,
        graph.image_shape,
        graph.value_range,
    )
    assert (info.backend, info.device, info.precision, info.max_batch) == ("tensorrt", "cuda", "fp32", 6)
    assert info.source_sha256 == graph.source_sha256 and info.extra["tensorrt_version"] == "10.3.0"
    result = runner.invoke(app, ["info", str(plan), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["max_batch"] == 6
    sidecar = read_sidecar(plan)
    assert sidecar is not None and sidecar["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert {"vaekit_version", "tensorrt_version", "gpu", "precision", "profile", "source_onnx_sha256"} <= set(sidecar)


def test_a_bad_sidecar_is_refused(fp32_art: Path, tmp_path: Path) -> None:
    plan = fake_plan(fp32_art, "enc.plan", format=99)
    with pytest.raises(VaekitError, match="not a vaekit engine sidecar"):
        describe(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(VaekitError, match="not a vaekit engine sidecar"):
        describe(plan)


def test_version_and_gpu_mismatch_name_both_and_the_rebuild(fp32_art: Path) -> None:
    plan = fake_plan(fp32_art)
    sidecar = read_sidecar(plan)
    assert sidecar is not None
    check_compatible(plan, sidecar, "10.3.0", ORIN)  # same TensorRT, same GPU: fine
    for trt_version, gpu_here in (
        ("11.4.0.106", ORIN),
        ("10.3.0", H100),
        ("10.3.0", {**ORIN, "compute_capability": "8.6"}),
    ):
        with pytest.raises(VaekitError) as caught:
            check_compatible(plan, sidecar, trt_version, gpu_here)
        message = str(caught.value)
        assert "TensorRT 10.3.0 for Orin (compute 8.7)" in message
        assert f"TensorRT {trt_version} and {gpu_here['name']} (compute {gpu_here['compute_capability']})" in message
        assert f"rebuild on this device with `vaekit build-engine {fp32_art / 'decoder.onnx'}`" in message
        assert "\n" not in message


def test_truncated_or_replaced_plan_fails_before_tensorrt_is_needed(fp32_art: Path) -> None:
    plan = fake_plan(fp32_art)
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(VaekitError, match=r"decoder.plan is 1000 bytes but decoder.plan.json says 4096: truncated"):
        load_decoder(plan, "cuda")
    result = runner.invoke(app, ["generate", "--engine", str(plan), "--out", str(fp32_art / "g.png")])
    assert result.exit_code == 1 and len(error_lines(result.stderr)) == 1, result.stderr
    assert "truncated" in error_lines(result.stderr)[0] and "vaekit build-engine" in error_lines(result.stderr)[0]
    plan = fake_plan(fp32_art)
    plan.write_bytes(os.urandom(4096))
    with pytest.raises(VaekitError, match="does not match the sha256"):
        load_decoder(plan, "cuda")
    with pytest.raises(VaekitError, match="runs on cuda"):
        load_decoder(fake_plan(fp32_art), "cpu")


def test_layer_precisions_read_both_inspector_schemas() -> None:
    trt10 = {
        "Layers": [
            {"LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
            {"LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Channel major FP16 format"}]},
            {"LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
            {"LayerType": "kgen", "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]},
        ],
        "Bindings": ["z", "image"],
    }
    assert layer_precisions(trt10) == {"fp16": 1, "fp32": 1, "unknown": 1}
    trt11 = {"Layers": [{"LayerType": "CaskConvolution", "Outputs": [{"DataType": "Half", "Format": "kHWC8"}]}]}
    assert layer_precisions(trt11) == {"fp16": 1}
    assert layer_precisions({"Layers": ["conv_1", "sigmoid"]}) == {"unknown": 2}  # LAYER_NAMES_ONLY
    check_precision("fp16", {"fp16": 1, "fp32": 1}, "decoder.fp16.onnx")
    check_precision("fp32", {"fp32": 3}, "decoder.onnx")
    with pytest.raises(VaekitError, match=r"no fp16 layer .*3 fp32.*not written"):
        check_precision("fp16", {"fp32": 3}, "decoder.fp16.onnx")


@no_tensorrt_here
def test_without_tensorrt_each_entry_point_says_what_is_missing(fp32_art: Path, conv_run: Path) -> None:
    plan = fake_plan(fp32_art)
    commands = (
        ["export", "--checkpoint", str(conv_run), "--trt", "--out", str(fp32_art.parent / "never")],
        ["build-engine", str(fp32_art / "decoder.onnx")],
        ["build-engine", str(fp32_art / "decoder.onnx"), "--precision", "fp16"],
        ["build-engine", str(fp32_art / "decoder.onnx"), "--precision", "bf16"],
        ["generate", "--engine", str(plan), "--out", str(fp32_art / "g.png")],
    )
    for args in commands:
        result = runner.invoke(app, args)
        lines = error_lines(result.stderr)
        assert result.exit_code == 1 and len(lines) == 1, (args, result.stderr)
        assert "tensorrt not installed" in lines[0] and "pip install 'vaekit[trt]'" in lines[0], lines[0]
    for precision in ("fp16", "bf16"):  # nothing converted for a build that cannot happen
        assert not (fp32_art / f"decoder.{precision}.onnx").exists()
    assert not (fp32_art.parent / "never").exists()


def test_bf16_engines_need_compute_8_0() -> None:
    check_gpu_precision("bf16", ORIN)
    check_gpu_precision("bf16", H100)
    check_gpu_precision("fp16", XAVIER)
    with pytest.raises(VaekitError, match=r"Xavier \(compute 7.2\) has no bfloat16.*8.0 or newer.*fp16 graph"):
        check_gpu_precision("bf16", XAVIER)


def test_build_engine_usage_errors(fp32_art: Path) -> None:
    for args, pattern in (
        ([str(fp32_art / "parity_inputs.npz")], "takes an .onnx graph"),
        ([str(fp32_art / "decoder.onnx"), "--precision", "int8"], "Q/DQ graph"),
        ([str(fp32_art / "decoder.onnx"), "--precision", "fp8"], "--precision must be"),
    ):
        result = runner.invoke(app, ["build-engine", *args])
        assert result.exit_code == 2 and pattern in error_lines(result.stderr)[0], result.stderr


# ---- on a CUDA GPU with TensorRT -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if TRT_MISSING:
        pytest.skip(f"needs TensorRT on a CUDA GPU: {TRT_MISSING}")
    from vaekit.export.pipeline import export_artifacts
    from vaekit.runtimes.backends.cuda import gpu_identity

    found = {}
    for precision in ("fp32", "fp16", "bf16"):
        try:
            check_gpu_precision(precision, gpu_identity(0))
        except VaekitError:
            continue  # a bf16 build on a GPU without bf16 (tested above without a GPU)
        out = tmp_path_factory.mktemp(f"engines_{precision}")
        result = export_artifacts(conv_run, out, max_batch=8, precision=precision, trt=True)
        assert result.report.passed, result.report.to_json()
        found[precision] = out
    return found


def _cases(art: Path, runtime: str) -> dict[str, dict[str, float]]:
    report = json.loads((art / "parity.json").read_text())
    return {c["output"]: c["metrics"] for c in report["cases"] if c["runtime"] == runtime}


@gpu
@needs_tensorrt
def test_fp32_engines_match_pytorch_within_1e_3(engines: dict[str, Path]) -> None:
    cases = _cases(engines["fp32"], "tensorrt-cuda-fp32")
    assert set(cases) == {"mu", "log_var", "image"}
    assert all(m["max_abs"] <= 1e-3 for m in cases.values()), cases


@gpu
@needs_tensorrt
def test_fp16_engines_reach_40_db_and_run_in_fp16(engines: dict[str, Path]) -> None:
    from vaekit.runtimes.backends.trt import gpu_identity, import_trt

    cases = _cases(engines["fp16"], "tensorrt-cuda-fp16")
    assert cases["image"]["psnr"] >= 40.0, cases
    sidecar = read_sidecar(engines["fp16"] / "decoder.plan")
    assert sidecar is not None and sidecar["precision"] == "fp16" and sidecar["layers"].get("fp16", 0) > 0
    assert sidecar["source_onnx"] == "decoder.fp16.onnx"
    assert sidecar["tensorrt_version"] == import_trt().__version__ and sidecar["gpu"] == gpu_identity(0)


@gpu
@needs_tensorrt
def test_bf16_engines_reach_40_db_and_run_in_bf16(engines: dict[str, Path]) -> None:
    from vaekit.runtimes.backends.cuda import gpu_identity

    if not engines.get("bf16"):
        pytest.skip("this GPU has no bfloat16 arithmetic")
    cases = _cases(engines["bf16"], "tensorrt-cuda-bf16")
    assert cases["image"]["psnr"] >= 40.0, cases
    sidecar = read_sidecar(engines["bf16"] / "decoder.plan")
    assert sidecar is not None and sidecar["precision"] == "bf16" and sidecar["layers"].get("bf16", 0) > 0
    assert sidecar["source_onnx"] == "decoder.bf16.onnx" and sidecar["gpu"] == gpu_identity(0)


@gpu
@needs_tensorrt
def test_generate_round_trip_with_and_without_sidecar(engines: dict[str, Path], conv_run: Path, tmp_path: Path) -> None:
    from vaekit.runtimes.proving.parity import metrics
    from vaekit.runtimes.registry import load_decoder as load_reference_decoder

    art = engines["fp16"]
    for name in ("with", "without"):
        if name == "without":
            sidecar_path(art / "decoder.plan").unlink()
        args = ["generate", "--engine", str(art / "decoder.plan"), "--n", "11", "--out", str(tmp_path / f"{name}.png")]
        result = runner.invoke(app, [*args, "--npy", str(tmp_path / f"{name}.npz"), "--trust"])
        assert result.exit_code == 0, result.stderr
        with np.load(tmp_path / f"{name}.npz") as f:
            reference = load_reference_decoder(conv_run).decode(f["z"])
            assert metrics(reference, f["images"], (0.0, 1.0))["psnr"] >= 40.0
    info = describe(art / "decoder.plan")  # from the engine itself now
    assert (info.role, info.latent_dim, info.max_batch, info.precision) == ("decoder", 4, 8, "fp16")


@gpu
@needs_tensorrt
def test_engine_refusals_on_a_gpu(engines: dict[str, Path], tmp_path: Path) -> None:
    art = engines["fp32"]
    decoder = load_decoder(art / "decoder.plan", "cuda")
    assert decoder.decode(np.zeros((1, 4), np.float32)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"outside this artifact's range 1\.\.8"):
        decoder.decode(np.zeros((9, 4), np.float32))
    sidecar = read_sidecar(art / "decoder.plan")
    assert sidecar is not None
    stale = tmp_path / "decoder.plan"
    stale.write_bytes((art / "decoder.plan").read_bytes())
    sidecar_path(stale).write_text(json.dumps({**sidecar, "tensorrt_version": "9.0.0"}))
    with pytest.raises(VaekitError, match=r"built with TensorRT 9\.0\.0.*rebuild on this device"):
        load_decoder(stale, "cuda")
    sidecar_path(stale).unlink()
    stale.write_bytes((art / "decoder.plan").read_bytes()[:2000])
    with pytest.raises(VaekitError, match="cannot deserialize"):
        load_decoder(stale, "cuda")


@gpu
@needs_tensorrt
def test_build_engine_command_and_parser_errors(engines: dict[str, Path], tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from vaekit.export.tensorrt.build import build_engine

    art = engines["fp32"]
    out = tmp_path / "d16.plan"
    result = runner.invoke(app, ["build-engine", str(art / "decoder.onnx"), "--precision", "fp16", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    built = read_sidecar(out)
    assert built is not None and built["precision"] == "fp16"
    assert (art / "tensorrt.timing.cache").is_file()
    node = helper.make_node("NoSuchOp", ["z"], ["image"], domain="vaekit.test")
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 2, 2])],
    )
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("vaekit.test", 1)])
    meta = {p.key: p.value for p in onnx.load(art / "decoder.onnx", load_external_data=False).metadata_props}
    for key, value in meta.items():
        bad.metadata_props.add(key=key, value=value)
    onnx.save(bad, tmp_path / "bad.onnx")
    with pytest.raises(VaekitError, match=r"TensorRT cannot parse bad\.onnx: node"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.plan", 4)
    assert not (tmp_path / "bad.plan").exists()
