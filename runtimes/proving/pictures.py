"""The parity PNG (reference | runtime | |difference|) that export publishes, with numpy + pillow only (an
edge box can draw it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.images import (
    RED,
    enlarge,
    frame_tiles,
    grid,
    labelled_rows,
    save_image,
    scale_to_width,
    titled,
)
from vaekit.runtimes.proving.parity import ParityReport, fixed_latents, typical_rows

PREVIEW_IMAGES = 16


def save_parity_png(report: ParityReport, value_range: tuple[float, float], path: Path) -> None:
    """One block per runtime: reference decodes, the runtime's decodes, and |difference| stretched to full
    scale; the tiles of stress latents (|z| = 4 in every dimension: fixed_latents puts +4, -4 and +-4
    first) are framed in red, as the title says, since they look nothing like data."""
    rows, stress = [], np.zeros(0, dtype=bool)
    for name, (ref_all, got_all) in report.previews.items():
        ref, got = ref_all[:PREVIEW_IMAGES], got_all[:PREVIEW_IMAGES]
        stress = _stress_tiles(report, len(ref))
        diff = np.abs(got - ref)
        peak = float(diff.max())
        lo, hi = value_range
        stretched = lo + diff / (peak if peak > 0 else 1.0) * (hi - lo)
        rows += [
            (f"reference ({report.reference.get('backend', '')})", ref),
            (name, got),
            (f"|difference| x{1 / peak if peak > 0 else 1:.3g} (max {peak:.2e})", stretched),
            _heatmap(ref_all, got_all, value_range),
        ]
    if not rows:
        return
    tile = rows[0][1].shape[2:]
    scale = scale_to_width(grid(rows[0][1], value_range, PREVIEW_IMAGES))
    marked = [
        (label, frame_tiles(enlarge(grid(x, value_range, PREVIEW_IMAGES), scale),
                            np.flatnonzero(stress).tolist() if len(x) == len(stress) else [],
                            PREVIEW_IMAGES, (tile[0], tile[1]), scale, RED))
        for label, x in rows
    ]  # fmt: skip
    title = "parity: reference | runtime | |difference|; red frame: stress latent (|z| = 4 in every dimension)"
    save_image(titled(labelled_rows(marked), title), path)


def _heatmap(ref: np.ndarray, got: np.ndarray, value_range: tuple[float, float]) -> tuple[str, np.ndarray]:
    """Where the error lives: |difference| averaged over every decoded image, stretched to full scale."""
    mean = np.abs(got - ref).mean(axis=0, keepdims=True)  # (1, C, H, W)
    peak = float(mean.max())
    lo, hi = value_range
    label = f"mean |difference| over {len(ref)} images, heatmap (max {peak:.2e})"
    return label, lo + mean / (peak if peak > 0 else 1.0) * (hi - lo)


def _stress_tiles(report: ParityReport, n: int) -> np.ndarray:
    """Which of the first n parity latents are stress latents (the rows parity judges as image_stress)."""
    latent_dim = int(report.reference.get("latent_dim", 0))
    if latent_dim < 1:
        return np.zeros(n, dtype=bool)
    return ~typical_rows(fixed_latents(max(n, report.n_latents), latent_dim))[:n]
