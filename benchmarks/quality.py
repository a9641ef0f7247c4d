"""Training quality and speed: vaekit vs a plain reference loop, and conv vs MLP, at equal epochs.

Speed is wall time for the same data and epochs: the bare loop (train steps only) and the pytorch/examples
loop (train steps, then the test set scored every epoch, as its `test()` does) against `vaekit.train`
(which also checkpoints every epoch and redraws its preview pictures). torch's one-time imports are paid
before any loop starts, so none of them is charged for them.

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

from vaekit.checkpoint import load_model
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


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits, mu, logvar = model(x)
    bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.shape[0]


def reference_loop(data: ImageData, epochs: int, seed: int, test_each_epoch: bool) -> tuple[nn.Module, float, float]:
    """Returns the trained model, its training throughput (images/s over the train steps) and its wall time."""
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model = PlainVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = torch.from_numpy(data.train).float() / 255.0
    x_test = torch.from_numpy(data.test).float() / 255.0
    loader = torch.utils.data.DataLoader(x_all, batch_size=128, shuffle=True)
    seen, in_steps = 0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x in loader:
            loss = _loss(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += x.shape[0]
        in_steps += time.perf_counter() - t0
        if test_each_epoch:
            model.eval()
            with torch.no_grad():
                sum(float(_loss(model, x)) * len(x) for x in x_test.split(128))
    return model, seen / in_steps, time.perf_counter() - t_start


def as_vaekit(plain: nn.Module) -> MLPVAE:
    """Copy the reference weights into vaekit's MLP so both are scored by the same estimator."""
    model = MLPVAE(ModelConfig(arch="mlp", image_size=SIZE, latent_dim=20, hidden_dims=(400,)))
    names = {"fc21": "fc_mu", "fc22": "fc_var"}
    model.load_state_dict(
        {names.get(k.split(".")[0], k.split(".")[0]) + "." + k.split(".")[1]: v for k, v in plain.state_dict().items()}
    )
    return model.eval()


def vaekit_run(data: ImageData, cfg: RunConfig, out: Path) -> tuple[float, float, float]:
    """Test -ELBO, training throughput (images/s over the train steps) and wall time of `vaekit.train`."""
    t0 = time.perf_counter()
    history = train(cfg, out, data=data, device_name="cpu")
    wall = time.perf_counter() - t0
    model, _ = load_model(out)
    rate = len(data.train) * len(history) / sum(h["seconds"] for h in history)
    return evaluate(model, data.test, iwae_samples=1)["neg_elbo"], rate, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--repeat", type=int, default=3, help="wall times: the best of this many runs of each loop")
    args = parser.parse_args()

    mnist = load_data(args.data, SIZE)
    flat = ImageData(train=mnist.train[: args.limit], test=mnist.test)
    widths = ((0, 0), (0, 0), (2, 2), (2, 2))
    padded = ImageData(train=np.pad(flat.train, widths), test=np.pad(flat.test, widths), pad=2)

    torch.optim.Adam(PlainVAE().parameters())  # the first optimizer imports torch._dynamo (~1 s): not timed
    mlp = RunConfig(
        model=ModelConfig(arch="mlp", image_size=SIZE, latent_dim=20, hidden_dims=(400,)),
        loss=LossConfig(),
        # pytorch/examples settings: constant learning rate
        train=TrainConfig(
            data=args.data, epochs=args.epochs, batch_size=128, lr=1e-3, scheduler_gamma=1.0, seed=args.seed
        ),
    )
    walls: dict[str, list[float]] = {"bare": [], "examples": [], "vaekit": []}
    with TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # interleaved, so a busy spell of a shared machine hits all three
            ref_model, ref_rate, wall = reference_loop(flat, args.epochs, args.seed, test_each_epoch=False)
            walls["bare"].append(wall)
            walls["examples"].append(reference_loop(flat, args.epochs, args.seed, test_each_epoch=True)[2])
            mlp_nelbo, mlp_rate, wall = vaekit_run(flat, mlp, Path(tmp) / f"mlp{i}")
            walls["vaekit"].append(wall)
        ref_nelbo = evaluate(as_vaekit(ref_model), flat.test)["neg_elbo"]
        ref_wall, examples_wall, mlp_wall = (min(walls[k]) for k in ("bare", "examples", "vaekit"))
        conv = RunConfig(
            model=ModelConfig(arch="conv", image_size=32, latent_dim=20),
            loss=LossConfig(),
            train=TrainConfig(
                data=args.data, epochs=args.epochs, batch_size=128, lr=1e-3, scheduler_gamma=1.0, seed=args.seed
            ),
        )
        conv_nelbo, conv_rate, _ = vaekit_run(padded, conv, Path(tmp) / "conv")
    result = {
        "data": args.data,
        "train_images": len(flat.train),
        "test_images": len(flat.test),
        "epochs": args.epochs,
        "torch_threads": torch.get_num_threads(),
        "reference_mlp": {"test_neg_elbo": ref_nelbo, "train_images_per_s": ref_rate, "wall_s": ref_wall},
        "examples_loop_wall_s": examples_wall,
        "vaekit_mlp": {"test_neg_elbo": mlp_nelbo, "train_images_per_s": mlp_rate, "wall_s": mlp_wall},
        "vaekit_conv": {"test_neg_elbo": conv_nelbo, "train_images_per_s": conv_rate},
        "mlp_no_worse_than_reference": mlp_nelbo <= ref_nelbo,
        "mlp_throughput_ratio": mlp_rate / ref_rate,
        "mlp_wall_ratio_vs_bare_loop": ref_wall / mlp_wall,
        "mlp_wall_ratio_vs_examples_loop": examples_wall / mlp_wall,
        "conv_gain_nats": mlp_nelbo - conv_nelbo,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
