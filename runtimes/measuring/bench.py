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

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.data import to_float
from vaekit.errors import UsageError, VaekitError
from vaekit.runtimes.artifacts import (
    MOBILE_PRECISIONS,
    PRECISION_SUFFIX,
    Role,
    cpu_graph_name,
    load_inputs,
    manifest_checkpoint,
    ncnn_name,
    onnx_name,
    plan_name,
    pte_name,
)
from vaekit.runtimes.backends.onnxrt import cpu_cores
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.measuring.flops import count_flops
from vaekit.runtimes.measuring.machine import bench_machine
from vaekit.runtimes.proving.parity import ParityReport, compare_decoder, compare_encoder, load_reference
from vaekit.runtimes.registry import BACKENDS, describe

GRAPHS = ("decoder", "encoder")
MOBILE = {"pte": (pte_name, "--executorch"), "ncnn": (ncnn_name, "--ncnn")}  # artifact kind -> file name, flag
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
    artifacts: str  # checkpoint | onnx (every precision graph) | onnx-fp32 | cpu-graph | plan | pte | ncnn
    options: tuple[tuple[str, Any], ...] = ()
    precision: str = ""  # a runtime-side precision (bf16 autocast, OpenVINO's hint); "" = the artifact's own
    calibrate: bool = False  # quantize in memory on the parity inputs (NNCF), as an OpenVINO user would


PEERS = {
    p.name: p
    for p in (
        Peer("pytorch", "pyt", "cpu", "checkpoint"),
        Peer("pytorch-bf16", "pyt", "cpu", "checkpoint", (("precision", "bf16"),), "bf16"),
        Peer("torch-compile", "pyt", "cpu", "checkpoint", (("compile", True),)),
        Peer("onnxruntime", "onnxrt", "cpu", "onnx"),  # vaekit's backend: in-memory CPU rewrites
        # Plain ONNX Runtime, as a user's own application loads a file: the portable graph and the CPU graph.
        Peer("onnxruntime-as-stored", "onnxrt", "cpu", "onnx-fp32", (("rewrite", False),)),
        Peer("onnxruntime-cpu-graph", "onnxrt", "cpu", "cpu-graph", (("rewrite", False),)),
        Peer("openvino", "openvino", "cpu", "onnx"),  # each graph in its own precision (fp32 asked explicitly)
        Peer("openvino-cpu-graph", "openvino", "cpu", "cpu-graph"),  # do the CPU rewrites help OpenVINO too?
        # in bf16 they help OpenVINO too, at the same accuracy (benchmarks/RESULTS.md: vs its default on decoder.onnx)
        Peer("openvino-cpu-graph-bf16", "openvino", "cpu", "cpu-graph", (("precision", "bf16"),), "bf16"),
        Peer("openvino-bf16", "openvino", "cpu", "onnx-fp32", (("precision", "bf16"),), "bf16"),  # its default here
        Peer("openvino-fp16", "openvino", "cpu", "onnx-fp32", (("precision", "fp16"),), "fp16"),
        Peer("openvino-nncf-int8", "openvino", "cpu", "onnx-fp32", (), "int8", calibrate=True),
        Peer("onnxruntime-cuda", "onnxrt", "cuda", "onnx"),
        Peer("onnxruntime-tensorrt", "onnxrt", "tensorrt", "onnx"),
        Peer("tensorrt", "trt", "cuda", "plan"),
        Peer("executorch", "executorch", "cpu", "pte"),  # what a phone app links, here on this CPU
        Peer("ncnn", "ncnn", "cpu", "ncnn"),
    )
}
ON_REQUEST = ("onnxruntime-as-stored", "onnxruntime-cpu-graph", "openvino-cpu-graph", "openvino-fp16")
DEFAULT_RUNTIMES = tuple(name for name in PEERS if name not in ON_REQUEST)
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
class Job:
    """One child process: a peer on one artifact, and the timing rules of the run."""

    runtime: str
    graph: str
    precision: str
    path: str
    artifact_dir: str = ""
    batch_sizes: list[int] = field(default_factory=list)
    warmup: int = 3
    min_runs: int = 10
    min_seconds: float = 1.0
    max_seconds: float = 10.0
    clock: str = "wall"
    threads: int = 1

    def timed(self, settings: BenchSettings, artifact_dir: Path) -> Job:
        rules = {k: getattr(settings, k) for k in ("batch_sizes", "warmup", "min_runs", "min_seconds", "max_seconds")}
        return replace(self, artifact_dir=str(artifact_dir), clock=settings.clock, threads=settings.threads, **rules)


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
    artifact: str = ""  # the file measured (a checkpoint for the PyTorch peers)
    parity: str = ""  # pass | FAIL: <first broken limit> | not run: <why>, against the golden outputs
    times_ms: list[float] = field(default_factory=list, repr=False)  # raw timings, pooled over rounds


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    flops_per_image: dict[str, int]
    rows: list[Row] = field(default_factory=list)
    best: list[dict[str, Any]] = field(default_factory=list)  # the fastest verified row per (graph, batch)

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
    """(graph, precision, path) the peer measures here, or [] and why it measures nothing."""
    if peer.artifacts == "checkpoint":
        ckpt, missing = _checkpoint(artifact_dir, settings.checkpoint)
        return ([(g, peer.precision or "fp32", ckpt) for g in settings.graphs] if ckpt else []), missing
    if peer.artifacts == "plan":
        plans = [(g, "engine", artifact_dir / plan_name(g)) for g in settings.graphs]
        found = [t for t in plans if t[2].is_file()]
        return found, "" if found else "no .plan engines in this directory (vaekit export --trt)"
    if peer.artifacts == "cpu-graph":
        graphs = [(g, peer.precision or "fp32", artifact_dir / cpu_graph_name(g)) for g in settings.graphs]
        found = [t for t in graphs if t[2].is_file()]
        return found, "" if found else "no CPU graphs in this directory (re-export)"
    if peer.artifacts in MOBILE:
        name, flag = MOBILE[peer.artifacts]
        mobile = [(g, p, artifact_dir / name(g, p)) for g in settings.graphs for p in MOBILE_PRECISIONS[peer.backend]]
        found = [t for t in mobile if t[2].is_file()]
        return found, "" if found else f"no {peer.backend} artifacts in this directory (vaekit export {flag})"
    precisions = ["fp32"] if peer.artifacts == "onnx-fp32" else list(PRECISION_SUFFIX)
    graphs = [(g, p, artifact_dir / onnx_name(g, p)) for g in settings.graphs for p in precisions]
    return [(g, peer.precision or p, path) for g, p, path in graphs if path.is_file()], ""


