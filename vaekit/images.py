"""Pictures with numpy + pillow alone, so deploy-side commands draw them too: image grids with a title and
captions, the loss curve, and the one rule that draws the latents of a sample picture."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes

PAD = 2
Colour = tuple[int, int, int]
SERIES_COLOURS: tuple[Colour, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
WHITE, BLACK, GREY, LIGHT, RED = (255, 255, 255), (0, 0, 0), (110, 110, 110), (225, 225, 225), (220, 30, 30)
ROW_WIDTH = 1400  # pixels a strip of tiles (reconstructions, parity) is enlarged to, about
CAPTION_SIZE, TITLE_SIZE, SMALL_SIZE = 13, 16, 10  # font pixels; SMALL_SIZE captions rows under 64 px
# The suffix of an output path decides its format; anything else is refused in one line.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def font(size: int = CAPTION_SIZE) -> Font:
    """Pillow's own font at `size` pixels (its fixed bitmap font where Pillow has no FreeType)."""
    return ImageFont.load_default(size=size)


def check_count(n: int) -> None:
    """--n, the number of pictures a command draws: the one place it is checked."""
    if n < 1:
        raise VaekitError(f"--n must be >= 1, got {n}")


def prior_latents(n: int, latent_dim: int, seed: int) -> np.ndarray:
    """z ~ N(0, I) for sample pictures, drawn by one rule (numpy's default_rng) wherever they are drawn:
    training's samples.png and `vaekit generate --seed S` of the same run show the same images."""
    check_count(n)
    return np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)


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


