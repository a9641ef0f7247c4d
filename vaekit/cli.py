"""The `vaekit` command line: parses, calls the library, prints. Heavy imports happen inside commands."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vaekit.config import DEFAULT_DATA, DEFAULT_OUT, MLP_HIDDEN_DIMS
from vaekit.errors import UsageError, VaekitError

app = typer.Typer(
    help="Train a VAE, export it to ONNX / TensorRT, and prove the deployed artifacts compute what the model does.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Not a terminal (CI logs, pipes): wide enough that parity tables keep their columns.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

TRAIN_PANEL = "Learn"
DEPLOY_PANEL = "Deploy"


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def command(panel: str, **kwargs: Any) -> Callable[[F], F]:
    """app.command that turns user errors into one red line and a non-zero exit, never a traceback."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except VaekitError as exc:
                raise fail(str(exc), exc.exit_code) from None
            except MemoryError:
                raise fail("out of memory: try a smaller --batch-size") from None
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise fail(f"{exc.strerror or exc}{where}") from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None

        app.command(rich_help_panel=panel, **kwargs)(wrapper)
        return fn

    return decorate


def require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise VaekitError(f"`vaekit {what}` needs PyTorch: pip install 'vaekit[train]'") from None


def _pick(given: Any, default: Any) -> Any:
    return default if given is None else given


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--hidden-dims takes comma-separated integers, got {text!r}") from None
    return dims


@command(TRAIN_PANEL)
def train(
    data: Annotated[
        str | None, typer.Option(help="digits | shapes | mnist:DIR | folder:DIR", show_default=DEFAULT_DATA)
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics, PNGs).")] = Path(DEFAULT_OUT),
    arch: Annotated[
        str | None,
        typer.Option(help="conv (AntixK beta-VAE) or mlp (pytorch/examples).", show_default="conv"),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Square image side.", show_default="32 conv, 28 mlp")] = None,
    channels: Annotated[int | None, typer.Option(help="1 or 3 (folder data only).", show_default="1, folder 3")] = None,
    latent_dim: Annotated[int | None, typer.Option(help="Size of z.", show_default="16 conv, 20 mlp")] = None,
    hidden_dims: Annotated[
        str | None, typer.Option(help="Comma-separated widths.", show_default="32,64,128,256 conv; 400 mlp")
    ] = None,
    likelihood: Annotated[
        str | None,
        typer.Option(help="bernoulli (BCE, [0,1]) or gaussian (MSE, [-1,1]).", show_default="bernoulli"),
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="H (Higgins beta) or B (Burgess capacity).", show_default="H")
    ] = None,
    beta: Annotated[float | None, typer.Option(help="KL weight of the H loss.", show_default="1.0")] = None,
    gamma: Annotated[float | None, typer.Option(help="Weight of |KL - C| in the B loss.", show_default="1000")] = None,
    capacity_max: Annotated[
        float | None, typer.Option(help="B loss: final capacity C (nats).", show_default="25")
    ] = None,
    capacity_stop_iter: Annotated[
        int | None, typer.Option(help="B loss: steps until C reaches its max.", show_default="100000")
    ] = None,
    kld_weight: Annotated[
        float | None,
        typer.Option(help="Override the KL scale.", show_default="batch/N gaussian, 1 bernoulli"),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs in total (with --resume: train on to this many).", show_default="30"),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.", show_default="64 conv, 128 mlp")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.", show_default="5e-3 conv, 1e-3 mlp")] = None,
    lr_decay: Annotated[
        float | None,
        typer.Option(help="ExponentialLR gamma per epoch (1 = constant LR).", show_default="0.95 conv, 1 mlp"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling and noise.", show_default="0")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over, replacing the run in --out.")] = False,
    detect_anomaly: Annotated[
        bool, typer.Option(help="torch anomaly detection (slow; finds the op that made a NaN).")
    ] = False,
) -> None:
    """Train a VAE; checkpoints, metrics.jsonl and sample/reconstruction/loss PNGs land in --out each epoch."""
    require_torch("train")
    from vaekit.checkpoint import load_config
    from vaekit.config import RunConfig
    from vaekit.train import train as run_training

    explicit = {
        "data": data, "arch": arch, "image_size": image_size, "channels": channels, "latent_dim": latent_dim,
        "hidden_dims": hidden_dims, "likelihood": likelihood, "loss": loss, "beta": beta, "gamma": gamma,
        "capacity_max": capacity_max, "capacity_stop_iter": capacity_stop_iter, "kld_weight": kld_weight,
        "batch_size": batch_size, "lr": lr, "lr_decay": lr_decay, "seed": seed,
    }  # fmt: skip
    if resume:
        given = sorted(k.replace("_", "-") for k, v in explicit.items() if v is not None)
        if given:
            raise UsageError(f"--resume continues the saved config; drop --{', --'.join(given)}")
        cfg = load_config(out)
        if epochs is not None:
            cfg.train.epochs = epochs
    else:
        cfg = RunConfig()
        m, lc, tc = cfg.model, cfg.loss, cfg.train
        m.arch = _pick(arch, m.arch)
        if m.arch == "mlp":  # pytorch/examples' settings; the conv defaults are AntixK's
            m.image_size, m.latent_dim, m.hidden_dims = 28, 20, MLP_HIDDEN_DIMS
            tc.batch_size, tc.lr, tc.scheduler_gamma = 128, 1e-3, 1.0
        m.image_size = _pick(image_size, m.image_size)
        m.latent_dim = _pick(latent_dim, m.latent_dim)
        m.hidden_dims = _parse_dims(hidden_dims) if hidden_dims is not None else m.hidden_dims
        m.likelihood = _pick(likelihood, m.likelihood)
        tc.data = _pick(data, tc.data)
        m.in_channels = _pick(channels, 3 if tc.data.startswith("folder:") else 1)
        lc.loss_type = _pick(loss, lc.loss_type)
        lc.beta = _pick(beta, lc.beta)
        lc.gamma = _pick(gamma, lc.gamma)
        lc.capacity_max = _pick(capacity_max, lc.capacity_max)
        lc.capacity_stop_iter = _pick(capacity_stop_iter, lc.capacity_stop_iter)
        lc.kld_weight = kld_weight
        tc.epochs = _pick(epochs, tc.epochs)
        tc.batch_size = _pick(batch_size, tc.batch_size)
        tc.lr = _pick(lr, tc.lr)
        tc.scheduler_gamma = _pick(lr_decay, tc.scheduler_gamma)
        tc.seed = _pick(seed, tc.seed)
    cfg.validate()
    history = _train_with_progress(cfg, out, resume, overwrite, device, detect_anomaly, run_training)
    if history:
        last = history[-1]
        out_console.print(
            f"[green]done[/] epoch {last['epoch']}: test -ELBO {last['test_neg_elbo']:.2f} nats/image "
            f"({last['images_per_s']:.0f} img/s) -> {out}/"
        )