def _unavailable(peer: Peer) -> str:
    """Why this peer cannot run here ('' when it can)."""
    backend = BACKENDS[peer.backend]
    missing = backend.status(peer.device)
    if not missing and peer.precision and not peer.calibrate:
        missing = backend.precision_status(peer.device, peer.precision)
    if not missing and peer.calibrate and importlib.util.find_spec("nncf") is None:
        missing = "nncf not installed (pip install nncf)"
    return missing


def plan_jobs(artifact_dir: Path, settings: BenchSettings) -> tuple[list[Job], list[Row]]:
    """Jobs (one child process each) and note rows for runtimes that cannot run here."""
    jobs: list[Job] = []
    notes: list[Row] = []
    for name in settings.runtimes:
        peer = PEERS[name]
        missing = _unavailable(peer)
        targets, nothing = _targets(peer, artifact_dir, settings) if not missing else ([], "")
        if missing or nothing:
            notes.append(Row(runtime=name, graph="-", precision="-", batch=0, note=missing or nothing))
            continue
        for graph, precision, path in targets:
            limit = BACKENDS[peer.backend].graph_status(peer.device, precision) if not peer.precision else ""
            if limit:
                notes.append(Row(runtime=name, graph=graph, precision=precision, batch=0, note=limit))
            else:
                jobs.append(Job(name, graph, precision, str(path)).timed(settings, artifact_dir))
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
    probe = _run_child(Job(GEMM_PROBE, "matmul", "fp32", "").timed(settings, Path()))
    if probe and probe[0].p50_ms:
        return round(2 * GEMM_N**3 / (probe[0].p50_ms / 1e3) / 1e9, 1)
    return None


