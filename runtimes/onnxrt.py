"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider, chosen by `device`.

On the CPU provider a graph first goes through exact rewrites (`rewrite_for_cpu`): ONNX Runtime's CPU
ConvTranspose runs one small GEMM + col2im per image and has no int8 kernel, while its Conv kernels
are batched, NCHWc-blocked in fp32 and VNNI-backed in int8. The file on disk is never changed; the
GPU providers get it as it is (TensorRT has its own deconvolution kernels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info
from vaekit.runtimes.cpu_rewrites import rewrite_for_cpu

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
TRT_CACHE_DIR = ".trt_cache"
REWRITES_ENV = "VAEKIT_ORT_REWRITES"  # "0": run graphs exactly as stored, to measure what the rewrites buy


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise VaekitError(
            "ONNX Runtime is not installed: pip install 'vaekit[cpu]' (or 'vaekit[gpu]' on NVIDIA)"
        ) from None
    return onnxruntime


def read_graph(path: Path) -> Any:
    """Parse an ONNX file without its weights and refuse external data that points outside its folder."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise VaekitError(f"{path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise VaekitError(f"{path} is not a valid ONNX file (truncated or corrupt?): {exc}") from None
    if not model.graph.node:
        raise VaekitError(f"{path} is not a valid ONNX file: it has no graph")
    root = path.resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise VaekitError(f"{path}: external data {location!r} points outside the model's folder; refused")
    return model


def graph_metadata(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def cpu_cores() -> int:
    """Cores this process may run on (affinity and container limits included where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --- sessions -------------------------------------------------------------------------------------------


def session_options(threads: int | None = None) -> Any:
    """CPU session settings, stated once: all graph optimizations, intra-op threads = cores, one inter-op thread."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or cpu_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def _cpu_model(path: Path, rewrite: bool) -> tuple[str | bytes, list[str]]:
    """The bytes ONNX Runtime gets on the CPU provider: the rewritten graph, or the path when nothing applies."""
    if not rewrite or os.environ.get(REWRITES_ENV, "1") == "0":
        return str(path), []
    import onnx

    model = read_graph(path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return str(path), []
    done = rewrite_for_cpu(model)
    return (model.SerializeToString(), done) if done else (str(path), [])


def _session(
    path: Path, device: str, info: ArtifactInfo, threads: int | None, rewrite: bool = True
) -> tuple[Any, list[str]]:
    ort = import_ort()
    if device not in PROVIDERS:
        raise VaekitError(f"unknown device {device!r} for ONNX Runtime: use {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[device]
    available = ort.get_available_providers()
    if wanted not in available:
        hint = "pip install 'vaekit[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU"
        if device == "tensorrt":
            hint = "pip install 'vaekit[trt]' (onnxruntime-gpu + tensorrt) on a machine with an NVIDIA GPU"
        raise VaekitError(f"ONNX Runtime here has no {wanted} (it has {', '.join(available)}): {hint}")
    opts = session_options(threads)
    providers: list[Any] = [wanted]
    if device == "tensorrt":
        name = "image" if info.role == "encoder" else "z"
        dims = "x".join(str(d) for d in (info.image_shape if info.role == "encoder" else (info.latent_dim,)))
        cache = str(path.parent / TRT_CACHE_DIR)
        trt_opts = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": f"{name}:1x{dims}",
            "trt_profile_opt_shapes": f"{name}:{info.max_batch}x{dims}",
            "trt_profile_max_shapes": f"{name}:{info.max_batch}x{dims}",
        }
        providers = [(wanted, trt_opts), "CUDAExecutionProvider"]
    model, rewrites = _cpu_model(path, rewrite) if device == "cpu" else (str(path), [])
    try:
        sess = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot load"
        raise VaekitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
    if sess.get_providers()[0] != wanted:
        raise VaekitError(f"ONNX Runtime fell back to {sess.get_providers()[0]} for {path} instead of {wanted}")
    return sess, rewrites


def load_info(path: Path, device: str = "cpu") -> ArtifactInfo:
    model = read_graph(path)
    info = metadata_to_info(graph_metadata(model), backend="onnxruntime", device=device, path=str(path))
    _check_input(model, info, path)
    return info


def _check_input(model: Any, info: ArtifactInfo, path: Path) -> None:
    """The graph's own input shape must agree with its metadata, or inputs checked against the metadata fail
    later inside ONNX Runtime with its own message."""
    expected = (info.latent_dim,) if info.role == "decoder" else info.image_shape
    dims = tuple(d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim)[1:]
    if len(dims) != len(expected) or any(d is not None and d != e for d, e in zip(dims, expected, strict=False)):
        what = f"latent_dim {info.latent_dim}" if info.role == "decoder" else f"image_shape {list(expected)}"
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise VaekitError(
            f"{path}: its metadata says {what} but the graph takes {model.graph.input[0].name} of shape (N, {shown})"
        )


def _load(
    path: Path, role: str, device: str, threads: int | None, rewrite: bool
) -> tuple[ArtifactInfo, Any, list[str]]:
    info = load_info(path, device)
    if info.role != role:
        raise VaekitError(f"{path} is an {info.role} graph, not a {role}")
    return (info, *_session(path, device, info, threads, rewrite))


def _run(session: Any, outputs: list[str], feed: dict[str, np.ndarray], path: str) -> list[np.ndarray]:
    try:
        return list(session.run(outputs, feed))
    except Exception as exc:  # ORT raises its own Fail/InvalidArgument types: the graph cannot run this input
        raise VaekitError(f"ONNX Runtime failed to run {path}: {str(exc).splitlines()[0]}") from None


class OrtEncoder(Encoder):
    """rewrite=False runs the graph exactly as stored (to measure what the CPU rewrites buy)."""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, *, rewrite: bool = True) -> None:
        self.info, self.session, self.rewrites = _load(path, "encoder", device, threads, rewrite)

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = _run(self.session, ["mu", "log_var"], {"image": images}, self.info.path)
        return mu, log_var


class OrtDecoder(Decoder):
    """rewrite=False runs the graph exactly as stored (to measure what the CPU rewrites buy)."""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, *, rewrite: bool = True) -> None:
        self.info, self.session, self.rewrites = _load(path, "decoder", device, threads, rewrite)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return _run(self.session, ["image"], {"z": z}, self.info.path)[0]
