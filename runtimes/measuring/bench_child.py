"""The child process of `vaekit bench`: one runtime, one graph, every batch size, one JSON row each.

A child of its own per measurement keeps its peak memory its own and keeps one runtime's thread pool
from spinning against another's; its CPU affinity is the first `threads` cores.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from vaekit.data import to_float
from vaekit.runtimes.artifacts import PARITY_INPUTS, load_inputs
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.measuring.bench import (
    GEMM_N,
    GEMM_PROBE,
    INPUT_SEED,
    PEERS,
    STABLE_MEDIAN,
    Job,
    Row,
    load_peer,
    verify,
)


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


Call = Callable[[np.ndarray], object]


def time_calls(
    fn: Call,
    x: np.ndarray,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    max_seconds: float,
    clock: Callable[[], float] | None = None,
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


def _gemm_probe(threads: int) -> Call:
    """A float MatMul as ONNX Runtime runs it: what its own GEMM reaches here, a measured ceiling beside the peak."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vaekit.runtimes.backends.onnxrt import cpu_session

    b = numpy_helper.from_array(
        np.random.default_rng(INPUT_SEED).standard_normal((GEMM_N, GEMM_N)).astype(np.float32), "b"
    )
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [GEMM_N, GEMM_N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [GEMM_N, GEMM_N])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm", [a], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    sess = cpu_session(model.SerializeToString(), threads)
    return lambda x: sess.run(None, {"a": x})[0]


def _inputs(job: Job, runtime: Encoder | Decoder, n: int) -> np.ndarray:
    info = runtime.info
    rng = np.random.default_rng(INPUT_SEED)
    if info.role == "decoder":
        return rng.standard_normal((n, info.latent_dim)).astype(np.float32)
    lo, hi = info.value_range
    images = rng.uniform(lo, hi, (n, *info.image_shape)).astype(np.float32)
    if (Path(job.artifact_dir) / PARITY_INPUTS).is_file():  # real images where the export saved some
        real = to_float(load_inputs(Path(job.artifact_dir))[0], info.value_range)
        images = real[np.arange(n) % len(real)]
    return images


def _pin(threads: int) -> None:
    if hasattr(os, "sched_setaffinity") and threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def _measure(
    job: Job, fn: Callable[[np.ndarray], object], x: np.ndarray, batch: int, load_s: float, base_mb: float
) -> Row:
    """Time one batch size; the other processes' CPU use during it is recorded beside the timings."""
    busy0, own0, wall0 = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    clock = time.thread_time if job.clock == "cpu" else time.perf_counter
    times = time_calls(fn, x, job.warmup, job.min_runs, job.min_seconds, job.max_seconds, clock)
    busy1, own1, wall = _busy_seconds(), sum(os.times()[:2]), time.perf_counter() - wall0
    q1, p50, q3, p95 = np.percentile(times, [25, 50, 75, 95])
    other = None
    if busy0 is not None and busy1 is not None:
        other = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1)), 3)
    return Row(
        runtime=job.runtime,
        graph=job.graph,
        precision=job.precision,
        batch=batch,
        p50_ms=round(p50 * 1e3, 4),
        p95_ms=round(p95 * 1e3, 4),
        images_per_s=round(batch / p50, 1),
        peak_rss_mb=round(_rss_high_water_mb() - base_mb, 1),
        load_s=round(load_s, 3),
        runs=len(times),
        median_ci_pct=round(100 * 1.57 * (q3 - q1) / np.sqrt(len(times)) / p50, 2),
        other_load=other,
        artifact=Path(job.path).name,
        times_ms=[round(t * 1e3, 5) for t in times],
    )


def _child(job: Job) -> None:
    _pin(job.threads)
    base_mb = _rss_high_water_mb()
    t0 = time.perf_counter()
    parity = ""
    if job.runtime == GEMM_PROBE:
        fn = _gemm_probe(job.threads)
        x_all = np.random.default_rng(INPUT_SEED).standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
        job = replace(job, batch_sizes=[GEMM_N])
    else:
        artifact_dir = Path(job.artifact_dir)
        runtime = load_peer(PEERS[job.runtime], Path(job.path), job.graph, artifact_dir, job.threads)
        parity = verify(runtime, artifact_dir)
        fn = runtime.encode if isinstance(runtime, Encoder) else runtime.decode
        x_all = _inputs(job, runtime, max(job.batch_sizes))
    load_s = time.perf_counter() - t0
    for batch in sorted(job.batch_sizes):
        row = _measure(job, fn, np.ascontiguousarray(x_all[:batch]), batch, load_s, base_mb)
        print(json.dumps(asdict(replace(row, parity=parity))), flush=True)


def main(argv: list[str]) -> int:
    """Child entry point: measure one job, print one JSON row per batch size (or one note row)."""
    job = Job(**json.loads(argv[1]))
    try:
        _child(job)
    except Exception as exc:  # a runtime that fails here (compiler, driver, graph) becomes a note row
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        row = Row(runtime=job.runtime, graph=job.graph, precision=job.precision, batch=0, note=reason)
        print(json.dumps(asdict(row)), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
