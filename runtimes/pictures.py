"""Pictures of runtime reports, with numpy + pillow only (an edge box can draw them): the parity PNG
(reference | runtime | |difference|) that export publishes, and the bench chart of images/s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vaekit.images import (
    RED,
    SERIES_COLOURS,
    enlarge,
    frame_tiles,
    grid,
    labelled_rows,
    save_image,
    scale_to_width,
    titled,
)
from vaekit.runtimes.bench import BenchReport
from vaekit.runtimes.parity import ParityReport, fixed_latents, typical_rows

PREVIEW_IMAGES = 16
# The images module's four series colours, then four more: one colour per runtime + precision in a chart.
COLOURS = (*SERIES_COLOURS, (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


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


def bench_chart(report: BenchReport) -> Image.Image:
    """One panel per (graph, batch size): a bar of images/s for each runtime and precision."""
    font = ImageFont.load_default()
    measured = [r for r in report.rows if r.images_per_s]
    panels = sorted({(r.graph, r.batch) for r in measured})
    labels = sorted({f"{r.runtime} {r.precision}" for r in measured})
    bar, gap, label_w, width = 16, 4, 190, 760
    panel_h = 22 + len(labels) * (bar + gap)
    img = Image.new("RGB", (width, max(1, len(panels)) * (panel_h + 10) + 10), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for p, (graph, batch) in enumerate(panels):
        top = 10 + p * (panel_h + 10)
        rows = {f"{r.runtime} {r.precision}": r for r in measured if (r.graph, r.batch) == (graph, batch)}
        best = max(r.images_per_s for r in rows.values())
        draw.text((10, top), f"{graph}, batch {batch}: images/s (longer is faster)", fill=(0, 0, 0), font=font)
        for i, label in enumerate(labels):
            y = top + 20 + i * (bar + gap)
            draw.text((10, y + 2), label, fill=(0, 0, 0), font=font)
            row = rows.get(label)
            if row is None:
                continue
            length = int((width - label_w - 90) * row.images_per_s / best)
            colour = COLOURS[labels.index(label) % len(COLOURS)]
            draw.rectangle((label_w, y, label_w + max(1, length), y + bar), fill=colour)
            draw.text((label_w + length + 6, y + 2), f"{row.images_per_s:,.0f}", fill=(0, 0, 0), font=font)
    return img
