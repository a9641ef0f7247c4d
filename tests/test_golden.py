"""Golden outputs: a device judges every artifact against the model's own outputs, without torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.runtimes.artifacts import GOLDEN_OUTPUTS, load_golden, load_inputs
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_wasm
from vaekit.runtimes.registry import load_decoder, load_encoder

runner = CliRunner()


def test_export_stores_the_pytorch_outputs_for_the_parity_inputs(conv_run: Path, conv_art: Path) -> None:
    images_u8, z = load_inputs(conv_art)
    images = images_u8.astype(np.float32) / 255
    golden = load_golden(conv_art, images, z)
    mu, log_var = load_encoder(conv_run).encode(images)
    np.testing.assert_array_equal(golden["mu"], mu)
    np.testing.assert_array_equal(golden["log_var"], log_var)
    np.testing.assert_array_equal(golden["image"], load_decoder(conv_run).decode(z))
    manifest = json.loads((conv_art / "manifest.json").read_text())
    assert GOLDEN_OUTPUTS in manifest["files"]  # hashed like every artifact


def test_parity_without_a_checkpoint_judges_against_the_golden_outputs(conv_art: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["parity", str(conv_art), "--devices", "cpu", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["reference"]["backend"] == "golden" and report["passed"]
    fp32 = [c for c in report["cases"] if c["runtime"] == "onnxruntime-cpu-fp32"]
    assert {c["output"] for c in fp32} >= {"mu", "log_var", "image"}  # the fp32 graphs themselves are proved
    assert all(c["metrics"]["max_abs"] < 1e-4 for c in fp32)


def test_a_tampered_golden_file_is_refused_in_one_line(conv_art: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    with np.load(art / GOLDEN_OUTPUTS) as f:
        golden = {k: f[k] for k in f.files}
    golden["image"] = golden["image"] * 0.5  # a lie that would make a broken runtime look right
    np.savez(art / GOLDEN_OUTPUTS, **golden)
    result = runner.invoke(app, ["parity", str(art), "--devices", "cpu"])
    assert_one_line_error(result.exit_code, result.stderr, "does not match the sha256 in manifest.json")


def test_missing_golden_outputs_say_how_to_go_on(conv_art: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    (art / GOLDEN_OUTPUTS).unlink()
    result = runner.invoke(app, ["parity", str(art), "--devices", "cpu"])
    assert_one_line_error(result.exit_code, result.stderr, "--reference-onnx")
    fallback = runner.invoke(app, ["parity", str(art), "--devices", "cpu", "--reference-onnx"])
    assert fallback.exit_code == 0 and "parity passed" in fallback.stdout, fallback.stderr


def test_other_images_need_the_checkpoint(conv_art: Path) -> None:
    result = runner.invoke(app, ["parity", str(conv_art), "--data", "digits"])
    assert_one_line_error(result.exit_code, result.stderr, "pass --checkpoint")


def test_the_cpu_graph_is_an_artifact_plain_onnx_runtime_runs_fast_and_exactly(conv_art: Path) -> None:
    cpu_graph = conv_art / "decoder.cpu.onnx"
    model = onnx.load(str(cpu_graph))
    portable = onnx.load(str(conv_art / "decoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvTranspose") < [n.op_type for n in portable.graph.node].count("ConvTranspose")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["graph"] == "cpu" and json.loads(meta["cpu_rewrites"]) and meta["precision"] == "fp32"
    _, z = load_inputs(conv_art)
    plain = load_decoder(cpu_graph, "cpu", rewrite=False)  # as an application's own ONNX Runtime loads it
    reference = load_decoder(conv_art / "decoder.onnx", "cpu", rewrite=False)
    assert float(np.abs(plain.decode(z) - reference.decode(z)).max()) < 1e-5
    assert "decoder.cpu.onnx" in json.loads((conv_art / "manifest.json").read_text())["files"]


def test_the_web_graph_is_the_fold_alone_exact_and_proved_by_parity(conv_art: Path) -> None:
    web, cpu = onnx.load(str(conv_art / "decoder.web.onnx")), onnx.load(str(conv_art / "decoder.cpu.onnx"))
    meta = {p.key: p.value for p in web.metadata_props}
    assert meta["graph"] == "web" and json.loads(meta["web_rewrites"]) == rewrite_for_wasm(
        onnx.load(str(conv_art / "decoder.onnx"))
    )
    ops, cpu_ops = [n.op_type for n in web.graph.node], [n.op_type for n in cpu.graph.node]
    assert "DepthToSpace" in cpu_ops and "DepthToSpace" not in ops  # no phase convolutions: slower in wasm
    assert ops.count("Gemm") == 1 and "ConvTranspose" in ops
    _, z = load_inputs(conv_art)
    plain = load_decoder(conv_art / "decoder.web.onnx", "cpu", rewrite=False)
    reference = load_decoder(conv_art / "decoder.onnx", "cpu", rewrite=False)
    assert float(np.abs(plain.decode(z) - reference.decode(z)).max()) < 1e-5
    report = json.loads((conv_art / "parity.json").read_text())
    proved = {c["runtime"] for c in report["cases"] if c["path"].endswith("decoder.web.onnx") and c["passed"]}
    assert "onnxruntime-cpu-fp32" in proved, report["cases"]
    assert "decoder.web.onnx" in json.loads((conv_art / "manifest.json").read_text())["files"]
