"""`vaekit bench`: latency, throughput and memory of every runtime x precision x batch size here.

Each (runtime, graph) is measured in its own child process, so its peak memory is its own (resident
high-water growth of the bare child: runtime library + model + runs), one runtime's thread pool cannot
spin against another's (PyTorch's OpenMP workers measurably slow ONNX Runtime in the same process),
and a crashing compiler is a note, not a failed run. Threads are pinned: the child's CPU affinity is
the first `threads` cores and every runtime uses that many intra-op threads. Warm-up runs first; timed
runs then continue until the median is stable (its ~95% confidence half-width, 1.57 IQR / sqrt(n),
under 2% of it) or the time cap. Work is the FLOP count of the fp32 ONNX graph, so GFLOP/s compare
the same work across runtimes and precisions."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import UsageError, VaekitError
from vaekit.runtimes.artifacts import PRECISION_SUFFIX, manifest_checkpoint, onnx_name, plan_name
from vaekit.runtimes.flops import count_flops
from vaekit.runtimes.machine import bench_machine
from vaekit.runtimes.onnxrt import cpu_cores
from vaekit.runtimes.registry import BACKENDS, describe

GRAPHS = ("decoder", "encoder")
INPUT_SEED = 0
GEMM_N = 1024  # the ceiling probe: one fp32 1024^3 MatMul on ONNX Runtime, same threads
GEMM_PROBE = "gemm"
STABLE_MEDIAN = 0.02  # stop once the median's confidence half-width is below 2% of it


@dataclass(frozen=True)
class Peer:
    """One bench runtime: a registry backend on a device with loader options, and the artifacts it runs."""

    name: str
    backend: str
    device: str
    artifacts: str  # checkpoint | onnx (every precision) | onnx-fp32 | plan
    options: tuple[tuple[str, Any], ...] = ()


PEERS = {
    p.name: p
    for p in (
        Peer("pytorch", "pyt", "cpu", "checkpoint"),
        Peer("torch-compile", "pyt", "cpu", "checkpoint", (("compile", True),)),
        Peer("onnxruntime", "onnxrt", "cpu", "onnx"),
        Peer("onnxruntime-cuda", "onnxrt", "cuda", "onnx"),
        Peer("onnxruntime-tensorrt", "onnxrt", "tensorrt", "onnx"),
        Peer("tensorrt", "trt", "cuda", "plan"),
        # ONNX Runtime without vaekit's in-memory graph rewrites: what a user's own ONNX Runtime app gets.
        Peer("onnxruntime-as-stored", "onnxrt", "cpu", "onnx-fp32", (("rewrite", False),)),
    )
}
DEFAULT_RUNTIMES = tuple(name for name in PEERS if name != "onnxruntime-as-stored")
RUNTIMES = tuple(PEERS)


@dataclass
class BenchSettings:
    batch_sizes: list[int]
    runtimes: list[str] = field(default_factory=lambda: list(DEFAULT_RUNTIMES))
    graphs: list[str] = field(default_factory=lambda: list(GRAPHS))
    warmup: int = 3
    min_runs: int = 10
    min_seconds: float = 1.0
    max_seconds: float = 10.0  # per batch size; the stability rule usually stops far earlier
    rounds: int = 1  # >1: every job runs this many times, interleaved, and the timings are pooled (drift hits all)
    clock: str = "wall"  # "cpu" (1 thread only): CPU time of the calling thread, immune to other processes
    threads: int = 0  # 0: every core this process may use
    checkpoint: str = ""  # for the PyTorch peers; "" means the one manifest.json names

    def check(self) -> None:
        """Every bench option's rule, stated once."""
        if not self.graphs or any(g not in GRAPHS for g in self.graphs):
            raise UsageError(f"--graphs takes decoder and/or encoder, got {','.join(self.graphs)!r}")
        bad = [n for n in self.runtimes if n not in PEERS]
        if bad or not self.runtimes:
            raise UsageError(f"unknown runtime {', '.join(bad) or '(none)'}: use {', '.join(RUNTIMES)}")
        if self.threads < 0 or self.warmup < 0 or self.min_runs < 1 or self.rounds < 1:
            raise UsageError("--threads/--warmup >= 0, --min-runs/--rounds >= 1")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise UsageError("0 <= --min-seconds <= --max-seconds")
        if self.clock not in ("wall", "cpu") or (self.clock == "cpu" and self.threads != 1):
            raise UsageError("--clock cpu counts the calling thread's CPU time: it needs --threads 1 (else use wall)")


