"""Training: Adam + ExponentialLR, one process or `torchrun` DDP, checkpoint every epoch, exact resume.

Determinism: each epoch draws its shuffle (DistributedSampler) and its reparameterization noise from
(seed, epoch), so resuming after epoch E replays exactly what an uninterrupted run would have done.

Distributed: --batch-size is the global batch. Rank r of W takes images r, r+W, ... of each global
batch and the noise is drawn for the whole global batch and sliced the same way, so W processes
compute the gradients of one process up to float summation order. BatchNorm is the exception: on CUDA
it becomes SyncBatchNorm (statistics over the global batch); torch has no SyncBatchNorm on CPU, so
there each rank normalizes over its own B/W images. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

from vaekit import __version__
from vaekit.checkpoint import RunPosition, Snapshot, claim_run_dir, load_trainer, save_checkpoint, save_config, snapshot
from vaekit.config import (  # the run files' names, re-exported: tests and scripts read them from here
    CHECKPOINT_INTERVAL_S,
    LOSS_PNG,
    METRICS_FILE,
    RECON_PNG,
    SAMPLE_COUNT,
    SAMPLE_SEED,
    SAMPLES_PNG,
    TRAINER_FILE,
    RunConfig,
    Setup,
)
from vaekit.config import (
    RUN_FILES as RUN_FILES,
)
from vaekit.data import ImageData, data_dirs, load_data
from vaekit.distributed import Dist, init_distributed
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, to_tensor
from vaekit.fsutil import atomic_write_text, check_output_dir, interrupts_deferred
from vaekit.images import loss_picture, reconstruction_picture, sample_picture, save_image
from vaekit.model import VAE, build_model, check_fits, pick_device

# called after each batch with (epoch, batch index, batches per epoch, running means)
ProgressFn = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class TrainHooks:
    """What the caller hears from a run, on rank 0 only; each hook is optional."""

    on_setup: Callable[[Setup], None] | None = None  # once, before the first epoch
    progress: ProgressFn | None = None  # after every batch
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # the metrics row, once the epoch is saved


def _kld_weight(cfg: RunConfig, n_train: int) -> float:
    if cfg.loss.kld_weight is not None:
        return cfg.loss.kld_weight
    return cfg.train.batch_size / n_train if cfg.model.likelihood == "gaussian" else 1.0


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch * 7919


class TrainStep(nn.Module):
    """encode -> z = mu + sigma * eps -> raw decoder output, with eps given by the caller.

    The one module DDP wraps: taking eps as an input lets every rank use the noise of its images'
    places in the global batch, which makes W ranks equal to one process.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.vae.encode(x)
        return self.vae.decode_raw(self.vae.reparameterize(mu, log_var, eps)), mu, log_var


def _write_previews(
    run_dir: Path, model: VAE, test: np.ndarray, history: list[dict[str, Any]], device: torch.device
) -> None:
    cfg = model.cfg
    model.eval()
    with torch.no_grad():
        samples = model.sample(SAMPLE_COUNT, device, SAMPLE_SEED).float().cpu().numpy()
        x = to_tensor(test[:32], cfg, device)
        recon = model.decode(model.encode(x)[0]).float().cpu().numpy()
    save_image(sample_picture(samples, cfg.value_range, SAMPLE_SEED), run_dir / SAMPLES_PNG)
    save_image(reconstruction_picture(x.cpu().numpy(), recon, cfg.value_range, len(history)), run_dir / RECON_PNG)
    save_image(loss_picture(history, in_nats=cfg.likelihood == "bernoulli"), run_dir / LOSS_PNG)


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
    hooks: TrainHooks | None = None,
    checkpoint_every: float = CHECKPOINT_INTERVAL_S,
) -> list[dict[str, Any]]:
    """Train (or resume) into `out`; returns the per-epoch metrics of the whole run ([] on ranks other than 0).

    The checkpoint is written after the last epoch and whenever `checkpoint_every` seconds passed since the
    previous one (0: every epoch); an exception or Ctrl-C writes the last finished epoch before it leaves.

    Ctrl-C raises KeyboardInterrupt whose message says what was saved and the command that continues; a
    fresh run that fails or is interrupted before its first checkpoint leaves nothing behind.
    """
    check_output_dir(out, data_dirs(cfg.train.data))  # before the run dir is claimed: never a run inside its data
    ddp, device = init_distributed(pick_device(device_name))
    where = RunPosition(out, resume)
    try:
        with ExitStack() as held:
            ddp.on_main(claim_run_dir, held, out, resume, overwrite)
            try:
                history = _train(
                    cfg, out, device, ddp, detect_anomaly, data, hooks or TrainHooks(), where, checkpoint_every
                )
            except BaseException as exc:
                if ddp.main:
                    where.clean_failed_start()
                if isinstance(exc, KeyboardInterrupt):
                    raise KeyboardInterrupt(where.interrupted()) from None
                raise
            return history if ddp.main else []
    finally:
        if ddp.owns_group:
            # Leave together: a rank that tears its gloo pairs down while a peer is still finishing its
            # last collective can make that peer abort ("terminate called without an active exception").
            with contextlib.suppress(RuntimeError):
                dist.barrier()
            dist.destroy_process_group()


