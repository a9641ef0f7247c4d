"""PNG grids and plots with numpy + pillow alone, so deploy-side commands can draw them too."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vaekit.fsutil import atomic_write_bytes

PAD = 2
LABEL_HEIGHT = 14
SERIES_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """float (N, C, H, W) in value_range -> uint8 (N, H, W, C); NaN shows as black."""
    lo, hi = value_range
    scaled = np.nan_to_num((images - lo) / (hi - lo), nan=0.0)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def grid(images: np.ndarray, value_range: tuple[float, float], ncol: int | None = None) -> Image.Image:
    """Tile (N, C, H, W) images into one picture, ncol per row (square-ish by default)."""
    tiles = to_uint8(images, value_range)
    n, h, w, c = tiles.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + PAD) + PAD, ncol * (w + PAD) + PAD, c), 64, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = PAD + r * (h + PAD), PAD + col * (w + PAD)
        canvas[y : y + h, x : x + w] = tiles[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def labelled_rows(rows: Sequence[tuple[str, Image.Image]]) -> Image.Image:
    """Stack pictures vertically, each under a one-line caption."""
    width = max(img.width for _, img in rows)
    height = sum(img.height + LABEL_HEIGHT for _, img in rows)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 0
    for label, img in rows:
        draw.text((2, y + 1), label, fill=(0, 0, 0), font=ImageFont.load_default())
        out.paste(img.convert("RGB"), (0, y + LABEL_HEIGHT))
        y += img.height + LABEL_HEIGHT
    return out


def upscale(img: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour enlarge small grids so a person can see the pixels."""
    factor = max(1, math.ceil(min_side / min(img.size)))
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def save_png(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def line_plot(
    series: Mapping[str, Sequence[float]], title: str, xlabel: str, size: tuple[int, int] = (640, 400)
) -> Image.Image:
    """A small line chart: one coloured line per series, y range from the data, legend top-right."""
    w, h = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, w - right, h - bottom), outline=(0, 0, 0))
    if not values:
        return img
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    n = max(len(s) for s in series.values())

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (w - left - right) * (i / max(1, n - 1))
        y = h - bottom - (h - top - bottom) * (v - lo) / (hi - lo)
        return x, y

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = xy(0, v)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((4, y - 6), f"{v:.4g}", fill=(0, 0, 0), font=font)
    draw.text(((w - right + left) // 2 - 20, h - bottom + 14), xlabel, fill=(0, 0, 0), font=font)
    draw.text((left, h - bottom + 4), "1", fill=(0, 0, 0), font=font)
    draw.text((w - right - 12, h - bottom + 4), str(n), fill=(0, 0, 0), font=font)
    for idx, (name, ys) in enumerate(series.items()):
        colour = SERIES_COLOURS[idx % len(SERIES_COLOURS)]
        pts = [xy(i, v) for i, v in enumerate(ys) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((w - right - 150, top + 6 + 14 * idx), f"-- {name}", fill=colour, font=font)
    return img
