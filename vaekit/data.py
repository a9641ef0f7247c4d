"""Datasets as uint8 (N, C, H, W) arrays: numpy + pillow only, so deploy-side commands can read data too.

Sources (the `--data` spec): `digits` (scikit-learn's bundled 8x8 digits, offline), `shapes`
(procedural dSprites-style, with known factors), `mnist:DIR` (IDX files), `folder:DIR` (any images).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import shutil
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from vaekit.errors import VaekitError

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
SHAPES = ("square", "ellipse", "heart")
SHAPE_SCALES = np.linspace(0.5, 1.0, 6)
SHAPE_ROTATIONS = np.linspace(0.0, 2 * np.pi, 8, endpoint=False)
SHAPE_POSITIONS = np.linspace(0.0, 1.0, 8)


@dataclass
class ImageData:
    train: np.ndarray  # uint8 (N, C, H, W)
    test: np.ndarray
    pad: int = 0  # zero border added around the source images

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
        data = load_mnist(Path(arg).expanduser(), image_size)
        return ImageData(train=data.train[:limit], test=data.test[:limit], pad=data.pad)
    if kind == "folder":
        files = list_images(Path(arg).expanduser())
        train_idx, test_idx = split_indices(len(files), test_fraction)
        train, test = (
            load_folder([files[i] for i in idx[:limit]], image_size, channels or 3) for idx in (train_idx, test_idx)
        )
        return ImageData(train=train, test=test)
    if kind == "digits":
        images = _resize_all(_digits(), image_size)
    elif kind == "shapes":
        images = render_shapes(image_size)[0]
    else:
        raise VaekitError(f"unknown --data {spec!r}: use digits, shapes, mnist:DIR or folder:DIR")
    train_idx, test_idx = split_indices(len(images), test_fraction)
    return ImageData(train=images[train_idx[:limit]], test=images[test_idx[:limit]])


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
        raise VaekitError("--data digits needs scikit-learn: pip install 'vaekit[train]'") from None
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
    """Read an IDX file (optionally gzipped) into a uint8 array with the shape its header declares."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise VaekitError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise VaekitError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise VaekitError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise VaekitError(f"{path} is truncated or padded: header says {expected} bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable for torch


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
    """Center-crop to a square, resize, and return (C, size, size) uint8."""
    try:
        with Image.open(path) as raw:
            img = raw.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VaekitError(f"cannot decode image {path}: {exc}") from None
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_folder(files: list[Path], size: int, channels: int) -> np.ndarray:
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        out[i] = load_image(path, size, channels)
    return out


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
