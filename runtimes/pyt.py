"""PyTorch backend: the trained checkpoint itself, eval mode, fp32 — the parity reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vaekit.checkpoint import load_model, resolve_run
from vaekit.fsutil import sha256_file
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

UNBOUNDED_BATCH = 1 << 16  # eager PyTorch has no engine profile; this only bounds a single call


def _info(path: Path, role: str, device: str) -> tuple[torch.nn.Module, ArtifactInfo]:
    model, cfg = load_model(path, device)
    weights = resolve_run(path)[1]
    info = ArtifactInfo(
        role=role,
        latent_dim=cfg.model.latent_dim,
        image_shape=cfg.model.image_shape,
        value_range=cfg.model.value_range,
        likelihood=cfg.model.likelihood,
        precision="fp32",
        backend="pytorch",
        device=torch.device(device).type,
        max_batch=UNBOUNDED_BATCH,
        source_sha256=sha256_file(weights),
        path=str(path),
        extra={"vaekit_version": cfg.version},
    )
    return model, info


class TorchEncoder(Encoder):
    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.model, self.info = _info(path, "encoder", device)
        self.device = device

    @torch.no_grad()
    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.model.encode(torch.from_numpy(images).to(self.device))  # type: ignore[operator]
        return mu.cpu().numpy(), log_var.cpu().numpy()


class TorchDecoder(Decoder):
    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.model, self.info = _info(path, "decoder", device)
        self.device = device

    @torch.no_grad()
    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.model.decode(torch.from_numpy(z).to(self.device)).cpu().numpy()  # type: ignore[operator]
