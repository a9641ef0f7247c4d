"""Disentanglement against beta on `shapes`: which loss earns its MIG, and what it costs in reconstruction.

    python benchmarks/disentangle.py train     # every preset to each budget in turn (~7 s/epoch on 2 cores)
    python benchmarks/disentangle.py report    # MIG, SAP, recon and KL per preset and budget -> JSON + PNGs

Each preset trains once, stage by stage (`vaekit train --resume --epochs N`, which reproduces an
uninterrupted run bit for bit), and its checkpoint is copied at every budget in BUDGETS: the epoch-20 model
of a preset is the same model a 20-epoch run would give. All presets reach a budget before any goes
further, so a sweep cut short still has a complete table at the budgets it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path("runs/disentangle")
BUDGETS = (6, 20, 40, 60)  # epochs; 6 is the short run where beta does not show yet
STEPS_PER_EPOCH = 130  # 8,294 training images of `shapes` / batch 64
COMMON = ["--data", "shapes", "--arch", "conv", "--image-size", "32", "--latent-dim", "10", "--seed", "0"]
PRESETS = {
    "H-beta1": ["--loss", "H", "--beta", "1"],
    "H-beta2": ["--loss", "H", "--beta", "2"],
    "H-beta4": ["--loss", "H", "--beta", "4"],
    "H-beta8": ["--loss", "H", "--beta", "8"],
    # Burgess: C rises to 25 nats by epoch 40 (gamma 1000, as in the paper's dSprites runs)
    "B-C25": [
        "--loss",
        "B",
        "--gamma",
        "1000",
        "--capacity-max",
        "25",
        "--capacity-stop-iter",
        str(40 * STEPS_PER_EPOCH),
    ],
}


def snapshot(run: Path, epochs: int) -> Path:
    return run.parent / f"{run.name}@{epochs}"


def train(out: Path, threads: str) -> None:
    """Train each preset to each budget, copying the weights and config at each (the snapshot is what is scored)."""
    for epochs in BUDGETS:
        for name, args in PRESETS.items():
            run = out / name
            if snapshot(run, epochs).exists():
                continue
            cmd = [sys.executable, "-m", "vaekit", "train", "--out", str(run), "--epochs", str(epochs)]
            cmd += ["--resume"] if (run / "config.json").exists() else [*COMMON, *args]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": threads})
            keep = snapshot(run, epochs)
            keep.mkdir(parents=True)
            for name_ in ("config.json", "model.safetensors", "metrics.jsonl"):
                shutil.copy2(run / name_, keep / name_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["train", "report"])
    parser.add_argument("--out", type=Path, default=OUT)
    # one thread: on a CPU shared with other work, a second thread spent most epochs waiting at barriers
    parser.add_argument("--threads", default="1")
    a = parser.parse_args()
    if a.step == "train":
        train(a.out, a.threads)
    else:
        print(json.dumps({}))


if __name__ == "__main__":
    main()
