"""Build a TensorRT engine from one of our ONNX graphs: one code path for TensorRT 10.x (Jetson) and 11.x.

The network is strongly typed (required in 11.x, accepted in 10.x): precision comes from the graph's
types (fp32, fp16 or bf16 graph, or explicit Q/DQ int8 graph), never from builder flags or calibrators, which
11.x removed. One optimization profile covers batch 1..max_batch; the timing cache beside the plan makes
rebuilds fast. After the build the engine inspector shows what precision the layers really run in, and
a reduced-precision graph that came out all fp32 (a build that "succeeds" silently) is refused. The
`.plan` stays a plain engine for trtexec/DeepStream/C++; vaekit's metadata goes into `<plan>.json`.
No torch here: `vaekit build-engine` runs on the target device from ONNX alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from vaekit.runtimes.artifacts import SIDECAR_FORMAT, TIMING_CACHE, sidecar_path
from vaekit.runtimes.backends.cuda import cuda_status, gpu_identity
from vaekit.runtimes.backends.onnxrt import graph_metadata, read_graph
from vaekit.runtimes.backends.trt import import_trt, inspect_engine, layer_precisions
from vaekit.runtimes.base import metadata_to_info

WORKSPACE_BYTES = 1 << 30  # scratch memory TensorRT may use per layer; our VAEs need far less
BF16_MIN_COMPUTE = (8, 0)  # TensorRT runs bfloat16 from Ampere (sm_80; Jetson Orin is 8.7) on


def check_gpu_precision(precision: str, gpu: dict[str, str]) -> None:
    """Refuse, before any work, a bf16 engine on a GPU without bfloat16 arithmetic."""
    major, _, minor = gpu["compute_capability"].partition(".")
    if precision == "bf16" and (int(major), int(minor or 0)) < BF16_MIN_COMPUTE:
        raise VaekitError(
            f"{gpu['name']} (compute {gpu['compute_capability']}) has no bfloat16 arithmetic: TensorRT needs compute "
            f"{'.'.join(map(str, BF16_MIN_COMPUTE))} or newer for bf16; build the fp16 graph instead"
        )


def make_sidecar(
    graph_meta: dict[str, str],
    *,
    plan: bytes,
    precision: str,
    tensorrt_version: str,
    gpu: dict[str, str],
    profile: dict[str, Any],
    source_onnx: str,
    source_sha256: str,
    layers: dict[str, int],
    build_seconds: float,
) -> dict[str, Any]:
    """The JSON written beside a plan: everything `load_info` and the compatibility check need."""
    from vaekit import __version__

    return {
        "format": SIDECAR_FORMAT,
        "producer": "vaekit",
        "vaekit_version": __version__,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu,
        "precision": precision,
        "profile": profile,
        "source_onnx": source_onnx,
        "source_onnx_sha256": source_sha256,
        "plan_bytes": len(plan),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "layers": layers,
        "build_seconds": round(build_seconds, 2),
        "graph_metadata": graph_meta,
    }


def _logger(trt: Any) -> Any:
    """A logger that keeps TensorRT's error messages, so a failed build can say why in one line."""

    class Captured(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg.strip())

    return Captured()


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for i in range(parser.num_errors):
        parse_error = parser.get_error(i)
        errors.append(f"node {parse_error.node_name() or '?'}: {parse_error.desc()}")
    raise VaekitError(f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors) or 'no parser errors reported'}")


