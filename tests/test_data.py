from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_idx
from vaekit import data
from vaekit.data import (
    SkippedImagesWarning,
    data_dirs,
    load_data,
    load_image,
    read_idx,
    render_shapes,
    split_indices,
    to_float,
)
from vaekit.data import download as fetch
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


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit gray) and whose pixel data is empty: tiny on disk,
    so only reading the header first can tell it is too large."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_hostile_images(root: Path) -> dict[str, str]:
    """Three files a folder dataset must skip, by name -> what the reason says."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "bomb.png").write_bytes(png_header(40_000, 40_000))  # beyond Pillow's decompression-bomb limit
    (root / "poster.png").write_bytes(png_header(6_000, 6_000))  # within Pillow's, beyond MAX_IMAGE_PIXELS
    return {"broken.png": "cannot identify", "bomb.png": "decompression bomb", "poster.png": "over the bound"}


def test_folder_skips_unreadable_and_oversized_images_with_one_warning(tmp_path: Path) -> None:
    _write_images(tmp_path)
    reasons = write_hostile_images(tmp_path / "sub")
    with pytest.warns(SkippedImagesWarning) as caught:
        d = load_data(f"folder:{tmp_path}", 16)
    assert len(caught) == 1
    line = str(caught[0].message)
    assert "\n" not in line and "skipped 3 of 10 images" in line
    assert all(f"sub/{name}" in line for name in reasons)
    assert len(d.train) + len(d.test) == 7
    why = {path.name: reason for path, reason in d.skipped}
    assert set(why) == set(reasons) and all(reasons[name] in why[name] for name in reasons), why


def test_folder_with_nothing_readable_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match="no images found"):
        load_data(f"folder:{tmp_path}", 16)
    write_hostile_images(tmp_path)
    with pytest.raises(VaekitError, match=r"^cannot decode image .*\.png: .*none of the") as exc:
        load_data(f"folder:{tmp_path}", 16)
    assert "\n" not in str(exc.value)


def test_the_warning_names_the_first_few_and_counts_the_rest(tmp_path: Path) -> None:
    skipped = [(tmp_path / f"{i}.png", "bad") for i in range(5)]
    line = data.skipped_line(tmp_path, skipped, 9)
    assert line.endswith("over 33554432 pixels: 0.png, 1.png, 2.png and 2 more") and "skipped 5 of 9" in line


def test_jpegs_decode_at_reduced_size_and_others_never_past_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 48 * 48)
    picture = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "a.jpg")
    Image.fromarray(picture).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.jpg", 16, 3).shape == (3, 16, 16)  # drafted 1/8: 32x32 <= 48x48
    with pytest.raises(VaekitError, match=r"a\.png: 256x256 is over the bound of 2304 pixels"):
        load_image(tmp_path / "a.png", 16, 3)
    with pytest.raises(VaekitError, match=r"a\.jpg: 64x64 is over"):  # 1/4 is the most 64 px allows
        load_image(tmp_path / "a.jpg", 64, 3)


def test_only_the_listed_formats_decode(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png", format="PPM")  # a PPM named .png
    with pytest.raises(VaekitError, match="cannot decode image"):
        load_image(tmp_path / "x.png", 8, 1)


def test_data_dirs_are_what_a_spec_reads(tmp_path: Path) -> None:
    assert data_dirs(f"folder:{tmp_path}") == data_dirs(f"mnist:{tmp_path}") == [tmp_path]
    assert data_dirs("digits") == data_dirs("shapes") == []
    with pytest.raises(VaekitError, match="no such directory"):
        data_dirs("folder:~no_such_user_here/x")


def test_idx_headers_that_lie_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "t.idx"
    # dims whose product overflows int64 to 0: the old np.prod check let this reach reshape
    path.write_bytes(b"\x00\x00\x08\x04" + struct.pack(">4I", 2**31, 2**31, 4, 1))
    with pytest.raises(VaekitError, match="header declares 18446744073709551616 bytes"):
        read_idx(path)
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 2**32 - 1)))
    with pytest.raises(VaekitError, match="more than the file holds"):  # 1032x its gzip size at most
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x21" + bytes(4 * 33))
    with pytest.raises(VaekitError, match="33 dimensions"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"abcd")
    with pytest.raises(VaekitError, match="header says 3 bytes, file has more"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"abc")
    assert read_idx(path).tolist() == [97, 98, 99] and read_idx(path).flags.writeable


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
