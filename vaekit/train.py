"""Training: Adam + ExponentialLR, one process or `torchrun` DDP, checkpoint every epoch, exact resume.

Determinism: each epoch reseeds torch from (seed, epoch, rank) and DistributedSampler shuffles from
(seed, epoch), so resuming after epoch E replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

from vaekit import __version__
from vaekit.checkpoint import (
    CONFIG_FILE,
    TRAINER_FILE,
    load_trainer,
    save_checkpoint,
    save_config,
)
from vaekit.config import RunConfig
from vaekit.data import ImageData, load_data
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, to_tensor
from vaekit.fsutil import atomic_write_text, run_lock
from vaekit.images import grid, labelled_rows, line_plot, save_png, upscale
from vaekit.model import VAE, build_model

METRICS_FILE = "metrics.jsonl"
SAMPLES_PNG = "samples.png"
RECON_PNG = "reconstructions.png"
LOSS_PNG = "loss.png"
RUN_FILES = (CONFIG_FILE, "model.safetensors", TRAINER_FILE, METRICS_FILE, SAMPLES_PNG, RECON_PNG, LOSS_PNG)
PREVIEW_COUNT = 64
PREVIEW_SEED = 1234

# called after each batch with (epoch, batch index, batches per epoch, running means)
ProgressFn = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise VaekitError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaekitError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a run by accident; --overwrite removes only the files vaekit wrote."""
    has_run = (out / TRAINER_FILE).exists() or (out / CONFIG_FILE).exists()
    if resume and overwrite:
        raise VaekitError("--resume and --overwrite contradict each other")
    if resume and not (out / TRAINER_FILE).exists():
        raise VaekitError(f"nothing to resume in {out}: no {TRAINER_FILE}")
    if has_run and not resume and not overwrite:
        raise VaekitError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over")
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def _kld_weight(cfg: RunConfig, n_train: int) -> float:
    if cfg.loss.kld_weight is not None:
        return cfg.loss.kld_weight
    return cfg.train.batch_size / n_train if cfg.model.likelihood == "gaussian" else 1.0


