"""`vaekit bench` on the tiny artifacts: sane numbers, FLOPs counted by hand, missing runtimes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from vaekit.cli.main import app
from vaekit.runtimes.backends.onnxrt import cpu_cores
from vaekit.runtimes.measuring.bench import BenchSettings, run_bench
from vaekit.runtimes.measuring.bench_child import time_calls
from vaekit.runtimes.measuring.flops import count_flops
from vaekit.runtimes.measuring.machine import cpu_peak

runner = CliRunner()
QUICK = ["--warmup", "1", "--min-runs", "3", "--min-seconds", "0", "--max-seconds", "0.2"]


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_flops_of_a_known_graph(tmp_path: Path) -> None:
    """x (N,2,5,5) -> Conv 3x3 to 3 ch -> ConvTranspose s2 to 4 ch (10x10) -> flatten -> Gemm to 5 -> MatMul to 6."""
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node(
            "ConvTranspose",
            ["c", "wt"],
            ["t"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        ),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "wm"], ["y"]),
    ]
    inits = [
        _weight("wc", 3, 2, 3, 3),
        _weight("wt", 3, 4, 3, 3),
        numpy_helper.from_array(np.array([-1, 400], np.int64), "shape"),
        _weight("wg", 5, 400),
        _weight("wm", 5, 6),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.save(model, str(tmp_path / "known.onnx"))
    flops = count_flops(tmp_path / "known.onnx")
    assert flops["Conv"] == 2 * (3 * 5 * 5) * (2 * 3 * 3)  # 2 x outputs x MACs per output = 2700
    assert flops["ConvTranspose"] == 2 * (3 * 5 * 5) * (4 * 3 * 3)  # 2 x inputs x outputs each scatters to = 5400
    assert flops["Gemm"] == 2 * 5 * 400  # 4000
    assert flops["MatMul"] == 2 * 6 * 5  # 60
    assert flops["total"] == 2700 + 5400 + 4000 + 60


def test_peak_is_cores_times_clock_times_isa() -> None:
    peak = cpu_peak(2)
    assert peak["flop_per_cycle"] in (8, 16, 32, 64)
    assert peak["peak_gflops"] == pytest.approx(2 * peak["clock_ghz"] * peak["flop_per_cycle"], rel=1e-3)


def test_timing_stops_at_a_stable_median() -> None:
    times = time_calls(lambda x: x.sum(), np.ones(10), warmup=1, min_runs=5, min_seconds=0.0, max_seconds=5.0)
    assert 5 <= len(times) < 10_000 and all(t > 0 for t in times)


def test_bench_numbers_are_sane_and_missing_runtimes_are_notes(conv_art: Path, tmp_path: Path) -> None:
    settings = BenchSettings(
        batch_sizes=[1, 4],
        runtimes=["onnxruntime", "pytorch", "tensorrt"],
        graphs=["decoder", "encoder"],
        warmup=1,
        min_runs=3,
        min_seconds=0.0,
        max_seconds=0.2,
        checkpoint=str(tmp_path / "no-such-run"),
    )
    report = run_bench(conv_art, settings)
    measured = [r for r in report.rows if r.p50_ms is not None]
    assert {(r.runtime, r.graph, r.batch) for r in measured} == {
        ("onnxruntime", g, b) for g in ("decoder", "encoder") for b in (1, 4)
    }
    for r in measured:
        assert r.p95_ms is not None and r.p95_ms >= r.p50_ms > 0
        assert r.images_per_s == pytest.approx(r.batch / (r.p50_ms / 1e3), rel=0.01)
        assert r.gflops is not None and r.gflops > 0 and r.runs >= 3 and not r.note
        assert r.peak_rss_mb is not None and r.peak_rss_mb > 0  # the runtime library and model, at least
    assert report.flops_per_image["decoder"] == count_flops(conv_art / "decoder.onnx")["total"] > 0
    assert report.machine["threads"] == cpu_cores() and report.machine["cpu"]["gemm_gflops"] > 0
    notes = {r.runtime: r.note for r in report.rows if r.p50_ms is None}
    assert "not found" in notes["pytorch"]
    assert notes["tensorrt"]  # not installed here, or no .plan engine in this directory: a note either way


def test_bench_cli_writes_table_json_and_png(conv_art: Path, tmp_path: Path) -> None:
    args = ["bench", str(conv_art), "--batch-sizes", "2", "--runtimes", "onnxruntime", "--graphs", "decoder"]
    result = runner.invoke(app, [*args, *QUICK, "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.stderr
    assert "onnxruntime" in result.stdout and "GFLOP/s" in result.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["rows"][0]["batch"] == 2 and data["machine"]["cpu"]["peak_gflops"] > 0
    assert Image.open(tmp_path / "b.png").size[0] > 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,9"], "batch size 9 is beyond this artifact's max batch 8"),
        (["--batch-sizes", "0"], "--batch-sizes takes positive integers"),
        (["--batch-sizes", "a"], "--batch-sizes takes comma-separated integers"),
        (["--runtimes", "onnxruntime,tflite"], "unknown runtime tflite"),
        (["--graphs", "vae"], "--graphs takes decoder and/or encoder"),
    ],
)
def test_bench_bad_input_is_one_line(conv_art: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", str(conv_art), *args, *QUICK])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_on_a_cpu_without_bf16_units_the_bf16_routes_are_notes_that_say_so(
    conv_art: Path, conv_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AVX2-class CPU (Zen 3, Haswell to Comet Lake) has no bf16 units: bench says so row by row."""
    from vaekit.runtimes import cpu
    from vaekit.runtimes.backends import openvino
    from vaekit.runtimes.measuring.bench import plan_jobs

    avx2 = {"avx2", "fma", "avx", "sse4_2"}
    monkeypatch.setattr(cpu, "cpu_flags", lambda: avx2)
    monkeypatch.setattr(
        openvino, "precision_status", lambda device, precision: f"the CPU device has no {precision} units"
    )
    bf16_routes = ["pytorch-bf16", "openvino-bf16", "openvino-cpu-graph-bf16"]
    settings = BenchSettings(batch_sizes=[1], runtimes=[*bf16_routes, "onnxruntime"], checkpoint=str(conv_run))
    jobs, notes = plan_jobs(conv_art, settings)
    said = {r.runtime: r.note for r in notes}
    assert set(said) == set(bf16_routes) and all("no bf16 units" in n for n in said.values()), said
    assert jobs and {j.runtime for j in jobs} == {"onnxruntime"}
    assert cpu.int8_class() == "avx2"
