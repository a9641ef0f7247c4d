"""Learning commands: train, eval, download. Defaults shown in --help are read from config.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vaekit.cli.app import LEARN_PANEL, command, err_console, out_console
from vaekit.config import DEFAULT_DATA, DEFAULT_OUT, TRAIN_DEVICES, RunConfig, preset
from vaekit.errors import UsageError

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


@command(LEARN_PANEL)
def train(
    data: Annotated[
        str | None, typer.Option(help="digits | shapes | mnist:DIR | folder:DIR", show_default=DEFAULT_DATA)
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics, PNGs).")] = Path(DEFAULT_OUT),
    arch: Annotated[
        str | None, typer.Option(help="conv (AntixK beta-VAE) or mlp (pytorch/examples).", show_default=CONV.model.arch)
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Square image side.", show_default=_both("image_size"))] = None,
    channels: Annotated[int | None, typer.Option(help="1 or 3 (folder data only).", show_default="1, folder 3")] = None,
    latent_dim: Annotated[int | None, typer.Option(help="Size of z.", show_default=_both("latent_dim"))] = None,
    hidden_dims: Annotated[
        str | None, typer.Option(help="Comma-separated widths.", show_default=_both("hidden_dims"))
    ] = None,
    likelihood: Annotated[
        str | None,
        typer.Option(help="bernoulli (BCE, [0,1]) or gaussian (MSE, [-1,1]).", show_default=CONV.model.likelihood),
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="H (Higgins beta) or B (Burgess capacity).", show_default=CONV.loss.loss_type)
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="KL weight of the H loss.", show_default=_both("beta", "loss"))
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="Weight of |KL - C| in the B loss.", show_default=_both("gamma", "loss"))
    ] = None,
    capacity_max: Annotated[
        float | None, typer.Option(help="B loss: final capacity C (nats).", show_default=_both("capacity_max", "loss"))
    ] = None,
    capacity_stop_iter: Annotated[
        int | None,
        typer.Option(help="B loss: steps until C reaches its max.", show_default=_both("capacity_stop_iter", "loss")),
    ] = None,
    kld_weight: Annotated[
        float | None, typer.Option(help="Override the KL scale.", show_default="batch/N gaussian, 1 bernoulli")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Epochs in total (with --resume: train on to this many).", show_default=_both("epochs", "train")
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Global batch size.", show_default=_both("batch_size", "train"))
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.", show_default=_both("lr", "train"))] = None,
    lr_decay: Annotated[
        float | None,
        typer.Option(
            help="ExponentialLR gamma per epoch (1 = constant LR).", show_default=_both("scheduler_gamma", "train")
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, shuffling and noise.", show_default=_both("seed", "train"))
    ] = None,
    device: Annotated[str, typer.Option(help=", ".join(TRAIN_DEVICES) + ".")] = TRAIN_DEVICES[0],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over, replacing the run in --out.")] = False,
    detect_anomaly: Annotated[
        bool, typer.Option("--detect-anomaly", help="torch anomaly detection (slow; finds the op that made a NaN).")
    ] = False,
) -> None:
    """Train a VAE; checkpoints, metrics.jsonl and sample/reconstruction/loss PNGs land in --out each epoch."""
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
    history = _train_with_progress(cfg, out, resume, overwrite, device, detect_anomaly, run_training)
    if history:
        last = history[-1]
        out_console.print(
            f"[green]done[/] epoch {last['epoch']}: test -ELBO {last['test_neg_elbo']:.2f} nats/image "
            f"({last['images_per_s']:.0f} img/s) -> {out}/"
        )


def _train_with_progress(
    cfg: RunConfig, out: Path, resume: bool, overwrite: bool, device: str, detect_anomaly: bool, run: Any
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    )
    tty = sys.stderr.isatty()
    with Progress(*columns, console=err_console, transient=False, disable=not tty) as bar:
        task = bar.add_task("train", total=None, epoch="", stats="")

        def report(epoch: int, b: int, total: int, stats: dict[str, float]) -> None:
            text = f"loss {stats['loss']:.3f}  recon {stats['recon']:.3f}  kl {stats['kld']:.2f}"
            if b == 1:
                bar.reset(task, total=total)
            bar.update(task, completed=b, epoch=f"{epoch}/{cfg.train.epochs}", stats=text)
            if not tty and b == total:  # logs and CI get one line per epoch instead of a bar
                out_console.print(f"epoch {epoch}/{cfg.train.epochs}  {text}", highlight=False)

        return run(
            cfg, out, resume=resume, overwrite=overwrite, device_name=device, detect_anomaly=detect_anomaly,
            progress=report,
        )  # fmt: skip


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
) -> None:
    """Negative ELBO and IWAE NLL in nats per image, comparable with the literature."""
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
    paths = fetch(dest.expanduser(), base_url or MNIST_URL)
    out_console.print(f"[green]ok[/] {len(paths)} files verified in {dest}; use --data mnist:{dest}")
