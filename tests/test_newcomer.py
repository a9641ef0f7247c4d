"""A newcomer's first hour (issue 15): what training says before and during a run, interrupts of every command,
no leftovers after a failure, messages that name the real mistake, and pictures that explain themselves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit.cli.learn
from tests.test_cli import assert_one_line_error, run
from vaekit.config import MIN_USEFUL_STEPS, Setup
from vaekit.errors import VaekitError
from vaekit.fsutil import interrupts_deferred, refuse_to_replace
from vaekit.images import (
    PAD,
    epoch_ticks,
    grid,
    line_plot,
    loss_picture,
    nice_ticks,
    reconstruction_picture,
    sample_picture,
    save_image,
    scale_for,
    scale_to_width,
)
from vaekit.runtimes.generate import generate_picture
from vaekit.runtimes.proving.parity import ParityReport, fixed_latents
from vaekit.runtimes.proving.pictures import save_parity_png

MODEL_ARGS = ["--image-size", "32", "--latent-dim", "4", "--hidden-dims", "8,16,16,16", "--batch-size", "32"]


def tiny_args(mnist_dir: Path) -> list[str]:
    return ["--data", f"mnist:{mnist_dir}", *MODEL_ARGS, "--device", "cpu"]


# --- what training says ---------------------------------------------------------------------------------


def test_setup_header_progress_lines_and_test_elbo_each_epoch(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vaekit.cli.learn, "PROGRESS_INTERVAL_S", 0.0)  # a log line after every batch
    code, out, err = run("train", *tiny_args(mnist_dir), "--epochs", "2", "--out", str(tmp_path / "r"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"data   mnist:{mnist_dir}: 96 training and 24 test images of 1x32x32"), lines[0]
    assert re.fullmatch(r"model  conv VAE, latent_dim 4, [\d,]+ parameters, on cpu", lines[1]), lines[1]
    assert lines[2].startswith("steps  3 per epoch (batch 32) x 2 epochs"), lines[2]
    assert "epoch 1/2  batch 1/3  loss " in out and "epoch 2/2  batch 2/3  loss " in out
    epochs = [
        line for line in lines if re.fullmatch(r"epoch \d/2  train loss \S+  test -ELBO [\d.]+ nats/image.*", line)
    ]
    assert len(epochs) == 2, out
    # 6 steps: the warning says how far off it is and what to change
    assert "warning: 6 optimizer steps in all (96 images / batch 32 = 3 per epoch x 2 epochs)" in lines[3]
    assert f"--epochs {-(-MIN_USEFUL_STEPS // 3)}" in lines[3]  # ceil
    assert err == ""  # stderr is for errors


def test_a_long_enough_run_does_not_warn() -> None:
    setup = Setup("digits", 1617, 180, (1, 32, 32), 10, "cpu", 1, 64, 26, 0, 30)
    assert setup.too_short() == ""
    assert "9 optimizer steps" in Setup("folder:x", 180, 20, (3, 32, 32), 10, "cpu", 1, 64, 3, 0, 3).too_short()


# --- interrupts of every command --------------------------------------------------------------------------


def _ansi_wrapped_interrupt(*args: Any, **kw: Any) -> None:
    """What torch.onnx.export does with a Ctrl-C it meets while tracing: its own error, ANSI escapes and all."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m") from exc


