"""Training quality and speed: vaekit vs a plain reference loop, and conv vs MLP, at equal epochs.

    python benchmarks/quality.py --data mnist:~/mnist --epochs 10      # the issue's MNIST setting
    python benchmarks/quality.py --data digits --epochs 30             # offline proxy on the embedded digits

The reference loop is the textbook MLP VAE (784-400-20, Adam 1e-3, batch 128, Bernoulli likelihood,
loss = BCE summed over pixels + KL) written out with nothing but torch. Both models are scored by the
same estimator (vaekit.evaluate: negative ELBO in nats per image over the original pixels), on the
same deterministic split. The conv model sees the 28x28 images zero-padded to 32x32 and is scored on
the original 784 pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaekit.config import LossConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data import ImageData, load_data
from vaekit.evaluate import evaluate
from vaekit.model import MLPVAE
from vaekit.train import train

SIZE = 28


class PlainVAE(nn.Module):
    """The textbook MLP VAE, kept independent of vaekit's model code."""

    def __init__(self, latent: int = 20, hidden: int = 400) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


def reference_loop(data: ImageData, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """Returns the trained model and its training throughput (images/s)."""
    torch.manual_seed(seed)
    model = PlainVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = torch.from_numpy(data.train).float() / 255.0
    loader = torch.utils.data.DataLoader(x_all, batch_size=128, shuffle=True)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x in loader:
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (bce + kld) / x.shape[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += x.shape[0]
    return model, seen / (time.perf_counter() - t0)


def as_vaekit(plain: nn.Module) -> MLPVAE:
    """Copy the reference weights into vaekit's MLP so both are scored by the same estimator."""
    model = MLPVAE(ModelConfig(arch="mlp", image_size=SIZE, latent_dim=20, hidden_dims=(400,)))
    names = {"fc21": "fc_mu", "fc22": "fc_var"}
    model.load_state_dict(
        {names.get(k.split(".")[0], k.split(".")[0]) + "." + k.split(".")[1]: v for k, v in plain.state_dict().items()}
    )
    return model.eval()


def vaekit_run(data: ImageData, cfg: RunConfig, out: Path) -> tuple[float, float]:
    history = train(cfg, out, data=data, device_name="cpu")
    from vaekit.checkpoint import load_model

    model, _ = load_model(out)
    rate = float(np.mean([h["images_per_s"] for h in history]))
    return evaluate(model, data.test, iwae_samples=1)["neg_elbo"], rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    args = parser.parse_args()

    mnist = load_data(args.data, SIZE)
    flat = ImageData(train=mnist.train[: args.limit], test=mnist.test)
    widths = ((0, 0), (0, 0), (2, 2), (2, 2))
    padded = ImageData(train=np.pad(flat.train, widths), test=np.pad(flat.test, widths), pad=2)

    ref_model, ref_rate = reference_loop(flat, args.epochs, args.seed)
    ref_nelbo = evaluate(as_vaekit(ref_model), flat.test)["neg_elbo"]
    with TemporaryDirectory() as tmp:
        mlp = RunConfig(
            model=ModelConfig(arch="mlp", image_size=SIZE, latent_dim=20, hidden_dims=(400,)),
            loss=LossConfig(),
            # pytorch/examples settings: constant learning rate
            train=TrainConfig(
                data=args.data, epochs=args.epochs, batch_size=128, lr=1e-3, scheduler_gamma=1.0, seed=args.seed
            ),
        )
        mlp_nelbo, mlp_rate = vaekit_run(flat, mlp, Path(tmp) / "mlp")
        conv = RunConfig(
            model=ModelConfig(arch="conv", image_size=32, latent_dim=20),
            loss=LossConfig(),
            train=TrainConfig(
                data=args.data, epochs=args.epochs, batch_size=128, lr=1e-3, scheduler_gamma=1.0, seed=args.seed
            ),
        )
        conv_nelbo, conv_rate = vaekit_run(padded, conv, Path(tmp) / "conv")
    result = {
        "data": args.data,
        "train_images": len(flat.train),
        "test_images": len(flat.test),
        "epochs": args.epochs,
        "reference_mlp": {"test_neg_elbo": ref_nelbo, "train_images_per_s": ref_rate},
        "vaekit_mlp": {"test_neg_elbo": mlp_nelbo, "train_images_per_s": mlp_rate},
        "vaekit_conv": {"test_neg_elbo": conv_nelbo, "train_images_per_s": conv_rate},
        "mlp_no_worse_than_reference": mlp_nelbo <= ref_nelbo,
        "mlp_throughput_ratio": mlp_rate / ref_rate,
        "conv_gain_nats": mlp_nelbo - conv_nelbo,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
