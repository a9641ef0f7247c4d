"""CUDA device buffers for the TensorRT backend: torch CUDA tensors when torch with CUDA is importable,
else cuda-python allocations; both imported lazily. Also what a plan is tied to: the GPU's identity.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any

import numpy as np

from vaekit.errors import VaekitError


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ok(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, unwrap the value."""
    err, *values = result
    if int(err) != 0:
        raise VaekitError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


@functools.cache
def cuda_backend() -> tuple[str, str]:
    """('torch' | 'cuda-python', '') when a CUDA GPU is usable, else ('', why not)."""
    reasons = []
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", ""
        reasons.append(f"torch {torch.__version__} sees no CUDA GPU")
    except ImportError:
        reasons.append("no torch")
    try:
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            return "cuda-python", ""
        reasons.append(f"cuda-python sees no CUDA GPU ({err})")
    except ImportError:
        reasons.append("no cuda-python")
    return "", f"no usable CUDA GPU ({', '.join(reasons)}): TensorRT engines need an NVIDIA GPU and its driver"


def cuda_status() -> str:
    """'' when a CUDA GPU is usable for TensorRT buffers here, else the reason."""
    return cuda_backend()[1]


def gpu_identity(index: int = 0) -> dict[str, str]:
    """Name and compute capability of CUDA device `index`: what a plan is tied to."""
    backend, reason = cuda_backend()
    if backend == "torch":
        import torch

        major, minor = torch.cuda.get_device_capability(index)
        return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
    if backend == "cuda-python":
        props = _ok(_cudart().cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
    raise VaekitError(reason)


class TorchBuffers:
    """Flat float32 CUDA tensors and one side stream, from torch."""

    def __init__(self, index: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        self.handle = int(self.stream.cuda_stream)

    def alloc(self, count: int) -> tuple[Any, int]:
        tensor = self.torch.empty(count, dtype=self.torch.float32, device=self.device)
        return tensor, int(tensor.data_ptr())

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buffer[: array.size].copy_(self.torch.from_numpy(array.reshape(-1)))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        self.stream.synchronize()
        return buffer[: math.prod(shape)].view(shape).cpu().numpy()


class CudaPythonBuffers:
    """The same with cuda-python: cudaMalloc'd buffers freed when the engine goes away."""

    def __init__(self, index: int) -> None:
        self.cudart = _cudart()
        _ok(self.cudart.cudaSetDevice(index))
        self.stream = _ok(self.cudart.cudaStreamCreate())
        self.handle = int(self.stream)
        self.pointers: list[Any] = []
        weakref.finalize(self, _free, self.cudart, self.pointers, self.stream)

    def alloc(self, count: int) -> tuple[Any, int]:
        pointer = _ok(self.cudart.cudaMalloc(count * 4))
        self.pointers.append(pointer)
        return pointer, int(pointer)

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _ok(self.cudart.cudaMemcpyAsync(buffer, array.ctypes.data, array.nbytes, kind, self.stream))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, dtype=np.float32)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ok(self.cudart.cudaMemcpyAsync(out.ctypes.data, buffer, out.nbytes, kind, self.stream))
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return out


def _free(cudart: Any, pointers: list[Any], stream: Any) -> None:
    for pointer in pointers:
        cudart.cudaFree(pointer)
    cudart.cudaStreamDestroy(stream)


def device_buffers(index: int) -> TorchBuffers | CudaPythonBuffers:
    """Buffers on CUDA device `index` from whichever CUDA binding is usable here."""
    backend, reason = cuda_backend()
    if not backend:
        raise VaekitError(reason)
    return TorchBuffers(index) if backend == "torch" else CudaPythonBuffers(index)
