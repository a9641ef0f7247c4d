"""PyTorch backend: the trained checkpoint itself, eval mode, fp32 — the parity reference.

`compile=True` runs the same module through torch.compile (inductor): the first call per shape compiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import Role
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

if TYPE_CHECKING:
    from vaekit.config import RunConfig
    from vaekit.model import VAE

UNBOUNDED_BATCH = 1 << 16  # eager PyTorch has no engine profile; this only bounds a single call
LABEL = "pytorch"


def status(device: str) -> str:
    try:
        import torch
    except ImportError:
        return "PyTorch not installed (pip install 'vaekit[train]')"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return ""


def _require(device: str) -> None:
    missing = status(device)
    if missing:
        raise VaekitError(f"the PyTorch runtime cannot run on {device}: {missing}")


def model_info(cfg: RunConfig, role: Role, device: str, source_sha256: str, path: str) -> ArtifactInfo:
    m = cfg.model
    return ArtifactInfo(
        role=role,
        latent_dim=m.latent_dim,
        image_shape=m.image_shape,
        value_range=m.value_range,
        likelihood=m.likelihood,
        precision="fp32",
        backend=LABEL,
        device=device.split(":")[0],
        max_batch=UNBOUNDED_BATCH,
        source_sha256=source_sha256,
        path=path,
        extra={"vaekit_version": cfg.version},
    )


class TorchRunner:
    """Both directions of one in-memory model; the Encoder/Decoder below are views of it."""

    def __init__(self, model: VAE, device: str, compile: bool = False) -> None:
        import torch

        self.torch = torch
        self.model, self.device = model.to(device).eval(), device
        self.encode_fn: Any = torch.compile(model.encode) if compile else model.encode
        self.decode_fn: Any = torch.compile(model.decode) if compile else model.decode

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad():
            mu, log_var = self.encode_fn(self.torch.from_numpy(images).to(self.device))
        return mu.cpu().numpy(), log_var.cpu().numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return np.asarray(self.decode_fn(self.torch.from_numpy(z).to(self.device)).cpu().numpy())


class TorchEncoder(Encoder):
    def __init__(self, runner: TorchRunner, info: ArtifactInfo) -> None:
        self.runner, self.info = runner, info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.encode(images)


class TorchDecoder(Decoder):
    def __init__(self, runner: TorchRunner, info: ArtifactInfo) -> None:
        self.runner, self.info = runner, info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.decode(z)


def from_model(
    model: VAE, cfg: RunConfig, source_sha256: str, path: str = "", device: str = "cpu", compile: bool = False
) -> tuple[TorchEncoder, TorchDecoder]:
    """Encoder and decoder over a model already in memory (export loads the weights once and passes them on)."""
    runner = TorchRunner(model, device, compile)
    return (
        TorchEncoder(runner, model_info(cfg, "encoder", device, source_sha256, path)),
        TorchDecoder(runner, model_info(cfg, "decoder", device, source_sha256, path)),
    )


def load(path: Path, role: Role, device: str, compile: bool = False) -> Encoder | Decoder:
    _require(device)
    from vaekit.checkpoint import load_run

    run = load_run(path, device)
    encoder, decoder = from_model(run.model, run.cfg, run.sha256, str(path), device, compile)
    return encoder if role == "encoder" else decoder


def describe(path: Path) -> ArtifactInfo:
    _require("cpu")
    from vaekit.checkpoint import load_run

    run = load_run(path)
    return model_info(run.cfg, "decoder", "cpu", run.sha256, str(path))
