"""Every default of vaekit lives here, as dataclasses that round-trip through config.json."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from vaekit.errors import VaekitError

Arch = Literal["conv", "mlp"]
Likelihood = Literal["bernoulli", "gaussian"]
LossType = Literal["H", "B"]

CONV_HIDDEN_DIMS = (32, 64, 128, 256)  # AntixK beta_vae.py uses (32, 64, 128, 256, 512) at 64x64
MLP_HIDDEN_DIMS = (400,)  # pytorch/examples vae: 784-400-20
DEFAULT_DATA = "digits"
DEFAULT_OUT = "runs/default"
DEFAULT_ARTIFACTS = "artifacts/default"
DEFAULT_MAX_BATCH = 64  # exported artifacts: batch 1..this (the TensorRT profile's max)
DEFAULT_CALIBRATION_IMAGES = 512  # int8 calibration
VALUE_RANGES: dict[str, tuple[float, float]] = {"bernoulli": (0.0, 1.0), "gaussian": (-1.0, 1.0)}
TRAIN_DEVICES = ("auto", "cpu", "cuda")  # torch devices `train` and `eval` take (cuda:N too)
# Sample pictures: training's samples.png and `vaekit generate` draw z with one rule (images.prior_latents)
# from this seed, so `vaekit generate --seed 0` on a run shows the digits its samples.png shows.
SAMPLE_COUNT = 64
SAMPLE_SEED = 0
# Fewer Adam steps than this in a whole run draws a warning before epoch 1: the conv VAE on digits still
# draws grey blobs after ~80 steps (3 epochs) and recognisable digits only after about 300; a user's 200
# images for 3 epochs (9 steps) gave grey checkerboards and no hint why.
MIN_USEFUL_STEPS = 300
# Without a terminal (logs, CI) training prints a progress line inside an epoch at most this often.
PROGRESS_INTERVAL_S = 5.0
# Training writes its checkpoint, metrics.jsonl and preview PNGs after the last epoch and in between once this
# many seconds passed since the last write (0: every epoch); Ctrl-C or SIGTERM writes the last finished epoch
# first, so only a SIGKILL or a power cut loses up to this much. Every epoch on the digits set cost ~60 ms of
# writes and drawing per 60 ms epoch.
CHECKPOINT_INTERVAL_S = 10.0

# A run directory (the checkpoint format): core writes it, the PyTorch runtime and export read it.
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.safetensors"
METRICS_FILE = "metrics.jsonl"
SAMPLES_PNG = "samples.png"
RECON_PNG = "reconstructions.png"
LOSS_PNG = "loss.png"
RUN_FILES = (CONFIG_FILE, MODEL_FILE, TRAINER_FILE, METRICS_FILE, SAMPLES_PNG, RECON_PNG, LOSS_PNG)


@dataclass
class ModelConfig:
    arch: Arch = "conv"
    in_channels: int = 1
    image_size: int = 32
    latent_dim: int = 16
    hidden_dims: tuple[int, ...] = CONV_HIDDEN_DIMS
    likelihood: Likelihood = "bernoulli"
    # Observation std of the Gaussian decoder, in the [-1, 1] data range. Training uses plain MSE
    # (as the reference does); eval needs a density to report nats, and this is the one it uses.
    gaussian_sigma: float = 0.1
    # Zero border added around the source images (MNIST 28 -> 32); eval counts only the pixels inside.
    pad: int = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def value_range(self) -> tuple[float, float]:
        return VALUE_RANGES[self.likelihood]

    def validate(self) -> None:
        if self.arch not in ("conv", "mlp"):
            raise VaekitError(f"unknown arch {self.arch!r}: use conv or mlp")
        if not isinstance(self.likelihood, str) or self.likelihood not in VALUE_RANGES:
            raise VaekitError(f"unknown likelihood {self.likelihood!r}: use bernoulli or gaussian")
        if self.latent_dim < 1 or self.image_size < 1 or self.in_channels not in (1, 3):
            raise VaekitError(
                f"bad model shape: latent_dim={self.latent_dim}, image_size={self.image_size}, "
                f"channels={self.in_channels} (channels must be 1 or 3)"
            )
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise VaekitError(f"hidden_dims must be positive, got {self.hidden_dims}")
        factor = 2 ** len(self.hidden_dims)
        if self.arch == "conv" and self.image_size % factor:
            nearest = max(1, round(self.image_size / factor)) * factor  # 30 -> 32, not 16
            raise VaekitError(
                f"image size {self.image_size} does not fit the conv arch: it must be divisible by "
                f"{factor} (2^{len(self.hidden_dims)} stride-2 stages); try {nearest}"
            )


@dataclass
class LossConfig:
    loss_type: LossType = "H"
    beta: float = 1.0  # Higgins et al.: beta > 1 trades reconstruction for disentanglement
    gamma: float = 1000.0  # Burgess et al.: weight of |KL - C|
    capacity_max: float = 25.0  # nats
    capacity_stop_iter: int = 100_000
    # None -> batch/N for the Gaussian (MSE-mean) loss as in AntixK's M_N, 1.0 for the Bernoulli loss,
    # whose reconstruction is summed over pixels so that loss = negative ELBO (pytorch/examples).
    kld_weight: float | None = None

    def validate(self) -> None:
        if self.loss_type not in ("H", "B"):
            raise VaekitError(f"unknown loss {self.loss_type!r}: use H (Higgins) or B (Burgess)")
        if self.beta < 0 or self.gamma < 0 or self.capacity_max < 0 or self.capacity_stop_iter < 1:
            raise VaekitError("beta, gamma and capacity must be >= 0 and capacity-stop-iter >= 1")


@dataclass
class TrainConfig:
    data: str = DEFAULT_DATA
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3  # AntixK's LR
    weight_decay: float = 0.0
    scheduler_gamma: float = 0.95  # AntixK's ExponentialLR gamma
    seed: int = 0
    test_fraction: float = 0.1
    amp: bool = True  # only takes effect on CUDA

    def validate(self) -> None:
        if self.epochs < 1:
            raise VaekitError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise VaekitError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise VaekitError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.scheduler_gamma <= 1:
            raise VaekitError(f"--lr-decay must be in (0, 1], got {self.scheduler_gamma}")
        if not 0 < self.test_fraction < 1:
            raise VaekitError(f"test fraction must be in (0, 1), got {self.test_fraction}")


_JSON_TYPES: dict[str, Any] = {
    "int": int, "float": (int, float), "str": str, "bool": bool, "float | None": (int, float, type(None)),
}  # fmt: skip


def _check_types(section: Any) -> None:
    """config.json may say "4" where 4 belongs: name the field instead of failing inside validate()."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        wanted = int if f.name == "hidden_dims" else _JSON_TYPES.get(str(f.type))
        if wanted is None:
            continue  # Literal and Optional fields: validate() names those
        for v in value if f.name == "hidden_dims" else (value,):
            if not isinstance(v, wanted) or (isinstance(v, bool) and wanted is not bool):
                raise VaekitError(f"config field {f.name} must be {f.type}, got {value!r}")


