"""A runtime chosen by measurement: only verified rows are candidates, and `--runtime auto` loads the winner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.runtimes.measuring.bench import Row, pick_best

runner = CliRunner()
QUICK = ["--warmup", "1", "--min-runs", "3", "--min-seconds", "0", "--max-seconds", "0.2"]


def _row(runtime: str, p50: float, parity: str, batch: int = 1) -> Row:
    return Row(runtime, "decoder", "fp32", batch, p50_ms=p50, artifact="decoder.onnx", parity=parity)


def test_only_rows_whose_parity_passed_can_win() -> None:
    rows = [
        _row("fast-but-wrong", 0.1, "FAIL: image psnr 12.0 dB < 30 dB"),
        _row("fast-unchecked", 0.2, "not run: golden_outputs.npz not found"),
        _row("slow-and-right", 0.9, "pass"),
        _row("right", 0.5, "pass"),
        _row("right", 3.0, "pass", batch=8),
        Row("missing", "decoder", "-", 0, note="not installed"),
    ]
    best = pick_best(rows)
    assert [(b["batch"], b["runtime"]) for b in best] == [(1, "right"), (8, "right")]
    assert set(best[0]) >= {"graph", "batch", "runtime", "precision", "p50_ms", "parity"}
    assert pick_best(rows[:2]) == []  # nothing verified: nothing chosen


def test_bench_records_the_winner_and_generate_auto_uses_it(conv_art: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    auto = ["generate", "--engine", str(art), "--runtime", "auto", "--n", "4", "--out", str(tmp_path / "g.png")]
    before = runner.invoke(app, auto)
    assert_one_line_error(before.exit_code, before.stderr, f"vaekit bench {art} --record")

    args = ["bench", str(art), "--batch-sizes", "1,4", "--runtimes", "onnxruntime,onnxruntime-as-stored"]
    result = runner.invoke(app, [*args, "--graphs", "decoder", *QUICK, "--record", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert {b["batch"] for b in report["best"]} == {1, 4}
    assert all(
        b["parity"] == "pass" and b["runtime"] in ("onnxruntime", "onnxruntime-as-stored") for b in report["best"]
    )
    assert all(r["parity"] == "pass" for r in report["rows"] if r["p50_ms"])
    recorded = json.loads((art / "fastest.json").read_text())
    assert recorded["best"] == report["best"] and recorded["machine"]["cpu"]

    after = runner.invoke(app, auto)
    assert after.exit_code == 0, after.stderr
    assert "--runtime auto:" in after.stdout and (tmp_path / "g.png").is_file()