def _write_previews(
    run_dir: Path, model: VAE, test: np.ndarray, history: list[dict[str, Any]], device: torch.device
) -> None:
    cfg = model.cfg
    model.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(PREVIEW_SEED)
        samples = model.sample(PREVIEW_COUNT, device, generator=gen).float().cpu().numpy()
        x = to_tensor(test[:32], cfg, device)
        recon = model.decode(model.encode(x)[0]).float().cpu().numpy()
    save_png(upscale(grid(samples, cfg.value_range), 512), run_dir / SAMPLES_PNG)
    pairs = labelled_rows(
        [
            ("input", grid(x.cpu().numpy(), cfg.value_range, ncol=16)),
            ("reconstruction (mu)", grid(recon, cfg.value_range, ncol=16)),
        ]
    )
    save_png(upscale(pairs, 384), run_dir / RECON_PNG)
    curves = {
        "train loss": [h["train_loss"] for h in history],
        "test -ELBO (nats)": [h["test_neg_elbo"] for h in history],
    }
    save_png(line_plot(curves, "training curve", "epoch"), run_dir / LOSS_PNG)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def train(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device_name: str = "auto",
    detect_anomaly: bool = False,
    data: ImageData | None = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume) into `out`; returns the per-epoch metrics of the whole run."""
    device = pick_device(device_name)
    ddp = _init_distributed(device)
    if ddp.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    lock = run_lock(out) if ddp.main else nullcontext()
    with lock:
        if ddp.main:
            prepare_run_dir(out, resume, overwrite)
        if ddp.world > 1:
            dist.barrier()
        return _train(cfg, out, resume, device, ddp, detect_anomaly, data, progress)


def _train(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    device: torch.device,
    ddp: Dist,
    detect_anomaly: bool,
    data: ImageData | None,
    progress: ProgressFn | None,
) -> list[dict[str, Any]]:
    cfg.validate()
    tc = cfg.train
    if tc.batch_size % ddp.world:
        raise VaekitError(f"--batch-size {tc.batch_size} is the global batch: it must divide by {ddp.world} processes")
    data = data or load_data(tc.data, cfg.model.image_size, cfg.model.in_channels, tc.test_fraction)
    if data.channels != cfg.model.in_channels or data.train.shape[-1] != cfg.model.image_size:
        raise VaekitError(f"data shape {data.train.shape[1:]} does not match the model's {cfg.model.image_shape}")
    cfg.model.pad = data.pad
    cfg.version = __version__

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=tc.scheduler_gamma)
    start_epoch, step, history = 1, 0, []
    if resume:
        state = load_trainer(out, model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        start_epoch, step, history = state.epoch + 1, state.step, state.history
    if ddp.main:
        save_config(out, cfg)
        _write_metrics(out / METRICS_FILE, history)  # drops rows of an epoch that crashed before its checkpoint

    net: torch.nn.Module = DistributedDataParallel(model) if ddp.world > 1 else model
    train_u8 = torch.from_numpy(data.train)
    # DistributedSampler only needs len(): it yields indices, shuffled from (seed, epoch), one share per rank.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train_u8)),  # type: ignore[arg-type]
        num_replicas=ddp.world,
        rank=ddp.rank,
        shuffle=True,
        seed=tc.seed,
    )
    batches = BatchSampler(sampler, tc.batch_size // ddp.world, drop_last=False)
    kld_weight = _kld_weight(cfg, len(train_u8))
    lo, hi = cfg.model.value_range
    use_amp = tc.amp and device.type == "cuda"

    for epoch in range(start_epoch, tc.epochs + 1):
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 7919 + ddp.rank)
        sampler.set_epoch(epoch)
        net.train()
        sums = {"loss": 0.0, "recon": 0.0, "kld": 0.0}
        seen, t0 = 0, time.perf_counter()
        for b, idx in enumerate(batches):
            x = train_u8[idx].to(device, non_blocking=True).float().div_(255.0).mul_(hi - lo).add_(lo)
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
            with torch.autograd.set_detect_anomaly(detect_anomaly), amp:
                raw, mu, log_var = net(x)
                terms = model.loss_function(raw.float(), x, mu.float(), log_var.float(), cfg.loss, kld_weight, step)
            if not torch.isfinite(terms.loss):
                raise VaekitError(
                    f"loss became {terms.loss.item()} at epoch {epoch}, batch {b}: stopped; the checkpoint of "
                    f"epoch {epoch - 1} is kept (try a lower --lr, or --detect-anomaly to find the op)"
                )
            optimizer.zero_grad(set_to_none=True)
            with torch.autograd.set_detect_anomaly(detect_anomaly):
                terms.loss.backward()
            optimizer.step()
            step += 1
            n = x.shape[0]
            seen += n
            for key in sums:
                sums[key] += getattr(terms, key).item() * n
            if progress and ddp.main:
                progress(epoch, b + 1, len(batches), {k: v / seen for k, v in sums.items()})
        scheduler.step()
        elapsed = time.perf_counter() - t0
        if ddp.main:
            test = evaluate(model, data.test, iwae_samples=1, seed=tc.seed, device=device)
            row = {
                "epoch": epoch,
                "train_loss": sums["loss"] / seen,
                "train_recon": sums["recon"] / seen,
                "train_kld": sums["kld"] / seen,
                "test_neg_elbo": test["neg_elbo"],
                "test_recon": test["recon"],
                "test_kld": test["kld"],
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": seen * ddp.world / elapsed,
                "seconds": elapsed,
            }
            history.append(row)
            save_checkpoint(out, model, optimizer, scheduler, epoch, step, history)
            _write_metrics(out / METRICS_FILE, history)
            _write_previews(out, model, data.test, history, device)
        if ddp.world > 1:
            dist.barrier()
    return history