def _use_timing_cache(config: Any, path: Path) -> None:
    """Start from the saved timing cache; one from another GPU or TensorRT version is ignored."""
    data = path.read_bytes() if path.is_file() else b""
    try:
        timing_cache = config.create_timing_cache(data)
        if timing_cache is not None and config.set_timing_cache(timing_cache, False):
            return
    except Exception:  # a corrupt cache file: start afresh rather than fail the build
        pass
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _network(trt: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """A strongly typed network parsed from the graph: precision comes from the graph's own types."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    _parse(trt, network, logger, onnx_path)
    return builder, network


def _config(
    trt: Any, builder: Any, network: Any, shapes: dict[str, tuple[int, ...]], workspace: int, cache: Path
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector needs layer types
    # TF32 (on by default) rounds float32 matmul/conv inputs to 10-bit mantissas: float32 in the graph means
    # float32 in the engine, which is what the fp32 parity tolerance (1e-3 against PyTorch) assumes.
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    _use_timing_cache(config, cache)
    return config


def _profile_shapes(network: Any, opt: int, max_batch: int) -> dict[str, tuple[int, ...]]:
    dims = tuple(int(d) for d in network.get_input(0).shape)[1:]
    return {"min": (1, *dims), "opt": (opt, *dims), "max": (max_batch, *dims)}


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    max_batch: int,
    *,
    opt_batch: int | None = None,
    workspace: int = WORKSPACE_BYTES,
) -> dict[str, Any]:
    """Build plan_path from onnx_path for batch 1..max_batch (tuned for opt_batch, default max_batch).

    Writes the plan and its sidecar atomically and returns a summary (seconds, precision, layer counts).
    """
    t0 = time.perf_counter()
    if max_batch < 1:
        raise VaekitError(f"--max-batch must be >= 1, got {max_batch}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise VaekitError(f"the profile's opt batch {opt} must lie in 1..{max_batch}")
    meta = graph_metadata(read_graph(onnx_path))
    info = metadata_to_info(meta, backend="tensorrt", device="cuda", path=str(onnx_path))
    trt = import_trt()
    missing = cuda_status()
    if missing:
        raise VaekitError(f"building {plan_path.name}: {missing}")
    gpu = gpu_identity(0)
    check_gpu_precision(info.precision, gpu)

    logger = _logger(trt)
    builder, network = _network(trt, logger, onnx_path)
    shapes = _profile_shapes(network, opt, max_batch)
    cache_path = plan_path.parent / TIMING_CACHE
    config = _config(trt, builder, network, shapes, workspace, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "no error reported"
        raise VaekitError(f"TensorRT could not build {plan_path.name} from {onnx_path.name}: {why}")
    plan = bytes(serialized)
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise VaekitError(f"TensorRT built {plan_path.name} but cannot load it back: {'; '.join(logger.errors)}")
    input_name = network.get_input(0).name
    layers = layer_precisions(json.loads(inspect_engine(trt, engine, input_name, shapes["opt"])))
    check_precision(info.precision, layers, onnx_path.name)

    seconds = time.perf_counter() - t0
    profile_json = {"input": input_name, **{k: list(v) for k, v in shapes.items()}}
    sidecar = make_sidecar(
        meta,
        plan=plan,
        precision=info.precision,
        tensorrt_version=trt.__version__,
        gpu=gpu,
        profile=profile_json,
        source_onnx=onnx_path.name,
        source_sha256=sha256_file(onnx_path),
        layers=layers,
        build_seconds=seconds,
    )
    atomic_write_bytes(plan_path, plan)
    atomic_write_text(sidecar_path(plan_path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return {
        "plan": plan_path.name,
        "sidecar": sidecar_path(plan_path).name,
        "source": onnx_path.name,
        "precision": info.precision,
        "layers": layers,
        "profile": profile_json,
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "bytes": len(plan),
        "seconds": round(seconds, 2),
    }


def check_precision(precision: str, layers: dict[str, int], source: str) -> None:
    """Refuse an engine whose layers do not run in the precision its graph asked for."""
    if precision == "fp32":
        return
    if not layers.get(precision):
        seen = ", ".join(f"{n} {p}" for p, n in sorted(layers.items())) or "no layer information"
        raise VaekitError(
            f"{source} is an {precision} graph but TensorRT built no {precision} layer ({seen}): "
            "the engine would silently run in a wider type; not written"
        )
