"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider, chosen by `device`.

On the CPU provider a graph first goes through exact rewrites (`rewrite_for_cpu`): ONNX Runtime's CPU
ConvTranspose runs one small GEMM + col2im per image and has no int8 kernel, while its Conv kernels
are batched, NCHWc-blocked in fp32 and VNNI-backed in int8. The file on disk is never changed; the
GPU providers get it as it is (TensorRT has its own deconvolution kernels). `rewrite=False` runs the
graph exactly as stored, as a user's own ONNX Runtime application would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import INPUT_NAME, OUTPUT_NAMES, WITH_ARTICLE, Role
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

LABEL = "onnxruntime"
# device -> execution provider. "tensorrt" is ONNX Runtime's TensorRT execution provider (it builds its own
# engines from the .onnx); the native TensorRT backend that runs our .plan files is `vaekit.runtimes.backends.trt`.
TENSORRT_EP = "tensorrt"
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    TENSORRT_EP: "TensorrtExecutionProvider",
}
TRT_CACHE_DIR = ".trt_cache"
INSTALL_HINT = {
    "cpu": "pip install 'vaekit[cpu]'",
    "cuda": "pip install 'vaekit[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU",
    TENSORRT_EP: "pip install 'vaekit[trt]' (onnxruntime-gpu + tensorrt) on a machine with an NVIDIA GPU",
}


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise VaekitError(
            "ONNX Runtime is not installed: pip install 'vaekit[cpu]' (or 'vaekit[gpu]' on NVIDIA)"
        ) from None
    return onnxruntime


def status(device: str) -> str:
    """'' when ONNX Runtime can run on `device` here, else why not."""
    try:
        import onnxruntime
    except ImportError:
        return f"onnxruntime not installed ({INSTALL_HINT['cpu']})"
    if PROVIDERS[device] not in onnxruntime.get_available_providers():
        return f"no {PROVIDERS[device]} ({INSTALL_HINT[device]})"
    return ""


def read_graph(path: Path) -> onnx.ModelProto:
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
        if "\x00" in location or os.path.isabs(location) or root not in (root / location).resolve().parents:
            raise VaekitError(f"{path}: external data {location!r} points outside the model's folder; refused")
    return model


