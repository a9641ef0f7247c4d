"""Pick the backend from the artifact: a small registry of file suffix -> backend module."""

from __future__ import annotations

import importlib
from pathlib import Path

from vaekit.errors import VaekitError
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

ENCODER_ONNX = "encoder.onnx"
DECODER_ONNX = "decoder.onnx"
# suffix -> (module, encoder class, decoder class); modules import their libraries lazily.
BACKENDS = {
    ".safetensors": ("vaekit.runtimes.pyt", "TorchEncoder", "TorchDecoder"),
    ".onnx": ("vaekit.runtimes.onnxrt", "OrtEncoder", "OrtDecoder"),
    ".plan": ("vaekit.runtimes.trt", "TrtEncoder", "TrtDecoder"),
    ".engine": ("vaekit.runtimes.trt", "TrtEncoder", "TrtDecoder"),
}
DEVICES = ("cpu", "cuda", "tensorrt")


def resolve(path: Path, role: str) -> Path:
    """A run dir (config.json) stays itself; an artifact dir resolves to its fp32 <role>.onnx."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path / "model.safetensors"
        candidate = path / (ENCODER_ONNX if role == "encoder" else DECODER_ONNX)
        if candidate.is_file():
            return candidate
        raise VaekitError(f"{path} holds neither a run (config.json) nor {candidate.name}")
    if not path.exists():
        raise VaekitError(f"{path} not found")
    return path


def _backend(path: Path, role: str, device: str) -> type:
    if device not in DEVICES:
        raise VaekitError(f"unknown device {device!r}: use {', '.join(DEVICES)}")
    entry = BACKENDS.get(path.suffix.lower())
    if entry is None:
        known = ", ".join(BACKENDS)
        raise VaekitError(
            f"{path}: unknown artifact type {path.suffix or '(no suffix)'!r}; vaekit reads {known} or a run dir"
        )
    module_name, encoder_cls, decoder_cls = entry
    if module_name.endswith(".pyt"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise VaekitError(f"{path} is a PyTorch checkpoint: reading it needs pip install 'vaekit[train]'") from None
        if device == "tensorrt":
            raise VaekitError("--device tensorrt applies to .onnx and .plan artifacts, not to a checkpoint")
    module = importlib.import_module(module_name)
    return getattr(module, encoder_cls if role == "encoder" else decoder_cls)


def load_encoder(path: Path | str, device: str = "cpu") -> Encoder:
    resolved = resolve(Path(path), "encoder")
    return _backend(resolved, "encoder", device)(resolved, device)


def load_decoder(path: Path | str, device: str = "cpu") -> Decoder:
    resolved = resolve(Path(path), "decoder")
    return _backend(resolved, "decoder", device)(resolved, device)


def onnx_devices() -> dict[str, str]:
    """ONNX Runtime devices -> '' when usable here, else the reason it is not."""
    try:
        import onnxruntime
    except ImportError:
        return dict.fromkeys(("cpu", "cuda", "tensorrt"), "onnxruntime not installed (pip install 'vaekit[cpu]')")
    providers = onnxruntime.get_available_providers()
    status = {}
    for device, provider in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        status[device] = "" if provider in providers else f"no {provider} (pip install 'vaekit[gpu]')"
    status["tensorrt"] = (
        "" if "TensorrtExecutionProvider" in providers else "no TensorrtExecutionProvider (vaekit[trt])"
    )
    return status


def tensorrt_status() -> str:
    """'' when TensorRT engines can run here, else why not."""
    from vaekit.runtimes.trt import cuda_status, import_trt

    try:
        import_trt()
    except VaekitError as exc:
        return str(exc)
    return cuda_status()


def describe(path: Path | str) -> ArtifactInfo:
    """What an artifact is, read from its metadata alone (no session, no engine, no GPU)."""
    resolved = resolve(Path(path), "decoder")
    suffix = resolved.suffix.lower()
    if suffix == ".onnx":
        from vaekit.runtimes.onnxrt import load_info

        return load_info(resolved)
    if suffix in (".plan", ".engine"):
        from vaekit.runtimes.trt import load_info as load_plan_info

        return load_plan_info(resolved)
    return load_decoder(resolved).info