def _checked_data(cfg: RunConfig, ddp: Dist, data: ImageData | None) -> ImageData:
    tc = cfg.train
    if tc.batch_size % ddp.world:
        raise VaekitError(f"--batch-size {tc.batch_size} is the global batch: it must divide by {ddp.world} processes")
    data = ddp.agree(lambda: data or load_data(tc.data, cfg.model.image_size, cfg.model.in_channels, tc.test_fraction))
    if not len(data.train) or not len(data.test):
        raise VaekitError(f"--data {tc.data}: {len(data.train)} training and {len(data.test)} test images; need both")
    if data.channels != cfg.model.in_channels or data.train.shape[-1] != cfg.model.image_size:
        raise VaekitError(f"data shape {data.train.shape[1:]} does not match the model's {cfg.model.image_shape}")
    return data


def _train(
    cfg: RunConfig,
    out: Path,
    device: torch.device,
    ddp: Dist,
    detect_anomaly: bool,
    data: ImageData | None,
    hooks: TrainHooks,
    where: RunPosition,
    checkpoint_every: float,
) -> list[dict[str, Any]]:
    cfg.validate()
    data = _checked_data(cfg, ddp, data)
    cfg.model.pad = data.pad
    cfg.version = __version__
    run = _Run.start(cfg, out, data, device, ddp, where)
    run.checkpoint_every = checkpoint_every
    where.wrote = True
    ddp.on_main(save_config, out, cfg)
    ddp.on_main(_write_metrics, out / METRICS_FILE, run.history)  # drops rows of an epoch lost in a crash
    if hooks.on_setup and ddp.main:
        hooks.on_setup(run.setup(device))
    try:
        for epoch in range(where.saved + 1, cfg.train.epochs + 1):
            sums, elapsed = run.train_epoch(epoch, detect_anomaly, where, hooks.progress)
            ddp.on_main(run.end_epoch, epoch, sums, elapsed, device, where)
            if hooks.on_epoch and ddp.main:
                hooks.on_epoch(run.history[-1])
    except BaseException:
        if ddp.main:  # an interrupt or a failure in epoch E keeps epoch E-1, written or not yet
            with contextlib.suppress(VaekitError):  # the message then says what is on disk: where.saved
                run.save_pending(where, device, stopping=True)
        raise
    return run.history


def _backward(loss: Tensor, detect_anomaly: bool, where: str) -> None:
    try:
        with torch.autograd.set_detect_anomaly(detect_anomaly):
            loss.backward()
    except RuntimeError as exc:
        if not detect_anomaly:
            raise
        raise VaekitError(f"--detect-anomaly stopped {where}: {str(exc).splitlines()[0]}") from None


