"""The one interface every runtime implements: numpy in, numpy out, inputs checked once here.

Backends (pyt, onnxrt, trt; see `registry`) subclass `Encoder`/`Decoder` and implement only
`_encode`/`_decode`, as Polygraphy's runners implement `infer_impl` behind `BaseRunner.infer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import Role

T = TypeVar("T")


class InputError(VaekitError, ValueError):
    """Wrong shape, dtype or values for an artifact: a ValueError to library callers, one line in the CLI."""


@dataclass(frozen=True)
class ArtifactInfo:
    role: Role
    latent_dim: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    value_range: tuple[float, float]
    likelihood: str
    precision: str  # fp32 | fp16 | int8: what the graph computes in
    backend: str  # what tables show: pytorch | onnxruntime | tensorrt
    device: str  # cpu | cuda
    max_batch: int
    source_sha256: str = ""  # sha256 of the checkpoint the artifact came from
    path: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short label for tables: backend/device/precision."""
        return f"{self.backend}-{self.device}-{self.precision}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Metadata `vaekit info` shows beside the shapes: provenance, and what a precision graph kept or rewrote.
DESCRIBED = (
    "vaekit_version",
    "int8_scheme",
    "int8_target",
    "export_time",
    "opset",
    "tensorrt_version",
    "graph",
    "cpu_rewrites",
    "web_rewrites",
    "fp16_blocked_nodes",
    "fp16_min_headroom",
)


def metadata_to_info(meta: dict[str, str], *, backend: str, device: str, path: str) -> ArtifactInfo:
    """Rebuild ArtifactInfo from the string metadata stored in an ONNX graph or an engine sidecar."""
    try:
        shape = json.loads(meta["image_shape"])
        lo, hi = json.loads(meta["value_range"])
        role = meta["role"]
        if role not in ("encoder", "decoder"):
            raise ValueError(f"role {role!r}")
        return ArtifactInfo(
            role=role,
            latent_dim=int(meta["latent_dim"]),
            image_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            value_range=(float(lo), float(hi)),
            likelihood=meta.get("likelihood", ""),
            precision=meta.get("precision", "fp32"),
            backend=backend,
            device=device,
            max_batch=int(meta["max_batch"]),
            source_sha256=meta.get("checkpoint_sha256", ""),
            path=path,
            extra={k: v for k, v in meta.items() if k in DESCRIBED},
        )
    except (KeyError, ValueError, TypeError, IndexError, OverflowError, RecursionError) as exc:  # 1e999, [[[...
        raise VaekitError(f"{path} is not a vaekit artifact: its metadata is missing or bad ({exc})") from None


def _check(array: object, expected: tuple[int, ...], what: str, max_batch: int) -> np.ndarray:
    shape = "(N, " + ", ".join(str(d) for d in expected) + ")"
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what} must be a numpy array of shape {shape}, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise InputError(f"{what} must be float32, got {array.dtype} (shape {shape})")
    if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != expected:
        raise InputError(f"{what} must have shape {shape}, got {tuple(array.shape)}")
    n = array.shape[0]
    if not 1 <= n <= max_batch:
        raise InputError(f"{what}: batch {n} is outside this artifact's range 1..{max_batch}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} contains NaN or Inf")
    return np.ascontiguousarray(array)


class Encoder:
    info: ArtifactInfo

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 in the value range -> mu, log_var, each (N, latent_dim) float32."""
        x = _check(images, self.info.image_shape, "images", self.info.max_batch)
        mu, log_var = self._encode(x)
        return np.asarray(mu, dtype=np.float32), np.asarray(log_var, dtype=np.float32)

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class Decoder:
    info: ArtifactInfo

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(N, latent_dim) float32 -> (N, C, H, W) float32 images in the value range."""
        x = _check(z, (self.info.latent_dim,), "z", self.info.max_batch)
        return np.asarray(self._decode(x), dtype=np.float32)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def in_batches(fn: Callable[[np.ndarray], T], array: np.ndarray, max_batch: int) -> T:
    """Apply fn to chunks of at most max_batch rows and concatenate (each output or tuple of outputs)."""
    parts = [fn(array[i : i + max_batch]) for i in range(0, len(array), max_batch)]
    if isinstance(parts[0], tuple):
        return cast(T, tuple(np.concatenate(p) for p in zip(*parts, strict=True)))
    return cast(T, np.concatenate(cast(list[np.ndarray], parts)))
