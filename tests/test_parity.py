from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.runtimes.proving import parity
from vaekit.runtimes.proving.parity import Tolerance, batch_sizes_for, fixed_latents, judge, metrics
from vaekit.runtimes.registry import BACKENDS

runner = CliRunner()


def test_metrics_by_hand() -> None:
    ref = np.array([[0.0, 0.5, 1.0, 0.5]], np.float32)
    got = ref + np.array([[0.1, 0.0, 0.0, -0.1]], np.float32)
    m = metrics(ref, got, (0.0, 1.0))
    assert m["max_abs"] == pytest.approx(0.1)
    assert m["mean_abs"] == pytest.approx(0.05)
    assert m["max_rel"] == pytest.approx(0.1 / 1e-3)  # the zero divides by the floor
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / 0.005))
    cos = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert m["min_cosine"] == pytest.approx(cos)
    same = metrics(ref, ref, (0.0, 1.0))
    assert same["max_abs"] == 0 and same["psnr"] == parity.PSNR_CAP and same["min_cosine"] == pytest.approx(1.0)


def test_judge_names_each_broken_limit() -> None:
    m = {"max_abs": 0.2, "mean_abs": 0.1, "max_rel": 1.0, "min_cosine": 0.9, "psnr": 20.0}
    assert judge(m, Tolerance(max_abs=0.3, min_cosine=0.8, min_psnr=10)) == []
    broken = judge(m, Tolerance(max_abs=0.1, min_cosine=0.99, min_psnr=30))
    assert len(broken) == 3 and broken[0].startswith("max_abs")


def test_fixed_latents_reach_four() -> None:
    z = fixed_latents(16, 6)
    assert z.dtype == np.float32 and np.abs(z).max() == 4.0
    assert (z[0] == 4).all() and (z[1] == -4).all()
    assert np.array_equal(z, fixed_latents(16, 6))
    assert (
        batch_sizes_for(64, 64) == [1, 7, 64]
        and batch_sizes_for(8, 8) == [1, 7, 8]
        and batch_sizes_for(2, 64) == [1, 2]
    )


def test_export_wrote_a_passing_report(conv_art: Path) -> None:
    report = json.loads((conv_art / "parity.json").read_text())
    assert report["passed"] is True
    outputs = {(c["runtime"], c["output"]) for c in report["cases"]}
    assert {("onnxruntime-cpu-fp32", o) for o in ("mu", "log_var", "image", "image_stress")} <= outputs
    manifest = json.loads((conv_art / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert {"encoder.onnx", "decoder.onnx", "parity_inputs.npz"} <= set(manifest["files"])
    assert manifest["versions"]["onnxruntime"]


def _tamper(art: Path) -> None:
    """Nudge one decoder weight: a subtly wrong artifact that parity must catch."""
    path = art / "decoder.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))


def test_parity_cli(conv_art: Path, conv_run: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    args = ["parity", str(art), "--checkpoint", str(conv_run), "--json", str(tmp_path / "p.json"), "--devices", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "parity passed" in result.stdout
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["reference"]["backend"] == "pytorch"
    with Image.open(art / "parity.png") as img:
        assert img.width > 100 and len(np.unique(np.asarray(img))) > 10


def test_parity_catches_a_wrong_artifact(conv_art: Path, conv_run: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    _tamper(art)
    result = runner.invoke(app, ["parity", str(art), "--checkpoint", str(conv_run), "--json", str(tmp_path / "p.json")])
    assert_one_line_error(result.exit_code, result.stderr, "parity failed")
    assert "FAIL" in result.stdout
    cases = json.loads((tmp_path / "p.json").read_text())["cases"]
    failed = {c["output"] for c in cases if not c["passed"]}
    assert "image" in failed and failed <= {"image", "image_stress"}  # the encoder is untouched and still passes


def test_export_refuses_success_when_parity_fails(
    conv_run: Path, conv_art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "art"
    shutil.copytree(conv_art, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    strict = {o: Tolerance(max_abs=0.0) for o in parity.OUTPUTS}  # ORT differs in the last bits
    monkeypatch.setitem(parity.TOLERANCES, ("fp32", "cpu"), strict)
    args = ["export", "--checkpoint", str(conv_run), "--out", str(out), "--max-batch", "4", "--overwrite"]
    result = runner.invoke(app, args)
    assert_one_line_error(result.exit_code, result.stderr, "parity failed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten
    rejected = tmp_path / "art-rejected"
    assert (rejected / "decoder.onnx").is_file() and (rejected / "parity.json").is_file()
    assert not list(tmp_path.glob(".art.staging-*"))


def test_parity_without_a_checkpoint_needs_something_to_compare(
    conv_art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for other in set(BACKENDS) - {"onnxrt"}:  # only the reference's own runtime is left
        monkeypatch.delitem(BACKENDS, other)
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    for derived in ("decoder.cpu.onnx", "decoder.web.onnx"):  # and only the reference's own graphs
        (art / derived).unlink()
    result = runner.invoke(app, ["parity", str(art), "--devices", "cpu", "--reference-onnx"])
    assert_one_line_error(result.exit_code, result.stderr, "nothing to compare")
