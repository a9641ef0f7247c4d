"""Honest numbers in nats per image: the negative ELBO and the importance-weighted (IWAE) NLL bound.

Whatever weights trained the model (beta, capacity, kld_weight), these use the plain ELBO with the
decoder's likelihood summed over pixels, so they compare with the literature.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaekit.checkpoint import load_model
from vaekit.config import ModelConfig
from vaekit.data import load_data, to_float
from vaekit.disentangle import Disentanglement, factor_data, score
from vaekit.errors import UsageError, VaekitError
from vaekit.model import VAE, kl_divergence, pick_device

EVAL_CHUNK = 4096  # decoder rows (samples x images) per forward pass


def _log_normal(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mu) ** 2) / log_var.exp() + log_var + math.log(2 * math.pi)).sum(dim=-1)


def to_tensor(images: np.ndarray, cfg: ModelConfig, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float tensor in the model's value range (the one conversion, data.to_float)."""
    return torch.from_numpy(to_float(images, cfg.value_range)).to(device)


@torch.no_grad()
def evaluate(
    model: VAE,
    images: np.ndarray,
    iwae_samples: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """neg_elbo = recon + kld (recon averaged over the K posterior samples); iwae_nll uses the same samples."""
    if iwae_samples < 1:
        raise ValueError("iwae_samples must be >= 1")
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k = iwae_samples
    batch = max(1, EVAL_CHUNK // k)
    totals = {"recon": 0.0, "kld": 0.0, "iwae_nll": 0.0}
    for start in range(0, len(images), batch):
        x = to_tensor(images[start : start + batch], model.cfg, device)
        b = x.shape[0]
        mu, log_var = model.encode(x)
        eps = torch.randn(k, b, mu.shape[1], generator=gen).to(device)
        z = model.reparameterize(mu, log_var, eps)  # (K, B, D)
        raw = model.decode_raw(z.reshape(k * b, -1))
        log_px = -model.recon_nll(raw, x.repeat(k, 1, 1, 1)).view(k, b)
        log_w = log_px + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - _log_normal(z, mu, log_var)
        iwae = -(torch.logsumexp(log_w, dim=0) - math.log(k))
        totals["recon"] += float(-log_px.mean(dim=0).sum())
        totals["kld"] += float(kl_divergence(mu, log_var).sum())
        totals["iwae_nll"] += float(iwae.sum())
    n = len(images)
    out = {key: value / n for key, value in totals.items()}
    out["neg_elbo"] = out["recon"] + out["kld"]
    out["iwae_samples"] = k
    out["n_images"] = n
    p = model.cfg.pad
    out["pixels_counted"] = model.cfg.in_channels * (model.cfg.image_size - 2 * p) ** 2
    return out


def evaluate_run(
    checkpoint: Path, data: str | None, split: str, iwae_samples: int, limit: int | None, seed: int, device: str
) -> dict[str, float | str]:
    """`vaekit eval`: a run's checkpoint scored on a split of its data (or another spec of the same padding)."""
    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train, got {split!r}")
    if iwae_samples < 1 or (limit is not None and limit < 1):
        raise UsageError("--iwae-samples and --limit must be >= 1")
    dev = pick_device(device)
    model, cfg = load_model(checkpoint, dev)
    d = load_data(data or cfg.train.data, cfg.model.image_size, cfg.model.in_channels, cfg.train.test_fraction)
    if d.pad != cfg.model.pad:
        raise VaekitError(f"this data is padded by {d.pad}px but the model was trained with {cfg.model.pad}px")
    images = (d.test if split == "test" else d.train)[:limit]
    result: dict[str, float | str] = {**evaluate(model, images, iwae_samples=iwae_samples, seed=seed, device=dev)}
    result["split"] = split
    return result


@torch.no_grad()
def encode_all(model: VAE, images: np.ndarray, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """mu and log_var (N, D) of every image, EVAL_CHUNK at a time."""
    model.eval()
    mus, log_vars = [], []
    for start in range(0, len(images), EVAL_CHUNK):
        mu, log_var = model.encode(to_tensor(images[start : start + EVAL_CHUNK], model.cfg, device))
        mus.append(mu)
        log_vars.append(log_var)
    return torch.cat(mus).cpu().numpy(), torch.cat(log_vars).cpu().numpy()


def disentanglement_run(checkpoint: Path, data: str | None, device: str) -> Disentanglement:
    """`vaekit eval --disentanglement`: MIG and SAP of a run's posterior means over every image of its data."""
    dev = pick_device(device)
    model, cfg = load_model(checkpoint, dev)
    d = factor_data(data or cfg.train.data, cfg.model.image_size)
    if d.images.shape[1:] != cfg.model.image_shape or cfg.model.pad:
        raise VaekitError(f"this data's images are {d.images.shape[1:]}, the model takes {cfg.model.image_shape}")
    mu, log_var = encode_all(model, d.images, dev)
    return score(mu, log_var, d.factors, d.names)
