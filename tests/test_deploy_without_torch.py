"""The edge-box install: numpy + onnxruntime, no torch. Run the CLI in a subprocess where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Blocks the training-side packages the way a box without them would: `import torch` raises ImportError.
PRELUDE = (
    "import sys\n"
    "for name in ('torch', 'sklearn', 'safetensors', 'onnxscript'):\n"
    "    sys.modules[name] = None\n"
    "from vaekit.cli.main import main\n"
    "sys.argv = ['vaekit', *sys.argv[1:]]\n"
    "main()\n"
    "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
)


def vaekit_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE, *args], capture_output=True, text=True, timeout=120)


def test_deploy_commands_work_without_torch(conv_art: Path, tmp_path: Path) -> None:
    for args in (
        ["generate", "--engine", str(conv_art / "decoder.onnx"), "--n", "4", "--out", str(tmp_path / "g.png")],
        ["generate", "--engine", str(conv_art), "--traverse", "3", "--n", "6", "--out", str(tmp_path / "t.png")],
        ["reconstruct", "--encoder", str(conv_art), "--decoder", str(conv_art), "--out", str(tmp_path / "r.png")],
        ["info", str(conv_art / "encoder.onnx")],
        ["info"],
    ):
        result = vaekit_without_torch(*args)
        assert result.returncode == 0, (args, result.stderr)
    assert (tmp_path / "g.png").is_file() and (tmp_path / "r.png").is_file()


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["export", "--checkpoint", "runs/x"], ["eval"]])
def test_training_side_commands_name_the_extra(command: list[str], tmp_path: Path) -> None:
    result = vaekit_without_torch(*command, *(["--out", str(tmp_path / "r")] if command[0] == "train" else []))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "pip install 'vaekit[train]'" in result.stderr


def test_a_checkpoint_needs_torch_says_so(conv_run: Path, tmp_path: Path) -> None:
    result = vaekit_without_torch("generate", "--engine", str(conv_run), "--out", str(tmp_path / "g.png"))
    assert result.returncode == 1 and "vaekit[train]" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def int8_art(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("int8_art")
    assert export_artifacts(conv_run, out, max_batch=8, int8=True, calibration_images=64).report.passed
    return out


def test_parity_between_onnx_artifacts_and_bench_without_torch(int8_art: Path, tmp_path: Path) -> None:
    result = vaekit_without_torch("parity", str(int8_art), "--devices", "cpu", "--json", str(tmp_path / "p.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    # the golden outputs stored at export: the PyTorch model's own numbers, judged without torch
    assert report["reference"]["backend"] == "golden" and report["reference"]["precision"] == "fp32"
    assert {"onnxruntime-cpu-int8", "onnxruntime-cpu-fp32"} <= {c["runtime"] for c in report["cases"]}
    assert report["passed"] and all(c["passed"] for c in report["cases"])
    bench = vaekit_without_torch(
        "bench",
        str(int8_art),
        "--batch-sizes",
        "1",
        "--min-runs",
        "3",
        "--min-seconds",
        "0",
        "--max-seconds",
        "1",
        "--runtimes",
        "onnxruntime,pytorch",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["runtime"] for r in rows if r["p50_ms"]} == {"onnxruntime"}
    assert "PyTorch not installed" in next(r["note"] for r in rows if r["runtime"] == "pytorch")


# The ncnn device install: numpy + ncnn + pillow, no torch and no other runtime.
NCNN_ONLY = PRELUDE.replace(
    "'onnxscript')", "'onnxscript', 'onnxruntime', 'openvino', 'tensorrt', 'executorch', 'pnnx')"
)


def test_an_ncnn_device_generates_and_checks_itself_against_the_golden_outputs(conv_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("ncnn", reason="ncnn is in the ncnn and mobile extras")
    from vaekit.export.pipeline import export_artifacts

    art = tmp_path / "art"
    assert export_artifacts(conv_run, art, max_batch=8, ncnn=True).report.passed

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", NCNN_ONLY, *args], capture_output=True, text=True, timeout=120)

    png = tmp_path / "g.png"
    result = run("generate", "--engine", str(art / "decoder.ncnn.param"), "--n", "8", "--out", str(png))
    assert result.returncode == 0, result.stderr
    assert png.is_file()
    result = run("parity", str(art), "--devices", "cpu", "--json", str(tmp_path / "p.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["reference"]["backend"] == "golden" and report["passed"]
    assert {c["runtime"] for c in report["cases"]} == {"ncnn-cpu-fp32", "ncnn-cpu-fp16"}  # nothing else runs here
    assert any("onnxruntime" in s and "not installed" in s for s in report["skipped"])