def tile_box(index: int, ncol: int, tile: tuple[int, int], scale: int = 1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of tile `index` in a `grid` of (h, w) tiles enlarged `scale` times."""
    r, col = divmod(index, ncol)
    h, w = tile
    x, y = PAD + col * (w + PAD), PAD + r * (h + PAD)
    return x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1


def scale_for(img: Image.Image, min_side: int) -> int:
    return max(1, math.ceil(min_side / min(img.size)))


def scale_to_width(img: Image.Image, width: int = ROW_WIDTH) -> int:
    """The whole factor that enlarges a long strip of tiles to about `width` pixels (never shrinks it)."""
    return max(1, width // img.width)


def enlarge(img: Image.Image, scale: int) -> Image.Image:
    """Nearest-neighbour: every pixel becomes a scale x scale block, as sharp as the original."""
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def upscale(img: Image.Image, min_side: int = 256) -> Image.Image:
    """Enlarge small grids so a person can see the pixels."""
    return enlarge(img, scale_for(img, min_side))


def frame_tiles(
    img: Image.Image, indices: Sequence[int], ncol: int, tile: tuple[int, int], scale: int, colour: Colour
) -> Image.Image:
    """Draw a frame in the gap around some tiles of an enlarged `grid` (marks stress inputs, say)."""
    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    for i in indices:
        left, top, right, bottom = tile_box(i, ncol, tile, scale)
        draw.rectangle((left - scale, top - scale, right + scale, bottom + scale), outline=colour, width=scale)
    return out


def titled(img: Image.Image, title: str) -> Image.Image:
    """The picture under a one-line title (grids say what they show without a file name to explain them)."""
    f = font(TITLE_SIZE)
    band = TITLE_SIZE + 12
    out = Image.new("RGB", (max(img.width, int(f.getlength(title)) + 16), img.height + band), WHITE)
    ImageDraw.Draw(out).text((8, 6), title, fill=BLACK, font=f)
    out.paste(img.convert("RGB"), (0, band))
    return out


def labelled_rows(rows: Sequence[tuple[str, Image.Image]], scale: int = 1) -> Image.Image:
    """Stack pictures vertically, each enlarged `scale` times under a one-line caption (in a small font
    when the rows are small, which a caller may still enlarge as a whole)."""
    scaled = [(label, enlarge(img, scale)) for label, img in rows]
    size = CAPTION_SIZE if min(img.height for _, img in scaled) >= 64 else SMALL_SIZE
    f, band = font(size), size + 6
    width = max(max(img.width, int(f.getlength(label)) + 6) for label, img in scaled)
    out = Image.new("RGB", (width, sum(img.height + band for _, img in scaled)), WHITE)
    draw = ImageDraw.Draw(out)
    y = 0
    for label, img in scaled:
        draw.text((3, y + 2), label, fill=BLACK, font=f)
        out.paste(img.convert("RGB"), (0, y + band))
        y += img.height + band
    return out


def row_labelled(img: Image.Image, labels: Sequence[str], tile_height: int, scale: int) -> Image.Image:
    """A scaled grid with a label left of each row ("dim 3"), centred on the row."""
    f = font(CAPTION_SIZE)
    margin = max(int(f.getlength(label)) for label in labels) + 12
    out = Image.new("RGB", (img.width + margin, img.height), WHITE)
    out.paste(img.convert("RGB"), (margin, 0))
    draw = ImageDraw.Draw(out)
    for r, label in enumerate(labels):
        centre = (PAD + r * (tile_height + PAD) + tile_height / 2) * scale
        draw.text((6, centre - CAPTION_SIZE / 2 - 2), label, fill=BLACK, font=f)
    return out


def picture(
    images: np.ndarray,
    value_range: tuple[float, float],
    title: str,
    ncol: int | None = None,
    row_labels: Sequence[str] = (),
    min_side: int = 512,
) -> Image.Image:
    """A grid enlarged to about `min_side` pixels, its rows labelled when labels are given, under a title."""
    small = grid(images, value_range, ncol)
    scale = scale_for(small, min_side)
    img = enlarge(small, scale)
    if row_labels:
        img = row_labelled(img, row_labels, images.shape[2], scale)
    return titled(img, title)


def sample_picture(images: np.ndarray, value_range: tuple[float, float], seed: int) -> Image.Image:
    """Decodes of `prior_latents(n, D, seed)`: training's samples.png and `vaekit generate` draw the same one."""
    return picture(images, value_range, f"{len(images)} samples, z ~ N(0, I) with seed {seed}")


def reconstruction_picture(
    inputs: np.ndarray, recon: np.ndarray, value_range: tuple[float, float], epoch: int
) -> Image.Image:
    """Test images above the decodes of their mu, 16 a row: training's reconstructions.png."""
    rows = [("test images", grid(inputs, value_range, 16)), ("decoded mu", grid(recon, value_range, 16))]
    return titled(labelled_rows(rows, scale_to_width(rows[0][1])), f"reconstructions after epoch {epoch}")


def loss_picture(history: Sequence[Mapping[str, float]], in_nats: bool) -> Image.Image:
    """Training's loss.png from metrics rows: test -ELBO, and the training loss when it is in nats too
    (the Gaussian's training loss is an MSE: another unit, so it stays off this axis)."""
    curves = {"test -ELBO": [row["test_neg_elbo"] for row in history]}
    if in_nats:
        curves = {"train loss": [row["train_loss"] for row in history], **curves}
    return line_plot(curves, "negative ELBO per epoch (lower is better)", "nats / image")


def image_format(path: Path) -> str:
    """The format an output path's suffix names (PIL's name), or one line saying which suffixes work."""
    path = Path(path)
    if path.is_dir():  # the errno's words, as writing there would have said them
        raise VaekitError(f"cannot write a picture to {path}: Is a directory (name a file: {path / 'samples.png'})")
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VaekitError(f"cannot write a picture to {path}: end the name in {', '.join(IMAGE_FORMATS)}")
    return fmt


def save_image(img: Image.Image, path: Path) -> None:
    """Write img atomically in the format the suffix of path names (x.jpg holds JPEG bytes, not PNG)."""
    fmt = image_format(path)
    if fmt == "JPEG" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    # zlib level 1 for PNG: half the time of the default 6 for ~5 % more bytes (training redraws its previews)
    options = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {"compress_level": 1}}.get(fmt, {})
    img.save(buf, format=fmt, **options)
    atomic_write_bytes(Path(path), buf.getvalue())


