"""Traversals labelled by factor and KL: the same picture from an exported ONNX graph as from PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from vaekit.cli.main import app
from vaekit.runtimes import load_decoder, load_encoder
from vaekit.runtimes.generate import TRAVERSE_SPAN
from vaekit.runtimes.traversal import TRAVERSE_STEPS, by_kl, row_labels, score_encoder, traversal_picture

runner = CliRunner()


def test_an_onnx_encoder_scores_what_the_pytorch_model_scores(conv_art: Path, conv_run: Path) -> None:
    onnx_report = score_encoder(load_encoder(conv_art / "encoder.onnx"), "shapes")
    torch_report = score_encoder(load_encoder(conv_run), "shapes")
    np.testing.assert_allclose(onnx_report.kl, torch_report.kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onnx_report.centre, torch_report.centre, atol=1e-4)
    # mu agrees to 1e-4, so a handful of the 9,216 codes may fall into a neighbouring bin
    np.testing.assert_allclose(onnx_report.mi, torch_report.mi, atol=0.01)
    assert abs(onnx_report.mig() - torch_report.mig()) < 0.01


def test_traversals_from_the_onnx_decoder_match_pytorch(conv_art: Path, conv_run: Path) -> None:
    report = score_encoder(load_encoder(conv_run), "shapes")
    _, onnx_images = traversal_picture(load_decoder(conv_art / "decoder.onnx"), report)
    picture, torch_images = traversal_picture(load_decoder(conv_run), report)
    d = len(report.kl)
    assert onnx_images.shape == torch_images.shape == (d * TRAVERSE_STEPS, 1, 16, 16)
    np.testing.assert_allclose(onnx_images, torch_images, atol=1e-4, rtol=0)
    assert picture.height > picture.width / (TRAVERSE_STEPS + 3) * d * 0.8  # a row per latent


def test_rows_are_ordered_by_kl_and_say_what_they_carry(conv_run: Path) -> None:
    report = score_encoder(load_encoder(conv_run), "shapes")
    order = by_kl(report)
    assert sorted(order) == list(range(len(report.kl)))
    assert np.all(np.diff(report.kl[order]) <= 0)
    for dim, label in zip(order, row_labels(order, report), strict=True):
        assert label.startswith(f"dim {dim}: ") and f"KL {report.kl[dim]:.2f} nats" in label
        assert (report.carried(dim) or "inactive") in label
    assert row_labels([2, 0], None) == ["dim 2", "dim 0"]


def test_generate_traverse_with_data_sweeps_around_a_real_code(conv_art: Path, conv_run: Path, tmp_path: Path) -> None:
    npz = tmp_path / "t.npz"
    args = ["generate", "--engine", str(conv_art / "decoder.onnx"), "--traverse", "5", "--n", "10"]
    r = runner.invoke(app, [*args, "--data", "shapes", "--out", str(tmp_path / "t.png"), "--npy", str(npz)])
    assert r.exit_code == 0, r.stderr
    report = score_encoder(load_encoder(conv_run), "shapes")
    with np.load(npz) as f:
        z, images = f["z"], f["images"]
    first, second = by_kl(report)[:2]
    assert z.shape == (10, 4)
    np.testing.assert_allclose(z[:5, first], np.linspace(-TRAVERSE_SPAN, TRAVERSE_SPAN, 5), atol=1e-6)
    others = [j for j in range(4) if j != first]
    np.testing.assert_allclose(z[:5][:, others], np.tile(report.centre[others], (5, 1)), atol=1e-4)
    np.testing.assert_allclose(z[5:, second], np.linspace(-TRAVERSE_SPAN, TRAVERSE_SPAN, 5), atol=1e-6)
    np.testing.assert_allclose(images, load_decoder(conv_run).decode(z), atol=1e-4, rtol=0)
    assert "MIG" in r.stdout + r.stderr