def graph_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def cpu_cores() -> int:
    """Cores this process may run on (affinity and container limits included where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --- sessions -------------------------------------------------------------------------------------------


def session_options(threads: int | None = None, optimize: bool = True) -> Any:
    """Session settings, stated once: graph optimizations, intra-op threads = cores, one inter-op thread.

    optimize=False keeps every node as written (profiling tensors inside a graph needs them unfused).
    """
    ort = import_ort()
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or cpu_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def cpu_session(model: str | bytes, threads: int | None = None, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session over a path or serialized graph: the one place one is built."""
    ort = import_ort()
    try:
        return ort.InferenceSession(
            model, sess_options=session_options(threads, optimize), providers=[PROVIDERS["cpu"]]
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot load"
        raise VaekitError(f"ONNX Runtime CPU cannot load the graph: {str(exc).splitlines()[0]}") from None


def _cpu_model(path: Path, rewrite: bool) -> tuple[str | bytes, list[str]]:
    """The bytes ONNX Runtime gets on the CPU provider: the rewritten graph, or the path when nothing applies."""
    if not rewrite:
        return str(path), []
    import onnx

    model = read_graph(path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return str(path), []
    done = rewrite_for_cpu(model)
    return (model.SerializeToString(), done) if done else (str(path), [])


def tensorrt_options(path: Path, info: ArtifactInfo) -> dict[str, Any]:
    """The TensorRT EP's engine cache beside the graph, and one profile for batch 1..max_batch."""
    name = INPUT_NAME[info.role]
    dims = "x".join(str(d) for d in (info.image_shape if info.role == "encoder" else (info.latent_dim,)))
    cache = str(path.parent / TRT_CACHE_DIR)
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": f"{name}:1x{dims}",
        "trt_profile_opt_shapes": f"{name}:{info.max_batch}x{dims}",
        "trt_profile_max_shapes": f"{name}:{info.max_batch}x{dims}",
    }


def _session(path: Path, device: str, info: ArtifactInfo, threads: int | None, rewrite: bool) -> tuple[Any, list[str]]:
    ort = import_ort()
    missing = status(device)
    if missing:
        raise VaekitError(f"ONNX Runtime here has {missing}")
    wanted = PROVIDERS[device]
    providers: list[Any] = [wanted]
    if device == TENSORRT_EP:
        providers = [(wanted, tensorrt_options(path, info)), PROVIDERS["cuda"]]
    model, rewrites = _cpu_model(path, rewrite) if device == "cpu" else (str(path), [])
    try:
        sess = ort.InferenceSession(model, sess_options=session_options(threads), providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot load"
        raise VaekitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
    if sess.get_providers()[0] != wanted:
        raise VaekitError(f"ONNX Runtime fell back to {sess.get_providers()[0]} for {path} instead of {wanted}")
    return sess, rewrites


def load_info(path: Path, device: str = "cpu") -> ArtifactInfo:
    model = read_graph(path)
    info = metadata_to_info(graph_metadata(model), backend=LABEL, device=device, path=str(path))
    _check_input(model, info, path)
    return info


def _check_input(model: onnx.ModelProto, info: ArtifactInfo, path: Path) -> None:
    """The graph's own input shape must agree with its metadata, or inputs checked against the metadata fail
    later inside ONNX Runtime with its own message."""
    if not model.graph.input:
        raise VaekitError(f"{path} is not a vaekit graph: it takes no input")
    expected = (info.latent_dim,) if info.role == "decoder" else info.image_shape
    dims = tuple(d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim)[1:]
    if len(dims) != len(expected) or any(d is not None and d != e for d, e in zip(dims, expected, strict=False)):
        what = f"latent_dim {info.latent_dim}" if info.role == "decoder" else f"image_shape {list(expected)}"
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise VaekitError(
            f"{path}: its metadata says {what} but the graph takes {model.graph.input[0].name!r} of shape (N, {shown})"
        )


def _run(session: Any, feed: dict[str, np.ndarray], role: Role, path: str) -> list[np.ndarray]:
    try:
        return list(session.run(list(OUTPUT_NAMES[role]), feed))
    except Exception as exc:  # ORT raises its own Fail/InvalidArgument types: the graph cannot run this input
        raise VaekitError(f"ONNX Runtime failed to run {path}: {str(exc).splitlines()[0]}") from None


class OrtRunner:
    """One session over one graph; `rewrites` names the exact CPU rewrites applied in memory."""

    def __init__(self, path: Path, role: Role, device: str, threads: int | None, rewrite: bool) -> None:
        self.info = load_info(path, device)
        if self.info.role != role:
            raise VaekitError(f"{path} is {WITH_ARTICLE[self.info.role]} graph, not {WITH_ARTICLE[role]}")
        self.session, self.rewrites = _session(path, device, self.info, threads, rewrite)

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        return _run(self.session, {INPUT_NAME[self.info.role]: array}, self.info.role, self.info.path)


class OrtEncoder(Encoder):
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, *, rewrite: bool = True) -> None:
        self.runner = OrtRunner(path, "encoder", device, threads, rewrite)
        self.info, self.rewrites = self.runner.info, self.runner.rewrites

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu, log_var


class OrtDecoder(Decoder):
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, *, rewrite: bool = True) -> None:
        self.runner = OrtRunner(path, "decoder", device, threads, rewrite)
        self.info, self.rewrites = self.runner.info, self.runner.rewrites

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0]


def load(path: Path, role: Role, device: str, threads: int | None = None, rewrite: bool = True) -> Encoder | Decoder:
    """threads: intra-op threads (default: every core here); rewrite=False: the graph exactly as stored."""
    cls = OrtEncoder if role == "encoder" else OrtDecoder
    return cls(path, device, threads, rewrite=rewrite)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    """The graph's own metadata (role: only a checkpoint holds both halves; a graph describes its own)."""
    return load_info(path)
