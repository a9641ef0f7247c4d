from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_config
from vaekit.checkpoint import load_model
from vaekit.data import ImageData
from vaekit.errors import VaekitError
from vaekit.train import LOSS_PNG, METRICS_FILE, RECON_PNG, SAMPLES_PNG, train


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]


def test_run_writes_metrics_and_pictures(conv_run: Path) -> None:
    rows = _metrics(conv_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["test_neg_elbo"] < rows[0]["test_neg_elbo"]
    with Image.open(conv_run / SAMPLES_PNG) as img:
        assert min(img.size) >= 256  # upscaled so a person can see it
        assert len(np.unique(np.asarray(img))) > 10  # not a blank picture
    for name in (RECON_PNG, LOSS_PNG):
        with Image.open(conv_run / name) as img:
            assert img.getextrema() != ((255, 255), (255, 255), (255, 255))


def test_resume_equals_an_uninterrupted_run(tmp_path: Path, digits16: ImageData) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(epochs=3), full, data=digits16, device_name="cpu")
    train(tiny_config(epochs=1), part, data=digits16, device_name="cpu")
    cfg = tiny_config(epochs=3)
    train(cfg, part, resume=True, data=digits16, device_name="cpu")
    a, _ = load_model(full)
    b, _ = load_model(part)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(full)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(part)
    ]


def test_existing_run_is_not_clobbered(conv_run: Path, digits16: ImageData) -> None:
    before = (conv_run / "model.safetensors").read_bytes()
    with pytest.raises(VaekitError, match="already holds a run"):
        train(tiny_config(), conv_run, data=digits16, device_name="cpu")
    assert (conv_run / "model.safetensors").read_bytes() == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, digits16: ImageData) -> None:
    run = tmp_path / "run"
    train(tiny_config(epochs=1), run, data=digits16, device_name="cpu")
    good = (run / "model.safetensors").read_bytes()
    cfg = tiny_config(epochs=2)
    cfg.loss.beta = float("inf")  # the first batch of epoch 2 has a non-finite loss
    with pytest.raises(VaekitError, match=r"loss became (inf|nan) at epoch 2, batch 0: .*epoch 1 is kept"):
        train(cfg, run, resume=True, data=digits16, device_name="cpu")
    assert (run / "model.safetensors").read_bytes() == good


def test_resume_without_a_run(tmp_path: Path, digits16: ImageData) -> None:
    with pytest.raises(VaekitError, match="nothing to resume"):
        train(tiny_config(), tmp_path, resume=True, data=digits16, device_name="cpu")


@pytest.mark.gpu
def test_cuda_training_with_amp_matches_cpu_loosely(tmp_path: Path, digits16: ImageData) -> None:
    """bf16 autocast on CUDA trains to about the same test -ELBO as fp32 on the CPU."""
    cpu = train(tiny_config(epochs=3), tmp_path / "cpu", data=digits16, device_name="cpu")
    cuda = train(tiny_config(epochs=3), tmp_path / "cuda", data=digits16, device_name="cuda")
    assert cuda[-1]["test_neg_elbo"] == pytest.approx(cpu[-1]["test_neg_elbo"], rel=0.05)
    model, _ = load_model(tmp_path / "cuda")  # a CUDA-trained checkpoint loads on the CPU
    assert next(model.parameters()).device.type == "cpu"