@dataclass
class Row:
    runtime: str
    graph: str
    precision: str
    batch: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    images_per_s: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    peak_rss_mb: float | None = None
    load_s: float | None = None
    runs: int = 0
    median_ci_pct: float | None = None
    other_load: float | None = None  # CPU busy outside this process during the runs, as a fraction of all cores
    note: str = ""
    times_ms: list[float] = field(default_factory=list, repr=False)  # raw timings, pooled over rounds


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    flops_per_image: dict[str, int]
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rows = [{k: v for k, v in asdict(r).items() if k != "times_ms"} for r in self.rows]
        return {**asdict(self), "rows": rows}


def parse_runtimes(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _checkpoint(artifact_dir: Path, override: str) -> tuple[Path | None, str]:
    if override:
        path = Path(override).expanduser()
        return (path, "") if path.exists() else (None, f"checkpoint {path} not found")
    found = manifest_checkpoint(artifact_dir)
    return (found, "") if found else (None, "the checkpoint manifest.json names is not here: pass --checkpoint")


def _targets(peer: Peer, artifact_dir: Path, settings: BenchSettings) -> tuple[list[tuple[str, str, Path]], str]:
    """(graph, precision, path) the peer measures here, or '' and why it measures nothing."""
    if peer.artifacts == "checkpoint":
        ckpt, missing = _checkpoint(artifact_dir, settings.checkpoint)
        return ([(g, "fp32", ckpt) for g in settings.graphs] if ckpt else []), missing
    if peer.artifacts == "plan":
        plans = [(g, "engine", artifact_dir / plan_name(g)) for g in settings.graphs]
        found = [t for t in plans if t[2].is_file()]
        return found, "" if found else "no .plan engines in this directory (vaekit export --trt)"
    precisions = ["fp32"] if peer.artifacts == "onnx-fp32" else list(PRECISION_SUFFIX)
    graphs = [(g, p, artifact_dir / onnx_name(g, p)) for g in settings.graphs for p in precisions]
    return [t for t in graphs if t[2].is_file()], ""


def plan_jobs(artifact_dir: Path, settings: BenchSettings) -> tuple[list[dict[str, Any]], list[Row]]:
    """Jobs (one child process each) and note rows for runtimes that cannot run here."""
    jobs: list[dict[str, Any]] = []
    notes: list[Row] = []
    for name in settings.runtimes:
        peer = PEERS[name]
        missing = BACKENDS[peer.backend].status(peer.device)
        targets, nothing = _targets(peer, artifact_dir, settings) if not missing else ([], "")
        if missing or nothing:
            notes.append(Row(runtime=name, graph="-", precision="-", batch=0, note=missing or nothing))
            continue
        for graph, precision, path in targets:
            jobs.append(
                {
                    "runtime": name,
                    "backend": peer.backend,
                    "device": peer.device,
                    "options": dict(peer.options),
                    "graph": graph,
                    "precision": precision,
                    "path": str(path),
                }
            )
    return jobs, notes


def check_batch_sizes(batch_sizes: list[int], max_batch: int) -> None:
    if not batch_sizes or min(batch_sizes) < 1:
        raise UsageError(f"--batch-sizes takes positive integers, got {batch_sizes}")
    too_big = [b for b in batch_sizes if b > max_batch]
    if too_big:
        raise UsageError(
            f"batch size {max(too_big)} is beyond this artifact's max batch {max_batch} (re-export with --max-batch)"
        )


def _gemm_ceiling(settings: BenchSettings) -> float | None:
    probe = _run_child({"runtime": GEMM_PROBE, "graph": "matmul", "precision": "fp32", **asdict(settings)})
    if probe and probe[0].p50_ms:
        return round(2 * GEMM_N**3 / (probe[0].p50_ms / 1e3) / 1e9, 1)
    return None


def run_bench(artifact_dir: Path, settings: BenchSettings, progress: Any = None) -> BenchReport:
    """Measure every planned job in a child process; progress(job, done, total) after each."""
    settings.check()
    fp32 = {g: artifact_dir / onnx_name(g) for g in settings.graphs}
    if not all(p.is_file() for p in fp32.values()):
        raise VaekitError(f"{artifact_dir} lacks {', '.join(p.name for p in fp32.values())}: not an export directory")
    check_batch_sizes(settings.batch_sizes, describe(next(iter(fp32.values()))).max_batch)
    settings.threads = settings.threads or cpu_cores()
    report = BenchReport(
        machine=bench_machine(settings.threads),
        settings=asdict(settings),
        flops_per_image={g: count_flops(p)["total"] for g, p in fp32.items()},
    )
    gemm = _gemm_ceiling(settings)
    if gemm is not None:
        report.machine["cpu"]["gemm_gflops"] = gemm
    jobs, notes = plan_jobs(artifact_dir, settings)
    measured: dict[tuple[str, str, str, int], list[Row]] = {}
    total = len(jobs) * settings.rounds
    for i in range(total):
        job = jobs[i % len(jobs)]
        for row in _run_child({**job, **asdict(settings), "artifact_dir": str(artifact_dir)}):
            measured.setdefault((row.runtime, row.graph, row.precision, row.batch), []).append(row)
        if progress:
            progress(job, i + 1, total)
    peak = report.machine["cpu"]["peak_gflops"]
    report.rows = [_pool(rows, report.flops_per_image.get(rows[0].graph, 0), peak) for rows in measured.values()]
    report.rows.extend(notes)
    return report


def _pool(rows: list[Row], flops: int, peak: float) -> Row:
    """One row from the rounds of one measurement: statistics over all their timings together."""
    row = rows[0]
    times = [t for r in rows for t in r.times_ms]
    if not times:
        return row
    q1, p50, q3, p95 = (float(v) for v in np.percentile(times, [25, 50, 75, 95]))
    row.p50_ms, row.p95_ms, row.runs = round(p50, 4), round(p95, 4), len(times)
    row.images_per_s = round(row.batch / (p50 / 1e3), 1)
    row.median_ci_pct = round(100 * 1.57 * (q3 - q1) / np.sqrt(len(times)) / p50, 2)
    row.peak_rss_mb = max(r.peak_rss_mb or 0.0 for r in rows)
    row.load_s = min(r.load_s or 0.0 for r in rows)
    row.other_load = max((r.other_load for r in rows if r.other_load is not None), default=None)
    if flops:
        row.gflops = round(flops * row.batch / (p50 / 1e3) / 1e9, 2)
        row.peak_fraction = round(row.gflops / peak, 3) if peak else None
    row.times_ms = []
    return row


def _run_child(job: dict[str, Any]) -> list[Row]:
    limit = 120 + len(job["batch_sizes"]) * (job["max_seconds"] + 120)  # + compile time for torch.compile
    base = Row(runtime=job["runtime"], graph=job["graph"], precision=job["precision"], batch=0)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vaekit.runtimes.bench_child", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        base.note = f"did not finish within {limit:.0f} s"
        return [base]
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            rows.append(Row(**json.loads(line)))
    if done.returncode != 0 and not any(r.note for r in rows):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        base.note = f"failed: {tail[:200]}"
        rows.append(base)
    return rows