def _train_with_progress(
    cfg: Any, out: Path, resume: bool, overwrite: bool, device: str, detect_anomaly: bool, run: Any
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
            cfg,
            out,
            resume=resume,
            overwrite=overwrite,
            device_name=device,
            detect_anomaly=detect_anomaly,
            progress=report,
        )


@command(TRAIN_PANEL, name="eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Run directory or model.safetensors.")] = Path(DEFAULT_OUT),
    data: Annotated[str | None, typer.Option(help="Data spec; default: the one the run trained on.")] = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    iwae_samples: Annotated[int, typer.Option(help="K importance samples for the IWAE bound.")] = 64,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Negative ELBO and IWAE NLL in nats per image, comparable with the literature."""
    require_torch("eval")
    from vaekit.checkpoint import load_model
    from vaekit.data import load_data
    from vaekit.evaluate import evaluate
    from vaekit.train import pick_device

    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train, got {split!r}")
    if iwae_samples < 1 or (limit is not None and limit < 1):
        raise UsageError("--iwae-samples and --limit must be >= 1")
    dev = pick_device(device)
    model, cfg = load_model(checkpoint, dev)
    d = load_data(data or cfg.train.data, cfg.model.image_size, cfg.model.in_channels, cfg.train.test_fraction)
    if d.pad != cfg.model.pad:
        raise VaekitError(f"this data is padded by {d.pad}px but the model was trained with {cfg.model.pad}px")
    images = (d.test if split == "test" else d.train)[:limit]
    result = evaluate(model, images, iwae_samples=iwae_samples, seed=seed, device=dev)
    result["split"] = split  # type: ignore[assignment]
    if as_json:
        print(json.dumps(result))
        return
    out_console.print(
        f"{split}: -ELBO {result['neg_elbo']:.2f} nats/image (recon {result['recon']:.2f} + KL {result['kld']:.2f}), "
        f"IWAE NLL (K={iwae_samples}) {result['iwae_nll']:.2f}, over {result['n_images']} images "
        f"x {result['pixels_counted']} pixels"
    )


@command(TRAIN_PANEL)
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


def main() -> None:
    app()


# Deploy-side commands register themselves on `app` (a separate module keeps each file small).
from vaekit import cli_bench, cli_deploy, cli_trt  # noqa: E402, F401