@dataclass
class _Run:
    """One run's model, optimizer and data on this rank: trains an epoch, and on rank 0 evaluates and saves it."""

    cfg: RunConfig
    out: Path
    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: ImageData
    ddp: Dist
    net: nn.Module
    sampler: DistributedSampler[int]
    batches: BatchSampler
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_every: float = CHECKPOINT_INTERVAL_S
    saved_at: float = field(default_factory=time.monotonic)  # when the last checkpoint was written (or the start)
    pending: Snapshot | None = None  # the last finished epoch, while it is not on disk yet

    @classmethod
    def start(
        cls, cfg: RunConfig, out: Path, data: ImageData, device: torch.device, ddp: Dist, where: RunPosition
    ) -> _Run:
        """Build the model and optimizer (the same initial weights on every rank), then load a saved state."""
        tc = cfg.train
        torch.manual_seed(tc.seed)
        check_fits(cfg.model, copies=4)  # weights, gradients, Adam's two moments
        model = build_model(cfg.model).to(device)
        if ddp.world > 1 and device.type == "cuda":
            model = cast(VAE, nn.SyncBatchNorm.convert_sync_batchnorm(model))
        optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, tc.scheduler_gamma)
        step = TrainStep(model)
        net: nn.Module = DistributedDataParallel(step) if ddp.world > 1 else step
        # DistributedSampler only needs len(): it yields indices, shuffled from (seed, epoch), one share per rank.
        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(data.train)),  # type: ignore[arg-type]
            num_replicas=ddp.world,
            rank=ddp.rank,
            shuffle=True,
            seed=tc.seed,
        )
        batches = BatchSampler(sampler, tc.batch_size // ddp.world, drop_last=False)
        run = cls(cfg, out, model, optimizer, scheduler, data, ddp, net, sampler, batches)
        if where.resume and (out / TRAINER_FILE).exists():  # else: killed in epoch 1, starts over from its config
            state = ddp.agree(lambda: load_trainer(out, model))
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            where.saved, run.step, run.history = state.epoch, state.step, state.history
        return run

    def setup(self, device: torch.device) -> Setup:
        tc = self.cfg.train
        return Setup(
            data=tc.data,
            n_train=len(self.data.train),
            n_test=len(self.data.test),
            image_shape=self.cfg.model.image_shape,
            parameters=sum(p.numel() for p in self.model.parameters()),
            device=str(device),
            processes=self.ddp.world,
            batch_size=tc.batch_size,
            steps_per_epoch=len(self.batches),
            saved_epoch=len(self.history),
            epochs=tc.epochs,
        )

    def train_epoch(
        self, epoch: int, detect_anomaly: bool, where: RunPosition, progress: ProgressFn | None
    ) -> tuple[Tensor, float]:
        """One pass over the training set; returns the summed loss, recon, kld and image count, and seconds."""
        cfg, ddp, model = self.cfg, self.ddp, self.model
        noise = torch.Generator().manual_seed(_epoch_seed(cfg.train.seed, epoch))
        self.sampler.set_epoch(epoch)
        self.net.train()
        sums = torch.zeros(4, dtype=torch.float64)  # loss, recon, kld (each summed over images), images
        kld_weight = _kld_weight(cfg, len(self.data.train))
        device = next(model.parameters()).device
        use_amp = cfg.train.amp and device.type == "cuda"
        where.epoch, where.batches, t0 = epoch, len(self.batches), time.perf_counter()
        for b, idx in enumerate(self.batches):
            where.batch = b
            x = to_tensor(self.data.train[idx], cfg.model, device)
            n = x.shape[0]
            # eps for the whole global batch, same on every rank; this rank's images sit at rank::world.
            eps = torch.randn(n * ddp.world, cfg.model.latent_dim, generator=noise)[ddp.rank :: ddp.world]
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
            with torch.autograd.set_detect_anomaly(detect_anomaly), amp:
                raw, mu, log_var = self.net(x, eps.to(device))
                terms = model.loss_function(
                    raw.float(), x, mu.float(), log_var.float(), cfg.loss, kld_weight, self.step
                )
            batch = torch.stack([terms.loss, terms.recon, terms.kld, torch.ones_like(terms.loss)]).detach().double() * n
            if ddp.world > 1:
                dist.all_reduce(batch)  # global sums; a NaN on any rank reaches every rank, so all stop together
            batch = batch.cpu()
            if not torch.isfinite(batch).all():
                kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was written"
                raise VaekitError(
                    f"loss became {float(batch[0] / batch[3])} at epoch {epoch}, batch {b}: stopped; {kept} "
                    "(try a lower --lr, or --detect-anomaly to find the op)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            _backward(terms.loss, detect_anomaly, f"epoch {epoch}, batch {b}")
            self.optimizer.step()
            self.step += 1
            sums += batch
            where.batch = b + 1
            if progress and ddp.main:
                means = (sums[:3] / sums[3]).tolist()
                progress(epoch, b + 1, len(self.batches), {"loss": means[0], "recon": means[1], "kld": means[2]})
        self.scheduler.step()
        return sums, time.perf_counter() - t0

    def end_epoch(self, epoch: int, sums: Tensor, elapsed: float, device: torch.device, where: RunPosition) -> None:
        test = evaluate(self.model, self.data.test, iwae_samples=1, seed=self.cfg.train.seed, device=device)
        seen = float(sums[3])
        self.history.append(
            {
                "epoch": epoch,
                "train_loss": float(sums[0]) / seen,
                "train_recon": float(sums[1]) / seen,
                "train_kld": float(sums[2]) / seen,
                "test_neg_elbo": test["neg_elbo"],
                "test_recon": test["recon"],
                "test_kld": test["kld"],
                "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": seen / elapsed,
                "seconds": elapsed,
            }
        )
        self.pending = snapshot(self.model, self.optimizer, self.scheduler, epoch, self.step, self.history)
        if epoch == self.cfg.train.epochs or time.monotonic() - self.saved_at >= self.checkpoint_every:
            self.save_pending(where, device)

    def save_pending(self, where: RunPosition, device: torch.device, stopping: bool = False) -> None:
        """Write the last finished epoch's checkpoint and metrics together, then the previews of that state.

        `stopping`: the run is leaving mid-epoch, so the model first gets that epoch's weights back.
        """
        snap = self.pending
        if snap is None:
            return
        with interrupts_deferred():
            save_checkpoint(self.out, snap)
            _write_metrics(self.out / METRICS_FILE, snap.history)
            where.saved, self.pending, self.saved_at = snap.epoch, None, time.monotonic()
        if stopping:
            self.model.load_state_dict(snap.weights)
        _write_previews(self.out, self.model, self.data.test, snap.history, device)