def run_bench(
    artifact_dir: Path, settings: BenchSettings, progress: Callable[[Job, int, int], None] | None = None
) -> BenchReport:
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
    cpu = report.machine["cpu"]
    if gemm is not None:
        cpu["gemm_gflops"] = gemm
        if gemm > cpu["peak_gflops"]:  # the clock read was a base clock: turbo runs faster, so the peak is higher
            cpu["peaks"]["fp32"] = cpu["peak_gflops"] = gemm
            cpu["clock_source"] += "; fp32 peak raised to the measured GEMM, which ran above it (turbo)"
    jobs, notes = plan_jobs(artifact_dir, settings)
    measured: dict[tuple[str, str, str, int], list[Row]] = {}
    total = len(jobs) * settings.rounds
    for i in range(total):
        job = jobs[i % len(jobs)]
        for row in _run_child(job):
            measured.setdefault((row.runtime, row.graph, row.precision, row.batch), []).append(row)
        if progress:
            progress(job, i + 1, total)
    peaks = cpu["peaks"]
    report.rows = [
        _pool(rows, report.flops_per_image.get(rows[0].graph, 0), peaks.get(rows[0].precision, peaks["fp32"]))
        for rows in measured.values()
    ]
    report.rows.extend(notes)
    report.best = pick_best(report.rows)
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


def _run_child(job: Job) -> list[Row]:
    limit = 120 + len(job.batch_sizes) * (job.max_seconds + 120)  # + compile time for torch.compile
    base = Row(runtime=job.runtime, graph=job.graph, precision=job.precision, batch=0)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vaekit.runtimes.measuring.bench_child", json.dumps(asdict(job))],
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


def parity_inputs(artifact_dir: Path, role: str) -> np.ndarray:
    """The inputs parity judges on, as a graph of this role takes them (float images, or z)."""
    images_u8, z = load_inputs(artifact_dir)
    return to_float(images_u8, describe(artifact_dir).value_range) if role == "encoder" else z


def load_peer(peer: Peer, path: Path, role: Role, artifact_dir: Path, threads: int | None) -> Encoder | Decoder:
    """The peer's backend with its loader options; CPU backends get the pinned thread count."""
    options = dict(peer.options)
    if peer.device == "cpu" and threads:
        options["threads"] = threads
    if peer.calibrate:
        options["calibration"] = parity_inputs(artifact_dir, role)
    return BACKENDS[peer.backend].load(path, role, peer.device, **options)


def verify(runtime: Encoder | Decoder, artifact_dir: Path) -> str:
    """pass / FAIL: ... / not run: ... — this runtime against the golden outputs, with its precision's tolerance."""
    try:
        images_u8, z = load_inputs(artifact_dir)
        images = to_float(images_u8, describe(artifact_dir).value_range)
        encoder, decoder = load_reference(artifact_dir, None, images, z)
        report = ParityReport(reference={}, n_images=len(images), n_latents=len(z))
        if isinstance(runtime, Encoder):
            compare_encoder(encoder, runtime, images, report)
        else:
            compare_decoder(decoder, runtime, z, report)
    except VaekitError as exc:
        return f"not run: {exc}"
    broken = [f"{c.output} {c.broken[0]}" for c in report.cases if c.broken]
    return f"FAIL: {broken[0]}" if broken else "pass"


def pick_best(rows: list[Row]) -> list[dict[str, Any]]:
    """The fastest verified row of each (graph, batch)."""
    best: dict[tuple[str, int], Row] = {}
    for row in rows:
        if row.p50_ms is None or row.parity != "pass":
            continue
        key = (row.graph, row.batch)
        if key not in best or row.p50_ms < (best[key].p50_ms or float("inf")):
            best[key] = row
    keys = ("graph", "batch", "runtime", "precision", "artifact", "p50_ms", "parity")
    return [{k: getattr(r, k) for k in keys} for _, r in sorted(best.items())]
