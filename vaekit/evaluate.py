"""Honest numbers in nats per image: the negative ELBO and the importance-weighted (IWAE) NLL bound.

Whatever weights trained the model (beta, capacity, kld_weight), these use the plain ELBO with the
decoder's likelihood summed over pixels, so they compare with the literature.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vaekit.config import ModelConfig
from vaekit.model import VAE, kl_divergence

EVAL_CHUNK = 4096  # decoder rows (samples x images) per forward pass


def _log_normal(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mu) ** 2) / log_var.exp() + log_var + math.log(2 * math.pi)).sum(dim=-1)


def to_tensor(images: np.ndarray, cfg: ModelConfig, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float tensor in the model's value range."""
    lo, hi = cfg.value_range
    return torch.from_numpy(images).to(device).float().div_(255.0).mul_(hi - lo).add_(lo)


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
        z = mu + (0.5 * log_var).exp() * eps  # (K, B, D)
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
