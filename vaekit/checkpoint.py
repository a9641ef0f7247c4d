"""Checkpoints: safetensors + JSON only, so loading one never runs code.

A run directory holds
  config.json          the RunConfig
  model.safetensors    the weights (what export and the PyTorch runtime read)
  trainer.safetensors  weights + Adam moments + (in metadata) epoch, step, scheduler: one file, so
                       resuming always sees a consistent state even if a crash hit between writes.
"""

from __future__ import annotations

import json
import shlex
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from vaekit import __version__
from vaekit.config import CONFIG_FILE, METRICS_FILE, MODEL_FILE, RUN_FILES, TRAINER_FILE, RunConfig
from vaekit.errors import VaekitError
from vaekit.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    refuse_to_replace,
    remove_stale_temps,
    run_lock,
    sha256_file,
)
from vaekit.model import VAE, build_model, parameter_shapes


@dataclass
class TrainerState:
    epoch: int
    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]]


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json() + "\n")


@dataclass(frozen=True)
class Snapshot:
    """A finished epoch's state copied off the live tensors: training goes on while it waits to be written."""

    epoch: int
    weights: dict[str, torch.Tensor]
    trainer: dict[str, torch.Tensor]  # weights + Adam moments
    meta: dict[str, str]
    history: list[dict[str, Any]]  # the metrics rows up to this epoch


def snapshot(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
) -> Snapshot:
    """The trainer state (with the metrics history, so metrics.jsonl can always be rebuilt) and the weights."""
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in weights.items()}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().to("cpu", copy=True).contiguous()
    meta = {
        "epoch": str(epoch),
        "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "scheduler": json.dumps(scheduler.state_dict()),
        "history": json.dumps(history),
        "vaekit_version": __version__,
    }
    return Snapshot(epoch, weights, tensors, meta, list(history))


def save_checkpoint(run_dir: Path, snap: Snapshot) -> None:
    # trainer first: if the model write is lost, resume still has the newest state.
    atomic_write_bytes(run_dir / TRAINER_FILE, save_tensors(snap.trainer, metadata=snap.meta))
    atomic_write_bytes(run_dir / MODEL_FILE, save_tensors(snap.weights, metadata={"epoch": str(snap.epoch)}))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise VaekitError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VaekitError(f"checkpoint {path} is corrupt or truncated: {exc}") from None


def resolve_run(path: Path) -> tuple[Path, Path]:
    """A run dir or a .safetensors file -> (config.json, model.safetensors)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).exists() and any(path.glob("*.onnx")):
            raise VaekitError(
                f"{path} is an artifact directory, not a run directory: give the --out of `vaekit train` "
                f"(it holds {CONFIG_FILE} and {MODEL_FILE})"
            )
        return path / CONFIG_FILE, path / MODEL_FILE
    if path.suffix == ".safetensors":
        return path.parent / CONFIG_FILE, path
    if not path.exists():
        raise VaekitError(f"checkpoint {path} not found")
    graph = " (it is an exported graph)" if path.suffix in (".onnx", ".plan") else ""
    raise VaekitError(
        f"{path} is not a checkpoint{graph}: give a run directory (the --out of `vaekit train`) or its {MODEL_FILE}"
    )


def load_config(path: Path) -> RunConfig:
    config_path, _ = resolve_run(path)
    if not config_path.is_file():
        raise VaekitError(f"{config_path} not found: a checkpoint needs the config.json written beside it")
    try:
        text = config_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VaekitError(f"cannot read {config_path}: {exc}") from None
    return RunConfig.from_json(text)


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file holds, from its header alone."""
    if not path.is_file():
        raise VaekitError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VaekitError(f"checkpoint {path} is corrupt or truncated: {exc}") from None


