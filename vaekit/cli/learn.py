"""Learning commands: train, eval, download. Defaults shown in --help are read from config.py."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from vaekit.cli.app import LEARN_PANEL, command, err_console, out_console, wrote
from vaekit.config import (
    CHECKPOINT_INTERVAL_S,
    DEFAULT_DATA,
    DEFAULT_OUT,
    PROGRESS_INTERVAL_S,
    TRAIN_DEVICES,
    RunConfig,
    Setup,
    preset,
)
from vaekit.errors import UsageError

if TYPE_CHECKING:
    from vaekit.train import TrainHooks

CONV, MLP = preset("conv"), preset("mlp")


def _both(field: str, section: str = "model") -> str:
    """'<conv default> conv, <mlp default> mlp' for --help."""
    conv, mlp = getattr(getattr(CONV, section), field), getattr(getattr(MLP, section), field)

    def fmt(v: Any) -> str:
        return ",".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)

    return fmt(conv) if conv == mlp else f"{fmt(conv)} conv, {fmt(mlp)} mlp"


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--hidden-dims takes comma-separated integers, got {text!r}") from None


def build_config(arch: str | None, data: str | None, channels: int | None, given: dict[str, Any]) -> RunConfig:
    """The preset of --arch with the options given on the command line applied over it."""
    cfg = preset(arch or CONV.model.arch)
    cfg.train.data = data or cfg.train.data
    cfg.model.in_channels = channels if channels is not None else (3 if cfg.train.data.startswith("folder:") else 1)
    if given.get("hidden_dims") is not None:
        given["hidden_dims"] = _parse_dims(given["hidden_dims"])
    renamed = {"loss": "loss_type", "lr_decay": "scheduler_gamma"}
    for key, value in given.items():
        if value is None:
            continue
        name = renamed.get(key, key)
        section = next(s for s in (cfg.model, cfg.loss, cfg.train) if hasattr(s, name))
        setattr(section, name, value)
    return cfg


def _num(value: float) -> str:
    """Nats per image with one decimal; an MSE (the Gaussian's loss) with its significant digits."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


class TrainDisplay:
    """What `train` prints: its setup before epoch 1 (and a warning when the run is too short to learn), a
    bar in a terminal or a line every few seconds in a log, and one line per epoch with the test -ELBO.

    The bar lives for one epoch's batches and is gone before anything else is printed: a line written
    while a live bar redraws itself would be torn by the redraw.
    """

    def __init__(self, cfg: RunConfig, out: Path, resume: bool) -> None:
        self.cfg, self.out, self.resume = cfg, out, resume
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last = time.monotonic()

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Around the run: whatever ends it (done, an error, Ctrl-C), the bar is cleared first."""
        try:
            yield
        finally:
            self._stop_bar()

    def hooks(self) -> TrainHooks:
        from vaekit.train import TrainHooks

        return TrainHooks(on_setup=self.setup, progress=self.progress, on_epoch=self.epoch)

    def setup(self, s: Setup) -> None:
        m = self.cfg.model
        procs = f" x {s.processes} processes" if s.processes > 1 else ""
        for line in (
            f"data   {s.data}: {s.n_train} training and {s.n_test} test images of {'x'.join(map(str, s.image_shape))}",
            f"model  {m.arch} VAE, latent_dim {m.latent_dim}, {s.parameters:,} parameters, on {s.device}{procs}",
            f"steps  {s.steps_per_epoch} per epoch (batch {s.batch_size}) x {s.epochs} epochs -> {self.out}/",
        ):
            out_console.print(line, highlight=False)
        if s.saved_epoch:
            out_console.print(f"resuming from epoch {s.saved_epoch} of {s.epochs}", highlight=False)
        elif self.resume:
            out_console.print(f"no epoch of {self.out} was saved: starting it from its config.json", highlight=False)
        if warning := s.too_short():  # on stdout with the header: stderr stays for errors, one line each
            out_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
        self.last = time.monotonic()

    def progress(self, epoch: int, b: int, total: int, stats: dict[str, float]) -> None:
        text = f"loss {_num(stats['loss'])}  recon {_num(stats['recon'])}  kl {_num(stats['kld'])}"
        where = f"{epoch}/{self.cfg.train.epochs}"
        if self.tty:
            if self.bar is None:
                self._start_bar(total)
            self.bar.update(self.task, completed=b, epoch=where, stats=text)
        elif b < total and time.monotonic() - self.last >= PROGRESS_INTERVAL_S:  # a log: a line now and then
            out_console.print(f"epoch {where}  batch {b}/{total}  {text}", highlight=False)
            self.last = time.monotonic()

    def epoch(self, row: dict[str, Any]) -> None:
        self._stop_bar()
        out_console.print(
            f"epoch {row['epoch']}/{self.cfg.train.epochs}  train loss {_num(row['train_loss'])}  "
            f"test -ELBO {row['test_neg_elbo']:.2f} nats/image  {row['seconds']:.1f} s",
            highlight=False,
        )
        self.last = time.monotonic()

    def _start_bar(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        epoch, stats = TextColumn("epoch {task.fields[epoch]}"), TextColumn("{task.fields[stats]}")
        columns = (epoch, BarColumn(), MofNCompleteColumn(), stats, TimeRemainingColumn())
        self.bar = Progress(*columns, console=err_console, transient=True)
        self.task = self.bar.add_task("train", total=total, epoch="", stats="")
        self.bar.start()

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


MODEL, LOSS, OPTIMIZER, RUN = "Model", "Loss", "Optimizer", None  # run options join --help in "Options"


def _opt(help: str, panel: str | None) -> Any:
    """An option of `train`: defaults are written into its help, which keeps each to one line at 80 columns."""
    return typer.Option(help=help, show_default=False, rich_help_panel=panel)


@command(LEARN_PANEL)
def train(
    arch: Annotated[str | None, _opt("conv (AntixK beta-VAE; default) or mlp.", MODEL)] = None,
    image_size: Annotated[int | None, _opt(f"Square side ({_both('image_size')}).", MODEL)] = None,
    channels: Annotated[int | None, _opt("1, or 3 (default for folder data).", MODEL)] = None,
    latent_dim: Annotated[int | None, _opt(f"Size of z ({_both('latent_dim')}).", MODEL)] = None,
    hidden_dims: Annotated[str | None, _opt(f"Widths ({_both('hidden_dims')}).", MODEL)] = None,
    likelihood: Annotated[str | None, _opt("bernoulli (default) or gaussian.", MODEL)] = None,
    loss: Annotated[str | None, _opt("H (Higgins; default) or B (Burgess).", LOSS)] = None,
    beta: Annotated[float | None, _opt(f"KL weight of H ({_both('beta', 'loss')}).", LOSS)] = None,
    gamma: Annotated[float | None, _opt(f"Weight of |KL - C| in B ({_both('gamma', 'loss')}).", LOSS)] = None,
    capacity_max: Annotated[float | None, _opt(f"B: final C ({_both('capacity_max', 'loss')} nats).", LOSS)] = None,
    capacity_stop_iter: Annotated[
        int | None, _opt(f"B: steps to reach C ({_both('capacity_stop_iter', 'loss')}).", LOSS)
    ] = None,
    kld_weight: Annotated[float | None, _opt("Scale of KL (batch/N; bernoulli 1).", LOSS)] = None,
    epochs: Annotated[int | None, _opt(f"Epochs in all ({_both('epochs', 'train')}).", OPTIMIZER)] = None,
    batch_size: Annotated[int | None, _opt(f"Global batch ({_both('batch_size', 'train')}).", OPTIMIZER)] = None,
    lr: Annotated[float | None, _opt(f"Adam step ({_both('lr', 'train')}).", OPTIMIZER)] = None,
    lr_decay: Annotated[
        float | None, _opt(f"LR factor per epoch ({_both('scheduler_gamma', 'train')}).", OPTIMIZER)
    ] = None,
    seed: Annotated[int | None, _opt(f"Weights, shuffle, noise ({_both('seed', 'train')}).", OPTIMIZER)] = None,
    data: Annotated[str | None, _opt(f"digits|shapes|mnist:DIR|folder:DIR ({DEFAULT_DATA}).", RUN)] = None,
    out: Annotated[Path, _opt(f"Run directory ({DEFAULT_OUT}).", RUN)] = Path(DEFAULT_OUT),
    device: Annotated[str, _opt(f"{', '.join(TRAIN_DEVICES)} ({TRAIN_DEVICES[0]}).", RUN)] = TRAIN_DEVICES[0],
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.", rich_help_panel=RUN)] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run in --out.", rich_help_panel=RUN)
    ] = False,
    detect_anomaly: Annotated[
        bool, typer.Option("--detect-anomaly", help="Find the op that made a NaN (slow).", rich_help_panel=RUN)
    ] = False,
    checkpoint_every: Annotated[
        float, _opt(f"Seconds between checkpoints; 0: every epoch ({CHECKPOINT_INTERVAL_S:g}).", RUN)
    ] = CHECKPOINT_INTERVAL_S,
) -> None:
    """Train a VAE into --out (checkpoint, metrics, PNGs); Ctrl-C or SIGTERM keeps the last finished epoch."""
    from vaekit.checkpoint import load_config
    from vaekit.train import train as run_training

    given = {
        "image_size": image_size, "latent_dim": latent_dim, "hidden_dims": hidden_dims, "likelihood": likelihood,
        "loss": loss, "beta": beta, "gamma": gamma, "capacity_max": capacity_max,
        "capacity_stop_iter": capacity_stop_iter, "kld_weight": kld_weight, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "lr_decay": lr_decay, "seed": seed,
    }  # fmt: skip
    if resume:
        named = {"data": data, "arch": arch, "channels": channels, **given, "epochs": None}
        extra = sorted(k.replace("_", "-") for k, v in named.items() if v is not None)
        if extra:
            raise UsageError(f"--resume continues the saved config; drop --{', --'.join(extra)}")
        cfg = load_config(out)
        cfg.train.epochs = epochs if epochs is not None else cfg.train.epochs
    else:
        cfg = build_config(arch, data, channels, given)
    cfg.validate()
    display = TrainDisplay(cfg, out, resume)
    with display.live():
        history = run_training(
            cfg, out, resume=resume, overwrite=overwrite, device_name=device, detect_anomaly=detect_anomaly,
            hooks=display.hooks(), checkpoint_every=checkpoint_every,
        )  # fmt: skip
    if history:
        last = history[-1]
        out_console.print(
            f"[green]done[/] epoch {last['epoch']}: test -ELBO {last['test_neg_elbo']:.2f} nats/image "
            f"({last['images_per_s']:.0f} img/s) -> {out}/"
        )


@command(LEARN_PANEL, name="eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Run directory or model.safetensors.")] = Path(DEFAULT_OUT),
    data: Annotated[str | None, typer.Option(help="Data spec; default: the one the run trained on.")] = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    iwae_samples: Annotated[int, typer.Option(help="K importance samples for the IWAE bound.")] = 64,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help=", ".join(TRAIN_DEVICES) + ".")] = TRAIN_DEVICES[0],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    disentanglement: Annotated[
        bool, typer.Option("--disentanglement", help="MIG and SAP over every image of data with known factors.")
    ] = False,
    png: Annotated[Path | None, typer.Option(help="With --disentanglement: the labelled traversals.")] = None,
) -> None:
    """Negative ELBO and IWAE NLL in nats per image, comparable with the literature; or disentanglement."""
    if disentanglement:
        _disentanglement(checkpoint, data, device, as_json, png)
        return
    if png is not None:
        raise UsageError("--png draws the traversals of --disentanglement: add --disentanglement")
    from vaekit.evaluate import evaluate_run

    result = evaluate_run(checkpoint, data, split, iwae_samples, limit, seed, device)
    if as_json:
        print(json.dumps(result))
        return
    out_console.print(
        f"{split}: -ELBO {result['neg_elbo']:.2f} nats/image (recon {result['recon']:.2f} + KL {result['kld']:.2f}), "
        f"IWAE NLL (K={iwae_samples}) {result['iwae_nll']:.2f}, over {result['n_images']} images "
        f"x {result['pixels_counted']} pixels"
    )


def _disentanglement(checkpoint: Path, data: str | None, device: str, as_json: bool, png: Path | None) -> None:
    """MIG and SAP of a run (one line per factor, or JSON), and its traversals drawn by the PyTorch backend."""
    from vaekit.evaluate import disentanglement_run
    from vaekit.images import image_format, save_image

    if png is not None:
        image_format(png)  # a picture this cannot write is refused before any work
    report = disentanglement_run(checkpoint, data, device)
    if png is not None:
        from vaekit.model import pick_device
        from vaekit.runtimes.registry import load_decoder
        from vaekit.runtimes.traversal import traversal_picture

        decoder = load_decoder(checkpoint, pick_device(device).type)
        save_image(traversal_picture(decoder, report)[0], png)
    result = report.to_json()
    if as_json:
        print(json.dumps(result))
        return
    out_console.print(
        f"MIG {result['mig']:.3f} (active latents only {result['mig_active']:.3f}), SAP {result['sap']:.3f}, over "
        f"{result['n_images']} images; {result['active_latents']} of {len(result['latents'])} latents active, "
        f"KL {result['kld']:.2f} nats",
        highlight=False,
    )
    for name, row in result["per_factor"].items():
        out_console.print(
            f"  {name:<9} in dim {row['latent']} ({row['nmi']:.2f} of its information; next dim {row['runner_up']} "
            f"{row['runner_up_nmi']:.2f}): gap {row['mig_gap']:.3f}, SAP gap {row['sap_gap']:.3f}",
            highlight=False,
        )
    if png is not None:
        wrote(png)


@command(LEARN_PANEL)
def download(
    dataset: Annotated[str, typer.Argument(help="mnist")],
    dest: Annotated[Path, typer.Argument(help="Directory to put the files in.")],
    base_url: Annotated[str | None, typer.Option(help="Mirror to fetch from.")] = None,
) -> None:
    """Download a dataset with checksum verification (needs internet)."""
    from vaekit.data import MNIST_URL
    from vaekit.data import download as fetch

    if dataset != "mnist":
        raise UsageError(f"unknown dataset {dataset!r}: only mnist can be downloaded")
    dest = dest.expanduser()
    created, parts = not dest.exists(), set(dest.glob("*.part"))
    try:
        paths = fetch(dest, base_url or MNIST_URL)
    except BaseException:
        _remove_leftovers(dest, created, parts)
        raise
    out_console.print(f"[green]ok[/] {len(paths)} files verified in {dest}; use --data mnist:{dest}")


def _remove_leftovers(dest: Path, created: bool, parts: set[Path]) -> None:
    """A failed or interrupted download takes back its partial files, and the folder if it made it and
    nothing verified is in it: no empty folder to puzzle over, and a retry starts clean."""
    for part in set(dest.glob("*.part")) - parts:
        part.unlink(missing_ok=True)
    if created and dest.is_dir() and not any(dest.iterdir()):
        shutil.rmtree(dest, ignore_errors=True)
