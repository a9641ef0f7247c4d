from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_idx
from vaekit.data import download as fetch
from vaekit.data import load_data, read_idx, render_shapes, split_indices, to_float
from vaekit.errors import VaekitError


def test_digits_offline_default() -> None:
    d = load_data("digits", 32)
    assert d.train.shape[1:] == d.test.shape[1:] == (1, 32, 32)
    assert len(d.train) + len(d.test) == 1797
    assert d.train.dtype == np.uint8 and d.train.max() > 200


def test_split_is_deterministic_and_disjoint() -> None:
    a_train, a_test = split_indices(100, 0.1)
    _, b_test = split_indices(100, 0.1)
    assert np.array_equal(a_test, b_test) and len(a_test) == 10
    assert sorted([*a_train, *a_test]) == list(range(100))


@pytest.mark.parametrize("spec", ["digits", "shapes", "folder"])
def test_limit_reads_the_first_images_of_each_split(spec: str, tmp_path: Path) -> None:
    if spec == "folder":
        _write_images(tmp_path)
        spec = f"folder:{tmp_path}"
    full = load_data(spec, 16)
    few = load_data(spec, 16, limit=1)
    assert np.array_equal(few.train, full.train[:1]) and np.array_equal(few.test, full.test[:1])


def test_shapes_have_known_factors() -> None:
    images, factors = render_shapes(32)
    assert images.shape == (len(factors), 1, 32, 32)
    assert len({tuple(f) for f in factors}) == len(factors)  # every combination once
    # moving x moves the centre of mass to the right
    left = images[(factors[:, 3] == 0)].astype(float).mean(0)[0]
    right = images[(factors[:, 3] == 7)].astype(float).mean(0)[0]
    cols = np.arange(32)
    assert (left.sum(0) * cols).sum() / left.sum() < (right.sum(0) * cols).sum() / right.sum()
    assert np.array_equal(render_shapes(32)[0][:50], images[:50])  # deterministic


def test_mnist_pads_28_to_32(mnist_dir: Path) -> None:
    d = load_data(f"mnist:{mnist_dir}", 32)
    raw = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    assert d.pad == 2 and d.train.shape == (96, 1, 32, 32) and d.test.shape == (24, 1, 32, 32)
    assert np.array_equal(d.train[:, 0, 2:30, 2:30], raw)
    assert d.train[:, :, :2].max() == 0
    assert load_data(f"mnist:{mnist_dir}", 28).pad == 0


def test_mnist_errors(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(VaekitError, match="no such directory"):
        load_data(f"mnist:{tmp_path / 'nope'}", 28)
    with pytest.raises(VaekitError, match="not found"):
        load_data(f"mnist:{tmp_path}", 28)
    bad = tmp_path / "t.idx"
    bad.write_bytes((mnist_dir / "t10k-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(VaekitError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"hello world")
    with pytest.raises(VaekitError, match="magic"):
        read_idx(bad)


def test_download_verifies_checksums(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_idx(mirror / "a.gz", np.zeros((2, 3, 3), np.uint8))
    good = hashlib.md5((mirror / "a.gz").read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    paths = fetch(dest, mirror.as_uri() + "/", {"a.gz": good})
    assert paths == [dest / "a.gz"] and read_idx(paths[0]).shape == (2, 3, 3)
    with pytest.raises(VaekitError, match="checksum mismatch"):
        fetch(tmp_path / "d2", mirror.as_uri() + "/", {"a.gz": "0" * 32})
    assert not list((tmp_path / "d2").iterdir())  # nothing half-downloaded left behind
    with pytest.raises(VaekitError, match="download of"):
        fetch(tmp_path / "d3", mirror.as_uri() + "/", {"missing.gz": good})


def _write_images(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = rng.integers(0, 255, (40 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / ("sub" if i % 2 else ".") / f"img{i}.{'png' if i < 3 else 'jpg'}")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "gray.png")
    (root / "notes.txt").write_text("not an image, and not named like one")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_recursive_crop_resize(tmp_path: Path, channels: int) -> None:
    _write_images(tmp_path)
    d = load_data(f"folder:{tmp_path}", 16, channels=channels)
    assert len(d.train) + len(d.test) == 7
    assert d.train.shape[1:] == (channels, 16, 16)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match="no images found"):
        load_data(f"folder:{tmp_path}", 16)
    _write_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(VaekitError, match=r"cannot decode image .*broken\.png"):
        load_data(f"folder:{tmp_path}", 16)


def test_gz_and_raw_idx_read_the_same(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=False)
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a"), read_idx(tmp_path / "a.gz"))


def test_bad_specs() -> None:
    for spec, msg in [
        ("nope", "unknown --data"),
        ("mnist", "needs a directory"),
        ("digits:x", "takes no argument"),
    ]:
        with pytest.raises(VaekitError, match=msg):
            load_data(spec, 16)
    with pytest.raises(VaekitError, match="grayscale"):
        load_data("digits", 16, channels=3)


def test_value_ranges() -> None:
    x = np.array([0, 255], dtype=np.uint8)
    assert to_float(x, (0.0, 1.0)).tolist() == [0.0, 1.0]
    assert to_float(x, (-1.0, 1.0)).tolist() == [-1.0, 1.0]


def test_download_from_a_bad_url_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match=r"download of notaurl/a\.gz failed"):
        fetch(tmp_path, "notaurl/", {"a.gz": "0" * 32})
    assert not list(tmp_path.iterdir())
