"""How reports look in a terminal: rich tables for parity, bench, and key/value reports (info, doctor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from vaekit.runtimes.cpu import TARGET_CLASSES
from vaekit.runtimes.measuring.bench import BenchReport
from vaekit.runtimes.proving.parity import ParityReport

BUSY_MACHINE = 0.1  # other processes using more than this share of the CPUs make timings unreliable


def parity_table(report: ParityReport) -> Table:
    ref = report.reference
    reference = f"{ref.get('backend', '?')} {ref.get('precision', '')}"
    title = f"parity vs {reference} ({report.n_images} images, {report.n_latents} z)"
    table = Table(title=title)
    # max rel is in the JSON: divided by near-zero reference values it alarms without meaning much
    columns = (
        "artifact",
        "runtime",
        "output",
        "batches",
        "max abs",
        "p99 abs",
        "mean abs",
        "cosine",
        "PSNR dB",
        "result",
    )
    for col in columns:
        table.add_column(col, justify="right" if col not in ("artifact", "runtime", "output", "result") else "left")
    for c in report.cases:
        m = c.metrics
        psnr = f"{m['psnr']:.1f}" if "psnr" in m else ""
        verdict = "[green]pass[/]" if c.passed else f"[red]FAIL[/] {'; '.join(c.broken)}"
        table.add_row(
            Path(c.path).name,  # the same runtime runs several graphs (openvino-cpu-bf16: a hint, or a bf16 graph)
            c.runtime,
            c.output,
            ",".join(map(str, c.batch_sizes)),
            f"{m['max_abs']:.2e}",
            f"{m['p99_abs']:.2e}",
            f"{m['mean_abs']:.2e}",
            f"{m['min_cosine']:.6f}",
            psnr,
            verdict,
        )
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def bench_table(report: BenchReport) -> Table:
    cpu = report.machine["cpu"]
    gemm = f", ONNX Runtime GEMM reaches {cpu['gemm_gflops']}" if "gemm_gflops" in cpu else ""
    gemm += f"; {report.settings.get('clock', 'wall')} clock"
    peaks = ", ".join(f"{p} {v:g}" for p, v in cpu.get("peaks", {}).items())
    title = (
        f"{cpu['model']}: {report.machine['threads']} threads, {cpu['isa']}; peaks (G)FLOP/s {peaks} "
        f"({cpu['cores']} cores x {cpu['clock_ghz']} GHz){gemm}; % peak is against the row's precision; "
        "* = fastest verified"
    )
    table = Table(title=title)
    columns = ("graph", "runtime", "precision", "batch", "p50 ms", "p95 ms", "images/s", "GFLOP/s", "% peak")
    winners = {(b["graph"], b["batch"], b["runtime"], b["precision"], b["artifact"]) for b in report.best}
    for col in (*columns, "peak MB", "load s", "parity", "note"):
        table.add_column(col, justify="left" if col in ("graph", "runtime", "precision", "note") else "right")
    for r in report.rows:
        busy = r.other_load is not None and r.other_load > BUSY_MACHINE
        note = escape(r.note) if r.note else (f"[yellow]machine {r.other_load:.0%} busy[/]" if busy else "")
        best = (r.graph, r.batch, r.runtime, r.precision, r.artifact) in winners
        table.add_row(
            r.graph,
            f"[bold green]* {r.runtime}[/]" if best else r.runtime,
            r.precision,
            str(r.batch) if r.batch else "",
            _fmt(r.p50_ms, ".3f"),
            _fmt(r.p95_ms, ".3f"),
            _fmt(r.images_per_s, ",.0f"),
            _fmt(r.gflops, ".1f"),
            _fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, ".1f"),
            _fmt(r.peak_rss_mb, ".0f"),
            _fmt(r.load_s, ".2f"),
            escape(r.parity[:40]),
            note,
        )
    return table


def _rows(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts flattened to 'a / b' keys, so no cell holds raw JSON."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _rows(value, f"{name} / ")
        elif isinstance(value, list | tuple):
            rows.append((name, ", ".join(str(v) for v in value)))
        else:
            rows.append((name, str(value)))
    return rows


def key_value_table(title: str, data: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in _rows(data):
        table.add_row(escape(key), escape(value))
    return table


def graph_notes(details: dict[str, dict[str, Any]]) -> list[str]:
    """One line per derived graph: what the fp16 headroom, bf16 rounding, int8 calibration and rewrites decided."""
    lines = []
    for kind in ("cpu", "web"):
        for role, rewrites in details.get(f"{kind}_graphs", {}).items():
            lines.append(f"{role}.{kind}.onnx: {'; '.join(rewrites)}")
    for r in details.get("fp16", {}).values():
        kept = ", ".join([b["node"] for b in r["blocked"]] + r.get("kept_fp32_by_budget", [])) or "none"
        lines.append(
            f"{r['file']}: {r['nodes']['fp16']} nodes fp16, kept fp32: {kept}; "
            f"min headroom {r['min_headroom_fp16']:g}x below 65504 ({r['tightest_fp16_node'] or '-'})"
        )
    for r in details.get("bf16", {}).values():
        psnr = r["bf16_arithmetic"].get("image", {}).get("psnr")
        lines.append(
            f"{r['file']}: {r['nodes']['bf16']} nodes bf16 (opset {r['opset']})"
            + (f"; image {psnr:.1f} dB in bf16 arithmetic" if psnr is not None else "")
        )
    for r in details.get("int8", {}).values():
        kept = ", ".join(r["fp32_layers"]) or "none"
        classes = r.get("cpu_classes", {})
        holds = TARGET_CLASSES.get(classes.get("target", ""), ())
        lines.append(
            f"{r['file']}: {r['quantized_layers']} layers int8 ({r['scheme']}), kept float: {kept}; "
            f"calibration: {r['calibration']}; for {', '.join(holds)} CPUs (measured on {classes.get('measured_on')})"
        )
    for name, r in details.get("executorch", {}).items():
        lines.append(f"{name}: whole graph in {r['delegates']} XNNPACK delegate, {r['bytes'] / 1e6:.2f} MB")
    ncnn = details.get("ncnn", {})
    for name, r in ncnn.get("files", {}).items():
        lines.append(f"{name} + .bin: {r['bytes'] / 1e6:.2f} MB")
    for role, why in ncnn.get("fp16_skipped", {}).items():
        lines.append(f"{role}: {why}")
    return lines
