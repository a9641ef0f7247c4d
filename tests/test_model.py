from __future__ import annotations

import math

import pytest
import torch

from vaekit.config import LossConfig, ModelConfig
from vaekit.errors import VaekitError
from vaekit.model import build_model, kl_divergence


@pytest.mark.parametrize(
    ("arch", "size", "channels", "hidden"),
    [
        ("conv", 16, 1, (8, 16)),
        ("conv", 32, 3, (8, 16, 32)),
        ("conv", 64, 3, (8, 16, 32, 32, 32)),
        ("mlp", 28, 1, (400,)),
        ("mlp", 8, 3, (16,)),
    ],
)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_and_value_range(arch: str, size: int, channels: int, hidden: tuple[int, ...], likelihood: str) -> None:
    cfg = ModelConfig(
        arch=arch,
        image_size=size,
        in_channels=channels,
        latent_dim=5,
        hidden_dims=hidden,
        likelihood=likelihood,
    )  # type: ignore[arg-type]
    model = build_model(cfg).eval()
    x = torch.rand(3, channels, size, size)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (3, 5)
    raw, mu2, _ = model(x)
    assert raw.shape == x.shape
    torch.testing.assert_close(mu, mu2)
    images = model.sample(4)
    assert images.shape == (4, channels, size, size)
    lo, hi = cfg.value_range
    assert images.min() >= lo and images.max() <= hi


def test_conv_rejects_size_it_cannot_take() -> None:
    with pytest.raises(VaekitError, match=r"divisible by 16"):
        build_model(ModelConfig(image_size=30))


def test_kl_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 3, generator=gen)
    log_var = torch.randn(2, 3, generator=gen) * 0.5
    std = (0.5 * log_var).exp()
    z = mu + std * torch.randn(200_000, 2, 3, generator=gen)
    log_q = (-0.5 * ((z - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(kl_divergence(mu, log_var), mc, atol=0.02, rtol=0.01)


def test_reparameterization_gradients_reach_mu_and_log_var() -> None:
    mu = torch.zeros(4, 3, requires_grad=True)
    log_var = torch.zeros(4, 3, requires_grad=True)
    z = build_model(ModelConfig(image_size=16, hidden_dims=(8, 16), latent_dim=3)).reparameterize(mu, log_var)
    (z**2).sum().backward()
    assert mu.grad is not None and log_var.grad is not None
    assert mu.grad.abs().sum() > 0 and log_var.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["H", "B"])
def test_a_few_steps_lower_the_loss_on_real_data(loss_type: str, digits16) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, hidden_dims=(8, 16), latent_dim=4)
    model = build_model(cfg)
    loss_cfg = LossConfig(loss_type=loss_type, gamma=10.0, capacity_stop_iter=100)  # type: ignore[arg-type]
    x = torch.from_numpy(digits16.train[:64]).float() / 255
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_at(step: int) -> torch.Tensor:
        raw, mu, log_var = model(x)
        return model.loss_function(raw, x, mu, log_var, loss_cfg, 1.0, step).loss

    torch.manual_seed(1)
    with torch.no_grad():
        model.eval()
        before = loss_at(0).item()
    model.train()
    for step in range(30):
        opt.zero_grad()
        loss_at(step).backward()
        opt.step()
    torch.manual_seed(1)
    with torch.no_grad():
        model.eval()
        after = loss_at(0).item()
    assert after < 0.85 * before


def test_burgess_capacity_grows_then_saturates() -> None:
    model = build_model(ModelConfig(image_size=16, hidden_dims=(8, 16), latent_dim=2))
    x = torch.full((1, 1, 16, 16), 0.5)
    raw = torch.zeros_like(x)
    mu, log_var = torch.zeros(1, 2), torch.zeros(1, 2)  # KL = 0, so the loss term is gamma * C
    cfg = LossConfig(loss_type="B", gamma=2.0, capacity_max=10.0, capacity_stop_iter=100)
    recon = model.loss_function(raw, x, mu, log_var, cfg, 1.0, 0).recon.item()
    assert model.loss_function(raw, x, mu, log_var, cfg, 1.0, 50).loss.item() == pytest.approx(recon + 2.0 * 5.0)
    assert model.loss_function(raw, x, mu, log_var, cfg, 1.0, 1000).loss.item() == pytest.approx(recon + 2.0 * 10.0)
