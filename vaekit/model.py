"""The VAEs: AntixK's conv beta-VAE (any square size, any channel count) and the pytorch/examples MLP.

Both read like the paper: encode -> reparameterize -> decode -> loss. The decoder's last layer gives
*raw* outputs (Bernoulli logits, or pre-tanh values for the Gaussian); `decode` applies the output
activation so callers get images in the model's value range, and the loss works on the raw values
for numerical stability (BCE with logits).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import SAMPLE_SEED, LossConfig, ModelConfig
from vaekit.errors import VaekitError
from vaekit.images import prior_latents


@dataclass
class LossTerms:
    loss: Tensor  # what the optimizer minimizes
    recon: Tensor  # mean over the batch
    kld: Tensor  # mean over the batch, nats per image


def kl_divergence(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image, closed form (Kingma & Welling, appendix B)."""
    return -0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1)


class VAE(nn.Module):
    """Shared arithmetic; subclasses provide `encode` and `decode_raw`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode_raw(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raw = self.decode_raw(z)
        return torch.sigmoid(raw) if self.cfg.likelihood == "bernoulli" else torch.tanh(raw)

    @staticmethod
    def reparameterize(mu: Tensor, log_var: Tensor, eps: Tensor | None = None) -> Tensor:
        """z = mu + sigma * eps keeps the sample differentiable in mu and log_var.

        eps: given by callers that control the noise (training draws it per global batch, evaluation K
        samples per image); drawn here otherwise.
        """
        std = torch.exp(0.5 * log_var)
        return mu + std * (torch.randn_like(std) if eps is None else eps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (raw decoder output, mu, log_var) for one posterior sample per image."""
        mu, log_var = self.encode(x)
        return self.decode_raw(self.reparameterize(mu, log_var)), mu, log_var

    def sample(self, n: int, device: torch.device | str = "cpu", seed: int = SAMPLE_SEED) -> Tensor:
        """Decode n draws of z ~ N(0, I) made by the one rule of sample pictures (`prior_latents`), so a
        seed shows the same images here and in `vaekit generate`."""
        z = torch.from_numpy(prior_latents(n, self.cfg.latent_dim, seed)).to(device)
        return self.decode(z)

    def recon_nll(self, raw: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) per image in nats, over the pixels inside the padding border."""
        p = self.cfg.pad
        if p:
            raw, x = raw[..., p:-p, p:-p], x[..., p:-p, p:-p]
        if self.cfg.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(raw, x, reduction="none")
        else:
            sigma = self.cfg.gaussian_sigma
            err = (torch.tanh(raw) - x) ** 2
            nll = err / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(dim=1)

    def loss_function(
        self,
        raw: Tensor,
        x: Tensor,
        mu: Tensor,
        log_var: Tensor,
        loss_cfg: LossConfig,
        kld_weight: float,
        step: int,
    ) -> LossTerms:
        """beta-VAE loss: Higgins 'H' (beta * KL) or Burgess 'B' (gamma * |KL - C|, C growing to C_max)."""
        if self.cfg.likelihood == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(raw, x, reduction="sum") / x.shape[0]
        else:
            recon = F.mse_loss(torch.tanh(raw), x)  # AntixK: per-pixel mean
        kld = kl_divergence(mu, log_var).mean()
        if loss_cfg.loss_type == "H":
            loss = recon + loss_cfg.beta * kld_weight * kld
        else:
            c = min(loss_cfg.capacity_max, loss_cfg.capacity_max * step / loss_cfg.capacity_stop_iter)
            loss = recon + loss_cfg.gamma * kld_weight * (kld - c).abs()
        return LossTerms(loss=loss, recon=recon, kld=kld)


class ConvVAE(VAE):
    """AntixK's BetaVAE: k3/s2 Conv+BN+LeakyReLU stages, fc_mu/fc_var, mirrored ConvTranspose decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        dims = list(cfg.hidden_dims)
        self.final_size = cfg.image_size // 2 ** len(dims)
        flat = dims[-1] * self.final_size**2

        stages: list[nn.Module] = []
        in_ch = cfg.in_channels
        for h in dims:
            stages += [nn.Conv2d(in_ch, h, 3, stride=2, padding=1), nn.BatchNorm2d(h), nn.LeakyReLU()]
            in_ch = h
        self.encoder = nn.Sequential(*stages)
        self.fc_mu = nn.Linear(flat, cfg.latent_dim)
        self.fc_var = nn.Linear(flat, cfg.latent_dim)

        self.decoder_input = nn.Linear(cfg.latent_dim, flat)
        rev = dims[::-1]
        up: list[nn.Module] = []
        for a, b in itertools.pairwise(rev):
            up += [
                nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(b),
                nn.LeakyReLU(),
            ]
        self.decoder = nn.Sequential(*up)
        # The last upsampling stage, then a 3x3 conv down to image channels (no activation: see decode).
        self.final_layer = nn.Sequential(
            nn.ConvTranspose2d(rev[-1], rev[-1], 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(rev[-1]),
            nn.LeakyReLU(),
            nn.Conv2d(rev[-1], cfg.in_channels, 3, padding=1),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # reshape(-1, K), not flatten: a reshape with a symbolic batch keeps ExecuTorch's XNNPACK graph whole
        h = self.encoder(x).reshape(-1, self.fc_mu.in_features)
        return self.fc_mu(h), self.fc_var(h)

    def decode_raw(self, z: Tensor) -> Tensor:
        h = self.decoder_input(z).view(-1, self.cfg.hidden_dims[-1], self.final_size, self.final_size)
        return self.final_layer(self.decoder(h))


class MLPVAE(VAE):
    """pytorch/examples' VAE (784-400-20 on MNIST), for any image shape."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        n_pixels = cfg.in_channels * cfg.image_size**2
        hidden = cfg.hidden_dims[0]
        self.fc1 = nn.Linear(n_pixels, hidden)
        self.fc_mu = nn.Linear(hidden, cfg.latent_dim)
        self.fc_var = nn.Linear(hidden, cfg.latent_dim)
        self.fc3 = nn.Linear(cfg.latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, n_pixels)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(x.reshape(-1, self.fc1.in_features)))
        return self.fc_mu(h), self.fc_var(h)

    def decode_raw(self, z: Tensor) -> Tensor:
        return self.fc4(F.relu(self.fc3(z))).view(-1, *self.cfg.image_shape)


def build_model(cfg: ModelConfig) -> VAE:
    return ConvVAE(cfg) if cfg.arch == "conv" else MLPVAE(cfg)


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model's state, by name and shape, built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        skeleton = ConvVAE(cfg) if cfg.arch == "conv" else MLPVAE(cfg)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


def available_memory() -> int | None:
    """Bytes the OS can still give this process (MemAvailable), or None where it does not say."""
    try:
        for line in open("/proc/meminfo").read().splitlines():  # noqa: SIM115
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(cfg: ModelConfig, copies: int) -> None:
    """Refuse, before any allocation, a config whose parameters alone cannot fit in memory: copies = float
    tensors kept per parameter (4 to train with Adam: weights, gradients, two moments)."""
    params = sum(math.prod(shape) for shape in parameter_shapes(cfg).values())
    need, free = params * 4 * copies, available_memory()
    if free is not None and need > free:
        raise VaekitError(
            f"this model has {params:,} parameters ({need / 2**30:.1f} GiB as float32 to "
            f"{'train' if copies > 1 else 'load'}) but {free / 2**30:.1f} GiB is available: check latent_dim, "
            "hidden_dims, image_size and in_channels in the config"
        )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise VaekitError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaekitError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(name)
