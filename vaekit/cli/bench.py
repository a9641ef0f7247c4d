"""`vaekit bench`: the numbers a user picks a runtime and a precision by. Numpy + the runtimes; no torch
unless the PyTorch peers are measured (they run in child processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vaekit.cli.app import MEASURE_PANEL, command, err_console, out_console, wrote
from vaekit.cli.tables import BUSY_MACHINE, bench_table
from vaekit.errors import UsageError, VaekitError
from vaekit.fsutil import atomic_write_text
from vaekit.runtimes.measuring.bench import DEFAULT_RUNTIMES, GRAPHS, RUNTIMES

ON_REQUEST = sorted(set(RUNTIMES) - set(DEFAULT_RUNTIMES))
RUNTIME_HELP = f"Comma list of {', '.join(DEFAULT_RUNTIMES)}; {', '.join(ON_REQUEST)} on request."


def _ints(text: str, flag: str) -> list[int]:
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@command(MEASURE_PANEL)
def bench(
    artifacts: Annotated[Path, typer.Argument(help="Artifact directory written by `vaekit export`.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,64",
    runtimes: Annotated[str | None, typer.Option(help=RUNTIME_HELP, show_default="all")] = None,
    graphs: Annotated[str, typer.Option(help="decoder, encoder or both.")] = ",".join(GRAPHS),
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
    record: Annotated[
        bool, typer.Option("--record", help="Keep the fastest verified runtimes in the directory (--runtime auto).")
    ] = False,
) -> None:
    """Latency (p50/p95), images/s, GFLOP/s vs this CPU's peak and peak memory of every runtime here."""
    from vaekit.runtimes.artifacts import artifact_dir_of
    from vaekit.runtimes.measuring.bench import BenchSettings, Job, run_bench
    from vaekit.runtimes.measuring.chart import bench_chart

    if not artifacts.is_dir():
        raise UsageError(f"{artifacts} is not an artifact directory")
    settings = BenchSettings(
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        runtimes=_names(runtimes) if runtimes is not None else list(DEFAULT_RUNTIMES),
        graphs=_names(graphs),
        warmup=warmup,
        min_runs=min_runs,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        rounds=rounds,
        clock=clock,
        threads=threads,
        checkpoint=str(checkpoint or ""),
    )

    def progress(job: Job, done: int, total: int) -> None:
        err_console.print(f"[dim]{done}/{total} {job.runtime} {job.graph} {job.precision}[/]", highlight=False)

    from vaekit.runtimes.measuring.fastest import manifest_digest

    measured_on = manifest_digest(artifact_dir_of(artifacts))
    report = run_bench(artifact_dir_of(artifacts), settings, progress)
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
        wrote(json_out)
    if plot:
        from vaekit.images import save_image

        save_image(bench_chart(report), plot)
        wrote(plot)
    for best in report.best:
        out_console.print(
            f"fastest verified {best['graph']} at batch {best['batch']}: {best['runtime']} {best['precision']} "
            f"on {best['artifact']} ({best['p50_ms']} ms)",
            highlight=False,
        )
    if record:
        from vaekit.runtimes.measuring.fastest import record as keep

        wrote(keep(artifact_dir_of(artifacts), report, measured_on))
    if not any(r.p50_ms for r in report.rows):
        raise VaekitError("nothing was measured: every runtime is missing or failed (see the notes above)")