def nice_step(span: float, count: int) -> float:
    """The 1-2-5 step (..., 0.5, 1, 2, 5, 10, ...) that cuts span into about `count` pieces."""
    raw = span / max(1, count)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: the first at or below lo, the last at or above hi."""
    step = nice_step(hi - lo, count)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def epoch_ticks(n: int) -> list[int]:
    """x ticks for epochs 1..n: every epoch when few, else multiples of a 1-2-5 step (and 1 when it fits)."""
    step = max(1, int(nice_step(max(1, n - 1), 8)))
    ticks = [k for k in range(step, n + 1, step)]
    return [1, *ticks] if not ticks or ticks[0] - 1 >= 0.75 * step else ticks


def _fmt(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{v:.{decimals}f}"


def line_plot(
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    xlabel: str = "epoch",
    size: tuple[int, int] = (720, 440),
) -> Image.Image:
    """A line chart for a report: 1-2-5 y ticks with light grid lines, epoch ticks, both axes labelled,
    margins so no point touches the frame, and a legend that gives each series' last value."""
    w, h = size
    left, right, top, bottom = 78, 24, 44, 52
    img = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), title, fill=BLACK, font=font(TITLE_SIZE))
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    n = max((len(s) for s in series.values()), default=0)
    if not values or not n:
        draw.text((left, top + 10), "no finite values to plot", fill=GREY, font=font())
        return img
    lo, hi = min(values), max(values)
    pad = 0.06 * (hi - lo) if hi > lo else max(1.0, abs(lo) * 0.05)
    yticks = nice_ticks(lo - pad, hi + pad)
    y0, y1 = yticks[0], yticks[-1]
    x_margin = max(0.5, 0.03 * (n - 1))
    x0, x1 = 1 - x_margin, n + x_margin

    def xy(epoch: float, v: float) -> tuple[float, float]:
        return left + (w - left - right) * (epoch - x0) / (x1 - x0), h - bottom - (h - top - bottom) * (v - y0) / (
            y1 - y0
        )

    step = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    for v in yticks:
        _, y = xy(x0, v)
        draw.line((left, y, w - right, y), fill=LIGHT)
        label = _fmt(v, step)
        draw.text((left - 8 - font().getlength(label), y - 8), label, fill=BLACK, font=font())
    for epoch in epoch_ticks(n):
        x, _ = xy(epoch, y0)
        draw.line((x, h - bottom, x, h - bottom + 5), fill=BLACK)
        draw.text((x - font().getlength(str(epoch)) / 2, h - bottom + 8), str(epoch), fill=BLACK, font=font())
    draw.rectangle((left, top, w - right, h - bottom), outline=BLACK)
    draw.text(((left + w - right - font().getlength(xlabel)) / 2, h - 22), xlabel, fill=BLACK, font=font())
    _vertical_label(img, ylabel, (6, (top + h - bottom) // 2))
    _draw_series(draw, series, xy)
    _legend(draw, series, (w - right - 10, top + 10))
    return img


def _draw_series(
    draw: ImageDraw.ImageDraw, series: Mapping[str, Sequence[float]], xy: Callable[[float, float], tuple[float, float]]
) -> None:
    for idx, ys in enumerate(series.values()):
        colour = SERIES_COLOURS[idx % len(SERIES_COLOURS)]
        pts = [xy(i + 1, v) for i, v in enumerate(ys) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def _legend(draw: ImageDraw.ImageDraw, series: Mapping[str, Sequence[float]], top_right: tuple[int, int]) -> None:
    f = font()
    finite = {name: [v for v in ys if math.isfinite(v)] for name, ys in series.items()}
    labels = [f"{name} (last {ys[-1]:.1f})" if ys else name for name, ys in finite.items()]
    width = max(int(f.getlength(label)) for label in labels) + 40
    x, y = top_right[0] - width, top_right[1]
    draw.rectangle((x, y, top_right[0], y + 20 * len(labels) + 6), fill=WHITE, outline=LIGHT)
    for idx, label in enumerate(labels):
        colour = SERIES_COLOURS[idx % len(SERIES_COLOURS)]
        ly = y + 13 + 20 * idx
        draw.line((x + 8, ly, x + 28, ly), fill=colour, width=2)
        draw.text((x + 34, ly - 8), label, fill=BLACK, font=f)


def _vertical_label(img: Image.Image, text: str, left_centre: tuple[int, int]) -> None:
    f = font()
    strip = Image.new("RGB", (int(f.getlength(text)) + 4, CAPTION_SIZE + 6), WHITE)
    ImageDraw.Draw(strip).text((2, 1), text, fill=BLACK, font=f)
    turned = strip.rotate(90, expand=True)
    img.paste(turned, (left_centre[0], left_centre[1] - turned.height // 2))
