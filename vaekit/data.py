"""Datasets as uint8 (N, C, H, W) arrays: numpy + pillow only, so deploy-side commands can read data too.

Sources (the `--data` spec): `digits` (scikit-learn's bundled 8x8 digits, offline), `shapes`
(procedural dSprites-style, with known factors), `mnist:DIR` (IDX files), `folder:DIR` (any images).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import shutil
import struct
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vaekit.errors import VaekitError
from vaekit.extras import install_hint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_SEED = 0x5EED  # fixed, so the train/test split never depends on the training seed
MNIST_SIZE = 28
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Pillow decoders a folder dataset may use: a file named .png is never handed to an exotic plugin (EPS runs
# Ghostscript) because its bytes say so.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # the decoders of IMAGE_SUFFIXES
# The most pixels one image may decode to (a JPEG's reduced-size draft counts, not its full size): 2**25, an
# 8192x4096 frame (8K video fits). A VAE trains at a few hundred pixels a side, so anything larger is a poster
# scan or a decompression bomb; at <= 4 bytes a decoded pixel that bounds one image at 128 MiB (+ its RGB copy).
MAX_IMAGE_PIXELS = 2**25
SKIPPED_SHOWN = 3  # file names the skip warning gives before "and N more"
# DEFLATE expands at most 1032:1, so a gzipped IDX whose header declares more bytes than that cannot hold them:
# refused before anything is decompressed into memory.
DEFLATE_MAX_RATIO = 1032
IDX_MAX_DIMS = 32  # numpy 1.x's limit on array dimensions; MNIST's files have 1 or 3
READ_CHUNK = 1 << 20
SHAPES = ("square", "ellipse", "heart")
SHAPE_FACTORS = ("shape", "scale", "rotation", "x", "y")  # the columns of render_shapes' factor table
SHAPE_SCALES = np.linspace(0.5, 1.0, 6)
SHAPE_ROTATIONS = np.linspace(0.0, 2 * np.pi, 8, endpoint=False)
SHAPE_POSITIONS = np.linspace(0.0, 1.0, 8)


class SkippedImagesWarning(UserWarning):
    """Files of a folder dataset that could not be decoded (or are over MAX_IMAGE_PIXELS) were left out."""


@dataclass
class ImageData:
    train: np.ndarray  # uint8 (N, C, H, W)
    test: np.ndarray
    pad: int = 0  # zero border added around the source images
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # folder files left out, with why

    @property
    def channels(self) -> int:
        return int(self.train.shape[1])


def to_float(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 -> float32 in the model's value range ([0, 1] Bernoulli, [-1, 1] Gaussian)."""
    lo, hi = value_range
    return (images.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)


def load_data(
    spec: str, image_size: int, channels: int | None = None, test_fraction: float = 0.1, limit: int | None = None
) -> ImageData:
    """Load a dataset spec; with limit=n, only the first n images of each split are read (parity, calibration)."""
    kind, _, arg = spec.partition(":")
    if kind in ("digits", "shapes") and arg:
        raise VaekitError(f"--data {spec!r}: {kind} takes no argument")
    if kind in ("mnist", "folder") and not arg:
        raise VaekitError(f"--data {kind} needs a directory: {kind}:DIR")
    if kind in ("digits", "shapes", "mnist") and channels not in (None, 1):
        raise VaekitError(f"--data {kind} is grayscale: it has 1 channel, not {channels}")
    if kind == "mnist":
        data = load_mnist(_directory(spec), image_size)
        return ImageData(train=data.train[:limit], test=data.test[:limit], pad=data.pad)
    if kind == "folder":
        return load_image_folder(_directory(spec), image_size, channels or 3, test_fraction, limit)
    if kind == "digits":
        images = _resize_all(_digits(), image_size)
    elif kind == "shapes":
        images = render_shapes(image_size)[0]
    else:
        raise VaekitError(f"unknown --data {spec!r}: use digits, shapes, mnist:DIR or folder:DIR")
    train_idx, test_idx = split_indices(len(images), test_fraction)
    return ImageData(train=images[train_idx[:limit]], test=images[test_idx[:limit]])


def _directory(spec: str) -> Path:
    kind, _, arg = spec.partition(":")
    try:
        return Path(arg).expanduser()
    except RuntimeError:  # ~user of a user this machine does not have
        raise VaekitError(f"{kind}:{arg}: no such directory") from None


def data_dirs(spec: str) -> list[Path]:
    """The directories a data spec reads (none for the built-in sets): what an output must stay out of."""
    kind, _, arg = spec.partition(":")
    return [_directory(spec)] if kind in ("mnist", "folder") and arg else []