@dataclass
class RunConfig:
    """A whole run; `preset(arch)` gives the defaults of each architecture."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: str = ""

    def validate(self) -> None:
        self.model.validate()
        self.loss.validate()
        self.train.validate()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        try:
            model = dict(raw["model"])
            model["hidden_dims"] = tuple(model["hidden_dims"])
            cfg = cls(
                model=ModelConfig(**model),
                loss=LossConfig(**raw["loss"]),
                train=TrainConfig(**raw["train"]),
                version=str(raw.get("version", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VaekitError(f"config does not describe a vaekit run: {exc}") from None
        for section in (cfg.model, cfg.loss, cfg.train):
            _check_types(section)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of over 4300 digits
            raise VaekitError(f"config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise VaekitError("config is not a JSON object")
        return cls.from_dict(raw)


@dataclass(frozen=True)
class Setup:
    """What a run is about to do: the header a person reads before epoch 1."""

    data: str
    n_train: int
    n_test: int
    image_shape: tuple[int, int, int]
    parameters: int
    device: str
    processes: int
    batch_size: int
    steps_per_epoch: int
    saved_epoch: int  # epochs a resume starts after (0: a fresh start)
    epochs: int

    def too_short(self) -> str:
        """A warning when the whole run has too few optimizer steps to learn anything ('' when it has enough)."""
        total = self.steps_per_epoch * self.epochs
        if total >= MIN_USEFUL_STEPS:
            return ""
        epochs = math.ceil(MIN_USEFUL_STEPS / self.steps_per_epoch)
        return (
            f"{total} optimizer steps in all ({self.n_train} images / batch {self.batch_size} = "
            f"{self.steps_per_epoch} per epoch x {self.epochs} epochs) are too few to learn much (digits take about "
            f"{MIN_USEFUL_STEPS}): try --epochs {epochs}, a smaller --batch-size or more images"
        )


def preset(arch: str) -> RunConfig:
    """The defaults of an architecture: AntixK's for conv, pytorch/examples' (784-400-20, Adam 1e-3, batch
    128, constant LR) for the MLP."""
    cfg = RunConfig()
    if arch == "mlp":
        cfg.model.arch = "mlp"
        cfg.model.image_size, cfg.model.latent_dim, cfg.model.hidden_dims = 28, 20, MLP_HIDDEN_DIMS
        cfg.train.batch_size, cfg.train.lr, cfg.train.scheduler_gamma = 128, 1e-3, 1.0
    elif arch != "conv":
        raise VaekitError(f"unknown arch {arch!r}: use conv or mlp")
    return cfg
