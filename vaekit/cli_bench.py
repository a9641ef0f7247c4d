"""`vaekit bench`: the numbers a user picks a runtime and a precision by. Numpy + the runtimes; no torch
unless the PyTorch peers are measured (they run in child processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, ImageDraw, ImageFont
from rich.markup import escape
from rich.table import Table

from vaekit.cli import DEPLOY_PANEL, command, err_console, out_console
from vaekit.errors import UsageError
from vaekit.fsutil import atomic_write_text
from vaekit.images import SERIES_COLOURS, save_png

# The images module's four series colours, then four more: one colour per runtime + precision in a chart.
COLOURS = (*SERIES_COLOURS, (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))
BUSY_MACHINE = 0.1  # other processes using more than this share of the CPUs make timings unreliable
RUNTIME_HELP = (
    "Comma list of pytorch, torch-compile, onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt;"
    " onnxruntime-as-stored (CPU, without vaekit's graph rewrites) on request."
)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--batch-sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-sizes takes positive integers, got {text!r}")
    return sizes


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def bench_table(report: Any) -> Table:
    cpu = report.machine["cpu"]
    gemm = f", ONNX Runtime GEMM reaches {cpu['gemm_gflops']}" if "gemm_gflops" in cpu else ""
    gemm += f"; {report.settings.get('clock', 'wall')} clock"
    title = (
        f"{cpu['model']}: {report.machine['threads']} threads, {cpu['isa']}, fp32 peak {cpu['peak_gflops']} GFLOP/s "
        f"({cpu['cores']} x {cpu['clock_ghz']} GHz x {cpu['flop_per_cycle']}){gemm}"
    )
    table = Table(title=title)
    columns = ("graph", "runtime", "precision", "batch", "p50 ms", "p95 ms", "images/s", "GFLOP/s", "% peak")
    for col in (*columns, "peak MB", "load s", "note"):
        table.add_column(col, justify="left" if col in ("graph", "runtime", "precision", "note") else "right")
    for r in report.rows:
        busy = r.other_load is not None and r.other_load > BUSY_MACHINE
        note = escape(r.note) if r.note else (f"[yellow]machine {r.other_load:.0%} busy[/]" if busy else "")
        table.add_row(
            r.graph,
            r.runtime,
            r.precision,
            str(r.batch) if r.batch else "",
            _fmt(r.p50_ms, ".3f"),
            _fmt(r.p95_ms, ".3f"),
            _fmt(r.images_per_s, ",.0f"),
            _fmt(r.gflops, ".1f"),
            _fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, ".1f"),
            _fmt(r.peak_rss_mb, ".0f"),
            _fmt(r.load_s, ".2f"),
            note,
        )
    return table


def bench_chart(report: Any) -> Image.Image:
    """One panel per (graph, batch size): a bar of images/s for each runtime and precision."""
    font = ImageFont.load_default()
    measured = [r for r in report.rows if r.images_per_s]
    panels = sorted({(r.graph, r.batch) for r in measured})
    labels = sorted({f"{r.runtime} {r.precision}" for r in measured})
    bar, gap, label_w, width = 16, 4, 190, 760
    panel_h = 22 + len(labels) * (bar + gap)
    img = Image.new("RGB", (width, max(1, len(panels)) * (panel_h + 10) + 10), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for p, (graph, batch) in enumerate(panels):
        top = 10 + p * (panel_h + 10)
        rows = {f"{r.runtime} {r.precision}": r for r in measured if (r.graph, r.batch) == (graph, batch)}
        best = max(r.images_per_s for r in rows.values())
        draw.text((10, top), f"{graph}, batch {batch}: images/s (longer is faster)", fill=(0, 0, 0), font=font)
        for i, label in enumerate(labels):
            y = top + 20 + i * (bar + gap)
            draw.text((10, y + 2), label, fill=(0, 0, 0), font=font)
            row = rows.get(label)
            if row is None:
                continue
            length = int((width - label_w - 90) * row.images_per_s / best)
            colour = COLOURS[labels.index(label) % len(COLOURS)]
            draw.rectangle((label_w, y, label_w + max(1, length), y + bar), fill=colour)
            draw.text((label_w + length + 6, y + 2), f"{row.images_per_s:,.0f}", fill=(0, 0, 0), font=font)
    return img


@command(DEPLOY_PANEL)
def bench(
    artifacts: Annotated[Path, typer.Argument(help="Artifact directory written by `vaekit export`.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,64",
    runtimes: Annotated[str | None, typer.Option(help=RUNTIME_HELP, show_default="all")] = None,
    graphs: Annotated[str, typer.Option(help="decoder, encoder or both.")] = "decoder,encoder",
    checkpoint: Annotated[
        Path | None, typer.Option(help="Run for the PyTorch peers.", show_default="the one manifest.json names")
    ] = None,
    threads: Annotated[int, typer.Option(help="Intra-op threads = cores pinned; 0: all cores here.")] = 0,
    warmup: Annotated[int, typer.Option(help="Untimed calls first (compilation happens here).")] = 3,
    min_runs: Annotated[int, typer.Option(help="Timed calls at least.")] = 10,
    min_seconds: Annotated[float, typer.Option(help="Timed seconds at least, per batch size.")] = 1.0,
    max_seconds: Annotated[float, typer.Option(help="Timed seconds at most, per batch size.")] = 10.0,
    rounds: Annotated[int, typer.Option(help="Run every measurement this many times, interleaved; pool them.")] = 1,
    clock: Annotated[
        str, typer.Option(help="wall, or cpu: the calling thread's CPU time (with --threads 1; a busy machine)")
    ] = "wall",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart of images/s here.")] = None,
) -> None:
    """Latency (p50/p95), images/s, GFLOP/s vs this CPU's peak and peak memory of every runtime here."""
    from vaekit.runtimes.bench import DEFAULT_RUNTIMES, GRAPHS, BenchSettings, parse_runtimes, run_bench

    wanted_graphs = [g.strip() for g in graphs.split(",") if g.strip()]
    if not wanted_graphs or any(g not in GRAPHS for g in wanted_graphs):
        raise UsageError(f"--graphs takes decoder and/or encoder, got {graphs!r}")
    if threads < 0 or warmup < 0 or min_runs < 1 or rounds < 1 or not 0 <= min_seconds <= max_seconds:
        raise UsageError("--threads/--warmup >= 0, --min-runs/--rounds >= 1, 0 <= --min-seconds <= --max-seconds")
    if not artifacts.is_dir():
        raise UsageError(f"{artifacts} is not an artifact directory")
    settings = BenchSettings(
        batch_sizes=parse_batch_sizes(batch_sizes),
        runtimes=parse_runtimes(runtimes) if runtimes is not None else list(DEFAULT_RUNTIMES),
        graphs=wanted_graphs,
        warmup=warmup,
        min_runs=min_runs,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        rounds=rounds,
        clock=clock,
        threads=threads,
        checkpoint=str(checkpoint or ""),
    )

    def progress(job: dict[str, Any], done: int, total: int) -> None:
        err_console.print(f"[dim]{done}/{total} {job['runtime']} {job['graph']} {job['precision']}[/]", highlight=False)

    report = run_bench(artifacts, settings, progress)
    out_console.print(bench_table(report))
    flops = ", ".join(f"{g} {f / 1e6:.1f} MFLOP" for g, f in report.flops_per_image.items())
    out_console.print(f"work per image (fp32 graph): {flops}; {report.machine['cpu']['clock_source']}", highlight=False)
    busy = [r.other_load for r in report.rows if r.other_load is not None and r.other_load > BUSY_MACHINE]
    if busy:
        err_console.print(
            f"[yellow]warning[/] other processes used up to {max(busy):.0%} of the CPUs during these runs: "
            "timings are not a quiet machine's",
            highlight=False,
        )
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_json(), indent=2) + "\n")
    if plot:
        save_png(bench_chart(report), plot)