def _plain_interrupt(*args: Any, **kw: Any) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("stage", "raise_it"),
    [
        ("torch.onnx.export", _ansi_wrapped_interrupt),
        ("torch.onnx.export", _plain_interrupt),
        ("vaekit.export.pipeline.run_parity", _plain_interrupt),
        ("vaekit.export.pipeline.write_manifest", _plain_interrupt),
    ],
)
def test_ctrl_c_at_each_stage_of_export_is_one_clean_line_and_leaves_the_old_export(
    conv_run: Path, conv_art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, raise_it: Any
) -> None:
    import vaekit.export.pipeline

    out = tmp_path / "art"
    shutil.copytree(conv_art, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    module, name = stage.rsplit(".", 1)
    monkeypatch.setattr(torch.onnx if module == "torch.onnx" else vaekit.export.pipeline, name, raise_it)
    code, _, err = run("export", "--checkpoint", str(conv_run), "--out", str(out), "--overwrite")
    assert code == 130
    assert_one_line_error(code, err, "interrupted")
    assert "\x1b" not in err and "torch" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging dir left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the export that was there, untouched


def test_ctrl_c_waits_for_files_that_belong_together(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal has arrived: without the deferral it would stop the block here
        (tmp_path / "trainer").write_text("epoch 2")
        (tmp_path / "model").write_text("epoch 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "trainer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_any_command_is_one_line_with_rc_130(conv_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vaekit.evaluate

    monkeypatch.setattr(vaekit.evaluate, "evaluate", _plain_interrupt)
    code, _, err = run("eval", "--checkpoint", str(conv_run))
    assert code == 130
    assert_one_line_error(code, err, "interrupted")


# --- no leftovers, one overwrite rule --------------------------------------------------------------------


def test_a_failed_train_leaves_no_folder_and_no_lock(tmp_path: Path) -> None:
    fresh, mine = tmp_path / "fresh", tmp_path / "mine"
    mine.mkdir()
    for out in (fresh, mine):
        code, _, err = run("train", "--data", "mnist:/no/such/dir", "--out", str(out))
        assert_one_line_error(code, err, "no such directory")
    assert not fresh.exists()  # the folder train made for the run went again
    assert list(mine.iterdir()) == []  # the user's own folder stays, without a .lock


def test_a_failed_download_leaves_no_folder(tmp_path: Path) -> None:
    dest = tmp_path / "mnist"
    code, _, err = run("download", "mnist", str(dest), "--base-url", f"file://{tmp_path}/no-mirror/")
    assert_one_line_error(code, err, "download of")
    assert not dest.exists()


def test_train_and_export_refuse_to_replace_in_the_same_words(conv_run: Path, conv_art: Path, tmp_path: Path) -> None:
    rule = r"error: (\S+) already holds (a run|an export): pass --overwrite to replace it"
    code, _, train_err = run("train", "--epochs", "1", "--out", str(conv_run))
    assert_one_line_error(code, train_err, "or --resume to continue it")
    code, _, export_err = run("export", "--checkpoint", str(conv_run), "--out", str(conv_art))
    assert code != 0
    for err in (train_err, export_err):
        assert re.match(rule, err.strip()), err
    assert (
        str(refuse_to_replace(tmp_path, "an export"))
        == f"{tmp_path} already holds an export: pass --overwrite to replace it"
    )


# --- messages that name the real mistake -----------------------------------------------------------------


@pytest.mark.parametrize(("size", "nearest"), [(30, 32), (20, 16), (8, 16), (50, 48)])
def test_image_size_suggests_the_nearest_valid_size(tmp_path: Path, size: int, nearest: int) -> None:
    code, _, err = run("train", "--image-size", str(size), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"image size {size} does not fit the conv arch")
    assert err.strip().endswith(f"try {nearest}"), err


@pytest.mark.parametrize("command", ["export", "eval"])
def test_an_artifact_directory_given_as_checkpoint(conv_art: Path, tmp_path: Path, command: str) -> None:
    code, _, err = run(
        command, "--checkpoint", str(conv_art), *(["--out", str(tmp_path / "a")] * (command == "export"))
    )
    assert_one_line_error(code, err, f"{conv_art} is an artifact directory, not a run directory")


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8"), (".JPEG", b"\xff\xd8")])
def test_the_suffix_decides_the_picture_format(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"x{suffix}"
    save_image(Image.new("L", (8, 8), 128), path)
    assert path.read_bytes().startswith(magic)
    webp = tmp_path / "x.webp"
    save_image(Image.new("RGB", (8, 8)), webp)
    assert webp.read_bytes()[8:12] == b"WEBP"


def test_an_unknown_suffix_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match=r"cannot write a picture to .*x\.gif: end the name in \.png, \.jpg"):
        save_image(Image.new("L", (8, 8)), tmp_path / "x.gif")
    with pytest.raises(VaekitError, match="Is a directory"):
        save_image(Image.new("L", (8, 8)), tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- pictures ---------------------------------------------------------------------------------------------


def test_nice_ticks_and_epoch_ticks() -> None:
    assert nice_ticks(415.7, 521.0) == [400.0, 450.0, 500.0, 550.0]
    assert nice_ticks(0.012, 0.031) == pytest.approx([0.01, 0.015, 0.02, 0.025, 0.03, 0.035])
    assert epoch_ticks(1) == [1] and epoch_ticks(3) == [1, 2, 3]
    assert epoch_ticks(30) == [1, 5, 10, 15, 20, 25, 30]
    assert epoch_ticks(12) == [2, 4, 6, 8, 10, 12]


def _non_white_rows(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("L"))
    return np.flatnonzero((a < 200).any(axis=1))


def test_loss_plot_has_room_around_the_data() -> None:
    history = [{"test_neg_elbo": 500.0 - 10 * i, "train_loss": 520.0 - 12 * i} for i in range(30)]
    img = loss_picture(history, in_nats=True)
    assert img.size == (720, 440)
    a = np.asarray(img)
    blue = np.argwhere((a[..., 2] > 150) & (a[..., 0] < 80))  # the train-loss line and points (legend aside)
    blue = blue[blue[:, 0] > 100]
    assert blue[:, 1].max() < 720 - 24 - 5  # the tail stays off the right frame
    assert blue[:, 0].max() < 440 - 52 - 5  # and off the bottom one
    orange = [np.any(np.all(np.asarray(loss_picture(history, n)) == (255, 127, 14), axis=-1)) for n in (True, False)]
    assert orange == [True, False]  # the Gaussian's training loss (an MSE) stays off a plot in nats
    assert line_plot({"a": []}, "t", "y").size == (720, 440)  # nothing to plot: a frame and a note, no crash


def test_sample_picture_is_a_titled_grid(digits_like: np.ndarray) -> None:
    img = sample_picture(digits_like, (0.0, 1.0), seed=0)
    small = grid(digits_like, (0.0, 1.0))
    scale = img.width // small.width
    assert scale >= 2 and img.width == small.width * scale
    band = img.height - small.height * scale
    assert 20 <= band <= 40  # the title, above the grid
    assert _non_white_rows(img.crop((0, 0, img.width, band))).size  # the title has ink


def test_traversal_rows_carry_their_dimension(digits_like: np.ndarray) -> None:
    images = digits_like[:10]
    img = generate_picture(images, (0.0, 1.0), 0, 5, ["dim 3", "dim 1"])
    plain = grid(images, (0.0, 1.0), 5)
    scale = scale_for(plain, 512)
    margin = img.width - plain.width * scale
    assert margin >= 30  # a label column left of the grid
    band = img.height - plain.height * scale  # the title
    ink = _non_white_rows(img.crop((0, band, margin, img.height)))
    assert ink.size and ink.max() - ink.min() > plain.height * scale // 3  # "dim 3" and "dim 1", a row apart


def test_reconstruction_picture_has_a_title_and_two_captioned_rows(digits_like: np.ndarray) -> None:
    img = reconstruction_picture(digits_like[:32], digits_like[:32], (0.0, 1.0), epoch=7)
    row = grid(digits_like[:32], (0.0, 1.0), 16)
    scale = scale_to_width(row)
    assert scale >= 2 and 1000 < img.width == row.width * scale <= 1400  # wide enough to see, not a banner
    assert 2 * row.height * scale + 40 < img.height < 2 * row.height * scale + 100  # + title and two captions


def test_parity_picture_frames_the_stress_latents(digits_like: np.ndarray, tmp_path: Path) -> None:
    z = fixed_latents(16, 4)
    assert (np.abs(z[:3]) == 4).all()
    ref = digits_like[:16]
    report = ParityReport(reference={"backend": "pyt", "latent_dim": 4}, n_images=16, n_latents=16)
    report.previews["onnxrt-cpu"] = (ref, ref + 0.01)
    save_parity_png(report, (0.0, 1.0), tmp_path / "parity.png")
    with Image.open(tmp_path / "parity.png") as img:
        a = np.asarray(img.convert("RGB")).astype(int)
    red = (a[..., 0] > 200) & (a[..., 1] < 80) & (a[..., 2] < 80)
    scale = scale_to_width(grid(ref, (0.0, 1.0), 16))
    columns = np.flatnonzero(red.any(axis=0))
    tile = 16 + PAD
    assert columns.min() <= PAD * scale and columns.max() < (PAD + 3 * tile) * scale  # tiles 1-3, not tile 4
    rows = np.flatnonzero(red.any(axis=1))
    assert rows.min() > 30  # below the title
    assert np.count_nonzero(np.diff(rows) > 1) == 2  # frames in the three rows: reference, runtime, difference


@pytest.fixture
def digits_like() -> np.ndarray:
    """64 16x16 'images' in [0, 1]: a bright square that moves, enough to see a layout."""
    images = np.zeros((64, 1, 16, 16), dtype=np.float32)
    for i in range(64):
        images[i, 0, i % 12 : i % 12 + 4, (i // 4) % 12 : (i // 4) % 12 + 4] = 1.0
    return images