def _check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        detail = (missing and f"missing {missing[:3]}") or (unexpected and f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {found[k]}, config expects {expected[k]}"
        raise VaekitError(f"checkpoint {source} does not match its config.json: {detail}")


def _load_weights(model: VAE, weights: dict[str, torch.Tensor], source: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(expected, {k: tuple(v.shape) for k, v in weights.items()}, source)
    # Training stops before a non-finite step is saved, so NaN/Inf here means a damaged or foreign file.
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise VaekitError(f"checkpoint {source} holds NaN or Inf in {broken[0]}{more}: damaged, not loaded")
    model.load_state_dict(weights)


@dataclass
class Run:
    """A checkpoint read once: the model in eval mode, its config, and the sha256 of its weights file."""

    model: VAE
    cfg: RunConfig
    sha256: str
    weights: Path


def load_run(path: Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model from config.json and load its weights: the config read once, the weights hashed once."""
    cfg = load_config(path)
    _, weights_path = resolve_run(path)
    _check_shapes(parameter_shapes(cfg.model), _stored_shapes(weights_path), weights_path)  # before allocating
    weights, _ = _read(weights_path)
    model = build_model(cfg.model)
    _load_weights(model, weights, weights_path)
    return Run(model.to(device).eval(), cfg, sha256_file(weights_path), weights_path)


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[VAE, RunConfig]:
    run = load_run(path, device)
    return run.model, run.cfg


def load_trainer(run_dir: Path, model: VAE) -> TrainerState:
    tensors, meta = _read(run_dir / TRAINER_FILE)
    try:
        _load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, run_dir / TRAINER_FILE)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        return TrainerState(
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            optimizer={"state": state, "param_groups": json.loads(meta["param_groups"])},
            scheduler=json.loads(meta["scheduler"]),
            history=json.loads(meta["history"]),
        )
    except (KeyError, ValueError, RecursionError) as exc:
        raise VaekitError(f"{run_dir / TRAINER_FILE} lacks trainer state ({exc}); cannot resume") from None


@dataclass
class RunPosition:
    """How far a run got: what an interrupt says was saved, and whether a failed start leaves anything."""

    out: Path
    resume: bool
    epoch: int = 0  # the epoch running; 0 before the first
    batch: int = 0
    batches: int = 0
    saved: int = 0  # the last epoch whose checkpoint is on disk
    wrote: bool = False  # config.json / metrics.jsonl of this run are on disk

    def interrupted(self) -> str:
        at = f"in epoch {self.epoch} (batch {self.batch}/{self.batches})" if self.epoch else "before epoch 1"
        if self.epoch and self.saved >= self.epoch:
            at = f"after epoch {self.epoch}"  # between its checkpoint and the next epoch's first batch
        resume = f"vaekit train --out {shlex.quote(str(self.out))} --resume"
        if self.saved:
            kept = "epoch 1 is" if self.saved == 1 else f"epochs 1-{self.saved} are"
            return f"interrupted {at}: {kept} saved in {self.out}; continue with: {resume}"
        if self.resume:
            return f"interrupted {at}: no epoch was saved yet, {self.out} keeps its config; start it with: {resume}"
        return f"interrupted {at}: no epoch finished, so nothing was kept in {self.out}; run the same command again"

    def clean_failed_start(self) -> None:
        """A fresh run that failed before its first checkpoint takes back what it wrote, so the same command
        works again (run_lock then removes the directory if this run created it)."""
        if self.resume or self.saved or not self.wrote:
            return
        for name in (CONFIG_FILE, METRICS_FILE):
            (self.out / name).unlink(missing_ok=True)
        remove_stale_temps(self.out)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a run by accident; --overwrite removes only the files vaekit wrote."""
    has_trainer, has_config = (out / TRAINER_FILE).exists(), (out / CONFIG_FILE).exists()
    if resume and overwrite:
        raise VaekitError("--resume and --overwrite contradict each other")
    if resume and not (has_trainer or has_config):
        raise VaekitError(f"nothing to resume in {out}: no run there (start one without --resume)")
    if has_trainer and not resume and not overwrite:
        raise refuse_to_replace(out, "a run", ", or --resume to continue it")
    if has_config and not resume and not overwrite:  # a run killed in its first epoch
        raise refuse_to_replace(out, "a run that never finished an epoch", ", or --resume to start it from its config")
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def claim_run_dir(held: ExitStack, out: Path, resume: bool, overwrite: bool) -> None:
    """Lock the run dir for the whole run, clear temp files a killed process left, check the flags."""
    held.enter_context(run_lock(out))
    remove_stale_temps(out)  # holding the lock proves their writer is gone
    prepare_run_dir(out, resume, overwrite)
