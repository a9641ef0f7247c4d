from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_config
from vaekit.checkpoint import RunPosition, load_model, load_trainer, save_config
from vaekit.data import ImageData
from vaekit.errors import VaekitError
from vaekit.train import LOSS_PNG, METRICS_FILE, RECON_PNG, SAMPLES_PNG, TrainHooks, train


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


@pytest.mark.parametrize(("every", "written"), [(0.0, [1, 2, 3]), (1e9, [3])])
def test_checkpoint_interval_decides_which_epochs_reach_the_disk(
    tmp_path: Path, digits16: ImageData, every: float, written: list[int]
) -> None:
    out, on_disk = tmp_path / "run", []

    def seen(row: dict[str, float]) -> None:
        if (out / METRICS_FILE).read_text():
            on_disk.append(_metrics(out)[-1]["epoch"])  # after epoch N: the last epoch metrics.jsonl holds

    train(tiny_config(epochs=3), out, data=digits16, device_name="cpu", hooks=TrainHooks(on_epoch=seen),
          checkpoint_every=every)  # fmt: skip
    assert sorted(set(on_disk)) == written
    assert [r["epoch"] for r in _metrics(out)] == [1, 2, 3]
    assert load_trainer(out, load_model(out)[0]).epoch == 3


def test_an_interrupt_writes_the_finished_epoch_the_interval_had_not_written_yet(
    tmp_path: Path, digits16: ImageData
) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="epochs 1-2 are saved"):
        train(tiny_config(epochs=4), out, data=digits16, device_name="cpu", hooks=_stop_at(3, 3),
              checkpoint_every=1e9)  # fmt: skip
    assert [r["epoch"] for r in _metrics(out)] == [1, 2]
    history = train(tiny_config(epochs=4), out, resume=True, data=digits16, device_name="cpu")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


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


def _stop_at(epoch: int, batch: int) -> TrainHooks:
    """Ctrl-C as training sees it: KeyboardInterrupt raised between two batches."""

    def progress(e: int, b: int, total: int, stats: dict[str, float]) -> None:
        if (e, b) == (epoch, batch):
            raise KeyboardInterrupt

    return TrainHooks(progress=progress)


def test_ctrl_c_names_what_was_saved_and_the_command_that_continues(tmp_path: Path, digits16: ImageData) -> None:
    out = tmp_path / "run"
    saved = f"interrupted in epoch 2 (batch 3/8): epoch 1 is saved in {out}; "
    saved += f"continue with: vaekit train --out {out} --resume"
    with pytest.raises(KeyboardInterrupt, match=f"^{re.escape(saved)}$"):
        train(tiny_config(epochs=3), out, data=digits16, device_name="cpu", hooks=_stop_at(2, 3))
    assert [r["epoch"] for r in _metrics(out)] == [1]
    setups = []
    history = train(tiny_config(epochs=3), out, resume=True, data=digits16, device_name="cpu",
                    hooks=TrainHooks(on_setup=setups.append))  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert setups[0].saved_epoch == 1 and setups[0].epochs == 3  # the CLI prints "resuming from epoch 1 of 3"


def test_ctrl_c_or_a_failure_before_the_first_checkpoint_leaves_nothing(tmp_path: Path, digits16: ImageData) -> None:
    out = tmp_path / "run"
    with pytest.raises(
        KeyboardInterrupt, match=f"in epoch 1 .*nothing was kept in {re.escape(str(out))}; run the same"
    ):
        train(tiny_config(epochs=2), out, data=digits16, device_name="cpu", hooks=_stop_at(1, 2))
    assert not out.exists()
    cfg = tiny_config(epochs=1)
    cfg.loss.beta = float("inf")
    with pytest.raises(VaekitError, match="no checkpoint was written"):
        train(cfg, out, data=digits16, device_name="cpu")
    assert not out.exists()
    train(tiny_config(epochs=1), out, data=digits16, device_name="cpu")  # the same call again just works
    assert [r["epoch"] for r in _metrics(out)] == [1]


def test_a_run_killed_in_epoch_1_resumes_from_its_config(tmp_path: Path, digits16: ImageData) -> None:
    """SIGKILL cannot clean up: config.json stays without a checkpoint. --resume starts it over, no dead end."""
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    killed.mkdir()
    save_config(killed, tiny_config(epochs=1))
    refusal = "already holds a run that never finished an epoch: pass --overwrite to replace it, or --resume"
    with pytest.raises(VaekitError, match=refusal):
        train(tiny_config(epochs=1), killed, data=digits16, device_name="cpu")
    train(tiny_config(epochs=1), killed, resume=True, data=digits16, device_name="cpu")
    train(tiny_config(epochs=1), fresh, data=digits16, device_name="cpu")
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(killed)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(fresh)
    ]


@pytest.mark.parametrize(
    ("position", "says"),
    [
        (
            RunPosition(Path("runs/x"), False, 4, 12, 28, 3),
            "interrupted in epoch 4 (batch 12/28): epochs 1-3 are saved",
        ),
        (RunPosition(Path("my runs/x"), False, 2, 1, 9, 1), "continue with: vaekit train --out 'my runs/x' --resume"),
        (
            RunPosition(Path("runs/x"), True, 1, 5, 9, 0),
            "no epoch was saved yet, runs/x keeps its config; start it with",
        ),
        (RunPosition(Path("runs/x"), False), "interrupted before epoch 1: no epoch finished, so nothing was kept"),
        (RunPosition(Path("runs/x"), False, 3, 26, 26, 3), "interrupted after epoch 3: epochs 1-3 are saved in runs/x"),
    ],
)
def test_interrupt_messages(position: RunPosition, says: str) -> None:
    assert says in position.interrupted()