def split_indices(n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed permutation: the first round(n * fraction) indices are the test split."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise VaekitError(f"only {n} image(s): too few to split into train and test")
    return order[n_test:], order[:n_test]


def _digits() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise VaekitError(f"--data digits needs scikit-learn: {install_hint('sklearn')}") from None
    pixels = load_digits().images  # (1797, 8, 8), values 0..16
    return np.round(pixels / 16.0 * 255.0).astype(np.uint8)[:, None]


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, h, w) uint8 to (N, C, size, size) with bicubic interpolation."""
    if images.shape[-1] == size:
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        for c, plane in enumerate(img):
            out[i, c] = np.asarray(Image.fromarray(plane).resize((size, size), Image.Resampling.BICUBIC))
    return out


# --- MNIST -------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array with the shape its header declares.

    The declared size is checked against what the file can hold before the body is read, and the body is
    read in chunks, so a lying header never allocates more than the file's own (decompressed) bytes.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                f.seek(0)
                return _read_idx_stream(f, path, size)
            f.seek(0)
            with gzip.GzipFile(fileobj=f) as unzipped:
                return _read_idx_stream(unzipped, path, size * DEFLATE_MAX_RATIO)
    except (OSError, EOFError, zlib.error) as exc:
        raise VaekitError(f"cannot read {path}: {exc}") from None


def _read_idx_stream(f: io.BufferedIOBase, path: Path, most: int) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
        raise VaekitError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = head[3]
    if ndim > IDX_MAX_DIMS:
        raise VaekitError(f"{path} declares {ndim} dimensions; an IDX array vaekit reads has at most {IDX_MAX_DIMS}")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise VaekitError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    expected = math.prod(dims)  # Python ints: no overflow, whatever the header says
    if expected > most:
        raise VaekitError(f"{path} is truncated: its header declares {expected} bytes, more than the file holds")
    body = bytearray()
    while len(body) <= expected and (chunk := f.read(min(READ_CHUNK, expected + 1 - len(body)))):
        body += chunk  # one byte past the declared size at most: enough to see padding
    if len(body) != expected:
        found = "more" if len(body) > expected else str(len(body))
        raise VaekitError(f"{path} is truncated or padded: header says {expected} bytes, file has {found}")
    try:
        return np.frombuffer(body, dtype=np.uint8).reshape(dims)  # a bytearray: writable, as torch wants
    except ValueError:  # an empty array with dims whose product, zeros left out, is beyond what numpy indexes
        raise VaekitError(f"{path} declares a shape numpy cannot hold: {dims}") from None


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        for candidate in (root / name, root / "MNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    raise VaekitError(f"mnist:{root}: {stem}[.gz] not found (get it with: vaekit download mnist {root})")


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3:
        raise VaekitError(f"{path} holds an IDX array of shape {images.shape}, not images (N, H, W)")
    return images[:, None]


def load_mnist(root: Path, image_size: int) -> ImageData:
    if not root.is_dir():
        raise VaekitError(f"mnist:{root}: no such directory")
    train = _read_images(_find_idx(root, "train-images-idx3-ubyte"))
    test = _read_images(_find_idx(root, "t10k-images-idx3-ubyte"))
    extra = image_size - MNIST_SIZE
    if extra > 0 and extra % 2 == 0:
        # Zero padding, not resizing: the digits keep their pixels and nats stay comparable.
        p = extra // 2
        widths = ((0, 0), (0, 0), (p, p), (p, p))
        return ImageData(train=np.pad(train, widths), test=np.pad(test, widths), pad=p)
    return ImageData(train=_resize_all(train, image_size), test=_resize_all(test, image_size))


def download(dest: Path, base_url: str = MNIST_URL, files: Mapping[str, str] = MNIST_MD5) -> list[Path]:
    """Fetch each file into dest, verify its MD5, and move it into place only when it matches."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, md5 in files.items():
        target = dest / name
        if target.is_file() and _md5(target) == md5:
            paths.append(target)
            continue
        fd, part = tempfile.mkstemp(dir=dest, suffix=".part")
        try:  # the close (and its flush) inside the try: a full disk fails here too, and the .part goes
            with open(fd, "wb") as tmp, urllib.request.urlopen(base_url + name, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # ValueError: not a URL
            Path(part).unlink(missing_ok=True)
            raise VaekitError(f"download of {base_url + name} failed: {exc}") from None
        got = _md5(Path(part))
        if got != md5:
            Path(part).unlink()
            raise VaekitError(f"{name}: checksum mismatch (md5 {got}, expected {md5}); nothing was kept")
        Path(part).replace(target)
        paths.append(target)
    return paths


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# --- image folders -----------------------------------------------------------------------------------


def list_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise VaekitError(f"folder:{root}: no such directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VaekitError(f"folder:{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Center-crop to a square, resize, and return (C, size, size) uint8; never decodes over MAX_IMAGE_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged metadata: the file decodes, or it is skipped
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over Pillow's own bound: refuse
            with Image.open(path, formats=IMAGE_FORMATS) as raw:
                img = _decode(raw, size, channels)
    except VaekitError as exc:
        raise VaekitError(f"cannot decode image {path}: {exc}") from None
    except Exception as exc:  # Pillow's decoders raise many types on hostile bytes (OSError, SyntaxError, ...)
        why = str(exc).splitlines()[0].replace(f" {str(path)!r}", "") if str(exc) else type(exc).__name__
        raise VaekitError(f"cannot decode image {path}: {why}") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode(raw: Image.Image, size: int, channels: int) -> Image.Image:
    """Check the header's size before any pixel is decoded; JPEGs decode at 1/2, 1/4 or 1/8 scale when the
    result still covers `size` (Pillow's draft), which also keeps big photos under the bound."""
    mode = "L" if channels == 1 else "RGB"
    raw.draft(mode, (size, size))  # a no-op for formats without reduced-size decoding
    w, h = raw.size
    if w < 1 or h < 1:
        raise VaekitError(f"it has no pixels ({w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise VaekitError(f"{w}x{h} is over the bound of {MAX_IMAGE_PIXELS} pixels per image")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = raw.convert(mode).crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.BICUBIC)


def load_folder(files: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """The images that decode, and (file, why) for each that does not."""
    images, skipped = [], []
    for path in files:
        try:
            images.append(load_image(path, size, channels))
        except VaekitError as exc:
            skipped.append((path, str(exc)))
    out = np.stack(images) if images else np.empty((0, channels, size, size), dtype=np.uint8)
    return out, skipped


def load_image_folder(
    root: Path, size: int, channels: int, test_fraction: float, limit: int | None = None
) -> ImageData:
    """Every image under root, split; files that cannot be decoded are skipped with one warning, unless a split
    would be left with none (then the first failure is the error)."""
    files = list_images(root)
    train_idx, test_idx = split_indices(len(files), test_fraction)
    splits = []
    for split, idx in (("train", train_idx), ("test", test_idx)):
        images, skipped = load_folder([files[i] for i in idx[:limit]], size, channels)
        if not len(images):
            raise VaekitError(f"{skipped[0][1]}; none of the {len(skipped)} {split} images of folder:{root} decodes")
        splits.append((images, skipped))
    (train, bad_train), (test, bad_test) = splits
    data = ImageData(train=train, test=test, skipped=bad_train + bad_test)
    if data.skipped:
        tried = len(data.train) + len(data.test) + len(data.skipped)
        warnings.warn(skipped_line(root, data.skipped, tried), SkippedImagesWarning, stacklevel=3)
    return data


def skipped_line(root: Path, skipped: list[tuple[Path, str]], tried: int) -> str:
    """One line for the files a folder dataset left out: how many, and the first few by name."""
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p, _ in skipped[:SKIPPED_SHOWN]]
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    return (
        f"folder:{root}: skipped {len(skipped)} of {tried} images that cannot be decoded or are over "
        f"{MAX_IMAGE_PIXELS} pixels: {', '.join(names)}{more}"
    )


# --- procedural shapes (dSprites-style) ---------------------------------------------------------------


def _outline(shape: str) -> np.ndarray:
    """Unit outline of a shape as (K, 2) points around the origin, radius about 1."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8
    if shape == "ellipse":
        return np.stack([np.cos(t), 0.5 * np.sin(t)], axis=1)
    # heart curve, scaled to about unit radius, point down
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1) / 16.0


def render_shapes(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Every combination of (shape, scale, rotation, x, y): images (N, 1, size, size) and factor indices (N, 5)."""
    supersample = 4
    big = size * supersample
    grid = np.stack(
        np.meshgrid(
            np.arange(len(SHAPES)),
            np.arange(len(SHAPE_SCALES)),
            np.arange(len(SHAPE_ROTATIONS)),
            np.arange(len(SHAPE_POSITIONS)),
            np.arange(len(SHAPE_POSITIONS)),
            indexing="ij",
        ),
        axis=-1,
    ).reshape(-1, 5)
    outlines = [_outline(s) for s in SHAPES]
    images = np.empty((len(grid), 1, size, size), dtype=np.uint8)
    radius = 0.12 * big
    for i, (s, sc, r, px, py) in enumerate(grid):
        angle = SHAPE_ROTATIONS[r]
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centre = big * (0.2 + 0.6 * np.array([SHAPE_POSITIONS[px], SHAPE_POSITIONS[py]]))
        pts = outlines[s] @ rot.T * radius * SHAPE_SCALES[sc] + centre
        canvas = Image.new("L", (big, big), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=255)
        images[i, 0] = np.asarray(canvas.resize((size, size), Image.Resampling.BOX))
    return images, grid
