"""Sampling, interpolation, traversals and reconstruction through any runtime (numpy only, no torch)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vaekit.errors import VaekitError
from vaekit.images import check_count, picture, prior_latents, sample_picture
from vaekit.runtimes.base import Decoder, Encoder, in_batches

TRAVERSE_SPAN = 3.0  # traversals sweep each latent over [-3, 3] standard deviations of the prior
AT_ZERO = "stay 0"  # where the other latents of a traversal stay unless a caller gives a centre
__all__ = ["prior_latents"]  # core's one rule for the latents of sample pictures, re-exported for callers here


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation: stays where prior samples live (norm ~ sqrt(D)), unlike a straight line."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    if omega < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    return ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)).astype(np.float32)


def interpolation_latents(rows: int, steps: int, latent_dim: int, seed: int) -> np.ndarray:
    """rows x steps latents: row r goes from prior sample 2r to prior sample 2r+1 (seeded)."""
    if steps < 2 or rows < 1:
        raise VaekitError(f"--interpolate needs >= 2 steps and >= 1 row, got {steps} steps, {rows} rows")
    ends = prior_latents(2 * rows, latent_dim, seed)
    return np.concatenate([slerp(ends[2 * r], ends[2 * r + 1], steps) for r in range(rows)])


def decode_all(decoder: Decoder, z: np.ndarray) -> np.ndarray:
    images = in_batches(decoder.decode, z, decoder.info.max_batch)
    broken = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if broken.any():
        raise VaekitError(
            f"{decoder.info.path or decoder.info.name} decoded {int(broken.sum())} of {len(images)} latents to "
            "NaN or Inf: the artifact is damaged"
        )
    return images


def top_dimensions(decoder: Decoder, count: int) -> list[int]:
    """The latent dimensions that change the decoded image most when moved (decoder-only, no data needed)."""
    d = decoder.info.latent_dim
    probe = np.zeros((2 * d, d), dtype=np.float32)
    for i in range(d):
        probe[2 * i, i], probe[2 * i + 1, i] = -2.0, 2.0
    images = decode_all(decoder, probe)
    effect = np.abs(images[0::2] - images[1::2]).reshape(d, -1).mean(axis=1)
    return [int(i) for i in np.argsort(-effect)[: min(count, d)]]


def traversal_latents(
    decoder: Decoder, rows: int, steps: int, order: list[int] | None = None, centre: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """One row per dimension, sweeping it over [-3, 3] with the others at `centre` (default 0): the first
    `rows` of `order`, or without one the dimensions that change the image most."""
    if steps < 2 or rows < 1:
        raise VaekitError(f"--traverse needs >= 2 steps and >= 1 row, got {steps} steps, {rows} rows")
    dims = order[:rows] if order else top_dimensions(decoder, rows)
    z = np.zeros((len(dims) * steps, decoder.info.latent_dim), dtype=np.float32)
    if centre is not None:
        z[:] = centre
    sweep = np.linspace(-TRAVERSE_SPAN, TRAVERSE_SPAN, steps, dtype=np.float32)
    for r, dim in enumerate(dims):
        z[r * steps : (r + 1) * steps, dim] = sweep
    return z, dims


def check_pair(encoder: Encoder, decoder: Decoder) -> None:
    e, d = encoder.info, decoder.info
    if e.latent_dim != d.latent_dim or e.image_shape != d.image_shape:
        raise VaekitError(
            f"encoder ({e.image_shape} -> {e.latent_dim}) and decoder ({d.latent_dim} -> {d.image_shape}) do not fit"
        )
    if e.source_sha256 and d.source_sha256 and e.source_sha256 != d.source_sha256:
        raise VaekitError("encoder and decoder come from different checkpoints (checkpoint_sha256 differs)")


def reconstruct(encoder: Encoder, decoder: Decoder, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Decode the posterior mean of each image; returns (reconstructions, mean PSNR in dB)."""
    check_pair(encoder, decoder)
    mu, _ = in_batches(encoder.encode, images, encoder.info.max_batch)
    recon = decode_all(decoder, mu)
    lo, hi = decoder.info.value_range
    mse = ((recon - images) ** 2).reshape(len(images), -1).mean(axis=1)
    psnr = float(np.mean(10 * np.log10((hi - lo) ** 2 / np.maximum(mse, 1e-12))))
    return recon, psnr


def picture_latents(
    decoder: Decoder,
    n: int,
    seed: int,
    interpolate: int | None,
    traverse: int | None,
    order: list[int] | None = None,
    centre: np.ndarray | None = None,
) -> tuple[np.ndarray, int | None, list[int]]:
    """The latents `vaekit generate` decodes: prior samples, or n // K rows of K interpolation or traversal
    steps (traversals of `order`'s dimensions around `centre` when given). Returns (z, columns per row or
    None for a square grid, the traversed dimensions)."""
    check_count(n)
    if interpolate is not None and traverse is not None:
        raise VaekitError("--interpolate and --traverse are separate pictures: pick one")
    steps = interpolate if interpolate is not None else traverse
    if steps is not None and steps < 2:
        raise VaekitError(f"--interpolate/--traverse needs >= 2 steps, got {steps}")
    d = decoder.info.latent_dim
    if interpolate is not None:
        return interpolation_latents(max(1, n // interpolate), interpolate, d, seed), interpolate, []
    if traverse is not None:
        z, dims = traversal_latents(decoder, max(1, n // traverse), traverse, order, centre)
        return z, traverse, dims
    return prior_latents(n, d, seed), None, []


def generate_picture(
    images: np.ndarray,
    value_range: tuple[float, float],
    seed: int,
    ncol: int | None,
    row_labels: list[str],
    others: str = AT_ZERO,
) -> Image.Image:
    """What `vaekit generate` writes for picture_latents' output: samples as training's samples.png draws
    them (same seed, same picture), or titled rows of interpolations, or traversals with a label per row."""
    if row_labels:
        span = f"[-{TRAVERSE_SPAN:g}, {TRAVERSE_SPAN:g}]"
        title = f"traversals: each row moves one latent dimension over {span}, the others {others}"
        return picture(images, value_range, title, ncol, row_labels)
    if ncol:
        return picture(images, value_range, f"interpolations (slerp) between pairs of prior samples, seed {seed}", ncol)
    return sample_picture(images, value_range, seed)
