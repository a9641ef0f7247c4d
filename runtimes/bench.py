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
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.data import to_float
from vaekit.doctor import package_versions
from vaekit.errors import UsageError, VaekitError
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.loader import load_decoder, load_encoder, onnx_devices, tensorrt_status
from vaekit.runtimes.onnxrt import REWRITES_ENV, cpu_cores
from vaekit.runtimes.parity import PARITY_INPUTS, PRECISION_SUFFIX, load_inputs

DEFAULT_RUNTIMES = ("pytorch", "torch-compile", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
# onnxruntime-as-stored: the CPU provider without vaekit's graph rewrites, to show what they buy here.
RUNTIMES = (*DEFAULT_RUNTIMES, "onnxruntime-as-stored")
ORT_DEVICES = {"onnxruntime": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}
ORT_DEVICES["onnxruntime-as-stored"] = "cpu"
GRAPHS = ("decoder", "encoder")
INPUT_SEED = 0
GEMM_N = 1024  # the ceiling probe: one fp32 1024^3 MatMul on ONNX Runtime, same threads
STABLE_MEDIAN = 0.02  # stop once the median's confidence half-width is below 2% of it


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


# --- where the time should go: work and the machine's limit --------------------------------------------


def conv_flops(op: str, shapes: dict[str, list[int]], node: Any) -> int:
    """Multiply-adds x 2 of one Conv / ConvTranspose / Gemm / MatMul from inferred shapes (0 if unknown)."""
    ins = [shapes.get(i) for i in node.input]
    out = shapes.get(node.output[0])
    if out is None or ins[0] is None or len(ins) < 2 or ins[1] is None:
        return 0
    x, w = ins[0], ins[1]
    if op == "Conv":  # out (N, Cout, *spatial), w (Cout, Cin/group, *kernel)
        return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":  # every input pixel scatters into Cout/group x kernel outputs; w (Cin, Cout/group, *k)
        return 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = x[0] if trans_a else x[1]
        return 2 * int(np.prod(out)) * int(k)
    if op == "MatMul":
        return 2 * int(np.prod(out)) * int(x[-1])
    return 0


def count_flops(path: Path) -> dict[str, int]:
    """FLOPs per image of an ONNX graph (batch 1), by op type plus 'total'; bias adds and activations excluded."""
    import onnx

    model = onnx.load(str(path))
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in inferred.graph.initializer:
        shapes[t.name] = list(t.dims)
    flops: dict[str, int] = {}
    for node in inferred.graph.node:
        f = conv_flops(node.op_type, shapes, node)
        if f:
            flops[node.op_type] = flops.get(node.op_type, 0) + f
    flops["total"] = sum(flops.values())
    return flops


def _cpuinfo() -> dict[str, str]:
    found: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            found.setdefault(key.strip(), value.strip())
    return found


def cpu_peak(cores: int) -> dict[str, Any]:
    """fp32 peak = cores x clock x FLOP per cycle of the vector ISA, read from this machine.

    FLOP/cycle per core: two FMA pipes x lanes x 2. AVX-512: 64; AMD Zen 4 (family 25) runs AVX-512 on
    256-bit datapaths, so 32 like AVX2 + FMA; AVX without FMA: 16; SSE / NEON: 8-16. The clock is the
    cpufreq maximum where the OS exposes it, else /proc/cpuinfo's current MHz (often the base clock in a
    VM, while the core may boost higher: then the fraction of peak reads high).
    """
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    vendor, family = info.get("vendor_id", ""), info.get("cpu family", "")
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family == "25"):
        isa, per_cycle = "AVX-512 (2 x 512-bit FMA)", 64
    elif "avx512f" in flags:
        isa, per_cycle = "AVX-512 on 256-bit datapaths (AMD Zen 4: 2 x 256-bit FMA)", 32
    elif "avx2" in flags and "fma" in flags:
        isa, per_cycle = "AVX2 + FMA (2 x 256-bit FMA)", 32
    elif "avx" in flags:
        isa, per_cycle = "AVX (no FMA)", 16
    elif "asimd" in flags:
        isa, per_cycle = "NEON (2 x 128-bit FMA)", 16
    else:
        isa, per_cycle = "SSE or unknown", 8
    clock_ghz, clock_source = 0.0, "unknown"
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        clock_ghz, clock_source = int(max_freq.read_text()) / 1e6, "cpufreq max"
    elif info.get("cpu MHz"):
        clock_ghz, clock_source = float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo MHz (base or current, not boost)"
    int8 = "avx512_vnni" in flags or "avx_vnni" in flags
    return {
        "model": info.get("model name", platform.processor() or "unknown"),
        "cores": cores,
        "clock_ghz": round(clock_ghz, 3),
        "clock_source": clock_source,
        "isa": isa,
        "int8_dot_product": "VNNI" if int8 else "none (int8 runs on multiply-add pairs)",
        "flop_per_cycle": per_cycle,
        "peak_gflops": round(cores * clock_ghz * per_cycle, 1),
    }


