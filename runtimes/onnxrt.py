"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider, chosen by `device`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

from vaekit.errors import VaekitError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
TRT_CACHE_DIR = ".trt_cache"


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


def _session(path: Path, device: str, info: ArtifactInfo, threads: int | None) -> Any:
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
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
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
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot load"
        raise VaekitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
    if sess.get_providers()[0] != wanted:
        raise VaekitError(f"ONNX Runtime fell back to {sess.get_providers()[0]} for {path} instead of {wanted}")
    return sess


def load_info(path: Path, device: str = "cpu") -> ArtifactInfo:
    meta = graph_metadata(read_graph(path))
    info = metadata_to_info(meta, backend="onnxruntime", device="cpu" if device == "cpu" else "cuda", path=str(path))
    return info


def _load(path: Path, role: str, device: str, threads: int | None) -> tuple[ArtifactInfo, Any]:
    info = load_info(path, device)
    if info.role != role:
        raise VaekitError(f"{path} is an {info.role} graph, not a {role}")
    return info, _session(path, device, info, threads)


class OrtEncoder(Encoder):
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None) -> None:
        self.info, self.session = _load(path, "encoder", device, threads)

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.session.run(["mu", "log_var"], {"image": images})
        return mu, log_var


class OrtDecoder(Decoder):
    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None) -> None:
        self.info, self.session = _load(path, "decoder", device, threads)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.session.run(["image"], {"z": z})[0]