def machine(threads: int) -> dict[str, Any]:
    versions = package_versions()
    return {
        "cpu": cpu_peak(threads),
        "threads": threads,
        "platform": platform.platform(),
        "versions": versions,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- what to run -------------------------------------------------------------------------------------------


def parse_runtimes(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in RUNTIMES]
    if bad or not names:
        raise UsageError(f"unknown runtime {', '.join(bad) or repr(text)}: use {', '.join(RUNTIMES)}")
    return names


def _manifest_checkpoint(artifact_dir: Path, override: str) -> tuple[Path | None, str]:
    if override:
        path = Path(override).expanduser()
        return (path, "") if path.exists() else (None, f"checkpoint {path} not found")
    try:
        named = json.loads((artifact_dir / "manifest.json").read_text()).get("checkpoint", "")
    except (OSError, json.JSONDecodeError):
        return None, "no manifest.json naming the checkpoint: pass --checkpoint"
    found = Path(named).expanduser() if named else None
    if found is None or not found.exists():
        return None, f"checkpoint {named!r} from manifest.json not found here: pass --checkpoint"
    return found, ""


def plan(artifact_dir: Path, settings: BenchSettings) -> tuple[list[dict[str, Any]], list[Row]]:
    """Jobs (one child process each) and note rows for runtimes that cannot run here."""
    jobs: list[dict[str, Any]] = []
    notes: list[Row] = []
    ort = onnx_devices()
    for runtime in settings.runtimes:
        if runtime in ("pytorch", "torch-compile"):
            ckpt, missing = _manifest_checkpoint(artifact_dir, settings.checkpoint)
            if not missing:
                try:
                    import torch  # noqa: F401
                except ImportError:
                    missing = "PyTorch not installed (pip install 'vaekit[train]')"
            targets = [(g, "fp32", str(ckpt), "cpu") for g in settings.graphs] if not missing else []
        elif runtime in ORT_DEVICES:
            missing = ort[ORT_DEVICES[runtime]]
            found = [
                (g, p, artifact_dir / f"{g}{s}.onnx") for g in settings.graphs for p, s in PRECISION_SUFFIX.items()
            ]
            targets = [(g, p, str(f), ORT_DEVICES[runtime]) for g, p, f in found if f.is_file()]
            if runtime == "onnxruntime-as-stored":
                targets = [t for t in targets if t[1] == "fp32"]  # int8 graphs are stored rewritten already
        else:
            missing = tensorrt_status()
            plans = [(g, artifact_dir / f"{g}.plan") for g in settings.graphs]
            targets = [(g, "engine", str(f), "cuda") for g, f in plans if f.is_file()]
            missing = missing or ("" if targets else "no .plan engines in this directory (vaekit export --trt)")
        if missing:
            notes.append(Row(runtime=runtime, graph="-", precision="-", batch=0, note=missing))
            continue
        env = {REWRITES_ENV: "0"} if runtime == "onnxruntime-as-stored" else {}
        for graph, precision, path, device in targets:
            jobs.append(
                {"runtime": runtime, "graph": graph, "precision": precision, "path": path, "device": device, "env": env}
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


def run_bench(artifact_dir: Path, settings: BenchSettings, progress: Any = None) -> BenchReport:
    """Measure every planned job in a child process; progress(job, done, total) after each."""
    from vaekit.runtimes.loader import describe

    fp32 = {g: artifact_dir / f"{g}.onnx" for g in settings.graphs}
    if not all(p.is_file() for p in fp32.values()):
        raise VaekitError(f"{artifact_dir} lacks {', '.join(p.name for p in fp32.values())}: not an export directory")
    check_batch_sizes(settings.batch_sizes, describe(fp32["decoder" if "decoder" in fp32 else "encoder"]).max_batch)
    threads = settings.threads or cpu_cores()
    if settings.clock not in ("wall", "cpu") or (settings.clock == "cpu" and threads != 1):
        raise UsageError("--clock cpu counts the calling thread's CPU time: it needs --threads 1 (else use wall)")
    settings.threads = threads
    report = BenchReport(
        machine=machine(threads),
        settings=asdict(settings),
        flops_per_image={g: count_flops(p)["total"] for g, p in fp32.items()},
    )
    probe = _run_child(
        {"runtime": "gemm", "graph": "matmul", "precision": "fp32", "path": "", "device": "cpu", **asdict(settings)}
    )
    if probe and probe[0].p50_ms:
        report.machine["cpu"]["gemm_gflops"] = round(2 * GEMM_N**3 / (probe[0].p50_ms / 1e3) / 1e9, 1)
    jobs, notes = plan(artifact_dir, settings)
    measured: dict[tuple[str, str, str, int], list[Row]] = {}
    total = len(jobs) * settings.rounds
    for i in range(total):
        job = jobs[i % len(jobs)]
        for row in _run_child({**job, **asdict(settings), "artifact_dir": str(artifact_dir)}):
            measured.setdefault((row.runtime, row.graph, row.precision, row.batch), []).append(row)
        if progress:
            progress(job, i + 1, total)
    for rows in measured.values():
        report.rows.append(
            _pool(rows, report.flops_per_image.get(rows[0].graph, 0), report.machine["cpu"]["peak_gflops"])
        )
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
            [sys.executable, "-m", "vaekit.runtimes.bench", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            env={**os.environ, **job.get("env", {})},
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


# --- the child: one runtime, one graph, every batch size -------------------------------------------------


def _rss_high_water_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: VmHWM of this process image (getrusage's ru_maxrss would carry the parent's peak across exec).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy (Linux /proc/stat), for the contention estimate."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def time_calls(
    fn: Any, x: np.ndarray, warmup: int, min_runs: int, min_seconds: float, max_seconds: float, clock: Any = None
) -> list[float]:
    """Seconds per call after `warmup` calls, until the median is stable, min_runs/min_seconds are met, or the cap.

    clock: time.perf_counter (wall, the default) or time.thread_time (CPU time of this thread: with one
    intra-op thread every runtime computes on the calling thread, and time other processes take is not counted).
    """
    clock = clock or time.perf_counter
    for _ in range(warmup):
        fn(x)
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = clock()
        fn(x)
        times.append(clock() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= min_runs and elapsed >= min_seconds:
            q1, q2, q3 = np.percentile(times, [25, 50, 75])
            if 1.57 * (q3 - q1) / np.sqrt(len(times)) <= STABLE_MEDIAN * q2 or elapsed >= max_seconds:
                return times


def _gemm_probe(threads: int) -> Any:
    """A float MatMul as ONNX Runtime runs it: what its own GEMM reaches here, a measured ceiling beside the peak."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vaekit.runtimes.onnxrt import import_ort, session_options

    b = numpy_helper.from_array(
        np.random.default_rng(INPUT_SEED).standard_normal((GEMM_N, GEMM_N)).astype(np.float32), "b"
    )
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [GEMM_N, GEMM_N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [GEMM_N, GEMM_N])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm", [a], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    sess = import_ort().InferenceSession(
        model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    return lambda x: sess.run(None, {"a": x})[0]


def _load(job: dict[str, Any]) -> Encoder | Decoder:
    role, path, device = job["graph"], Path(job["path"]), job["device"]
    if job["runtime"] in ("pytorch", "torch-compile"):
        import torch

        torch.set_num_threads(job["threads"])
    loaded = load_encoder(path, device) if role == "encoder" else load_decoder(path, device)
    if job["runtime"] == "torch-compile":
        import torch

        # The PyTorch runtime's own module compiled by inductor; the first call per shape compiles (in warm-up).
        model = getattr(loaded, "model")  # noqa: B009 (TorchEncoder/TorchDecoder keep their module here)
        compiled = torch.compile(model.encode if role == "encoder" else model.decode)

        def run(x: np.ndarray) -> Any:
            with torch.no_grad():
                out = compiled(torch.from_numpy(x))
            return tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy()

        setattr(loaded, "_encode" if role == "encoder" else "_decode", run)
    return loaded


def _inputs(job: dict[str, Any], runtime: Encoder | Decoder, n: int) -> np.ndarray:
    info = runtime.info
    rng = np.random.default_rng(INPUT_SEED)
    if info.role == "decoder":
        return rng.standard_normal((n, info.latent_dim)).astype(np.float32)
    lo, hi = info.value_range
    images = rng.uniform(lo, hi, (n, *info.image_shape)).astype(np.float32)
    if (Path(job["artifact_dir"]) / PARITY_INPUTS).is_file():  # real images where the export saved some
        real = to_float(load_inputs(Path(job["artifact_dir"]))[0], info.value_range)
        images = real[np.arange(n) % len(real)]
    return images


def _child(job: dict[str, Any]) -> None:
    threads = job["threads"]
    if hasattr(os, "sched_setaffinity") and threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    base_mb = _rss_high_water_mb()
    t0 = time.perf_counter()
    if job["runtime"] == "gemm":
        fn = _gemm_probe(threads)
        x_all = np.random.default_rng(INPUT_SEED).standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
        job = {**job, "batch_sizes": [GEMM_N]}
    else:
        runtime = _load(job)
        fn = runtime.encode if isinstance(runtime, Encoder) else runtime.decode
        x_all = _inputs(job, runtime, max(job["batch_sizes"]))
    load_s = time.perf_counter() - t0
    for batch in sorted(job["batch_sizes"]):
        x = np.ascontiguousarray(x_all[:batch])
        busy0, own0, wall0 = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()
        clock = time.thread_time if job["clock"] == "cpu" else time.perf_counter
        times = time_calls(fn, x, job["warmup"], job["min_runs"], job["min_seconds"], job["max_seconds"], clock)
        busy1, own1, wall = _busy_seconds(), sum(os.times()[:2]), time.perf_counter() - wall0
        q1, p50, q3, p95 = np.percentile(times, [25, 50, 75, 95])
        other = None
        if busy0 is not None and busy1 is not None:
            other = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1)), 3)
        row = Row(
            runtime=job["runtime"],
            graph=job["graph"],
            precision=job["precision"],
            batch=batch,
            p50_ms=round(p50 * 1e3, 4),
            p95_ms=round(p95 * 1e3, 4),
            images_per_s=round(batch / p50, 1),
            peak_rss_mb=round(_rss_high_water_mb() - base_mb, 1),
            load_s=round(load_s, 3),
            runs=len(times),
            median_ci_pct=round(100 * 1.57 * (q3 - q1) / np.sqrt(len(times)) / p50, 2),
            other_load=other,
            times_ms=[round(t * 1e3, 5) for t in times],
        )
        print(json.dumps(asdict(row)), flush=True)


def main(argv: list[str]) -> int:
    """Child entry point: measure one job, print one JSON row per batch size (or one note row)."""
    job = json.loads(argv[1])
    try:
        _child(job)
    except Exception as exc:  # a runtime that fails here (compiler, driver, graph) becomes a note row
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        row = Row(runtime=job["runtime"], graph=job["graph"], precision=job["precision"], batch=0, note=reason)
        print(json.dumps(asdict(row)), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
