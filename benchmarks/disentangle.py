"""Disentanglement against beta on `shapes`: which loss earns its MIG, and what it costs in reconstruction.

    python benchmarks/disentangle.py train     # every preset to each budget in turn (~5-7 s an epoch, one core)
    python benchmarks/disentangle.py report    # MIG, SAP, recon and KL per preset and budget -> JSON + PNGs

`report` writes benchmarks/disentangle/results.json (every preset at every budget trained so far) and, per
preset, the labelled traversals of its largest budget (`<preset>.png`, what `vaekit eval --disentanglement
--png` draws).

Each preset trains once, stage by stage (`vaekit train --resume --epochs N`, which reproduces an
uninterrupted run bit for bit), and its checkpoint is copied at every budget in BUDGETS: the epoch-20 model
of a preset is the same model a 20-epoch run would give. All presets reach a budget before any goes
further, so a sweep cut short still has a complete table at the budgets it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaekit.disentangle import Disentanglement
from vaekit.evaluate import disentanglement_run
from vaekit.images import save_image
from vaekit.runtimes.registry import load_decoder
from vaekit.runtimes.traversal import traversal_picture

OUT = Path("runs/disentangle")
REPORT = Path(__file__).parent / "disentangle"
BUDGETS = (6, 20, 40, 60, 100, 150)  # epochs; 6 is the short run where beta does not show yet
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


def train(out: Path, threads: str, presets: list[str]) -> None:
    """Train each preset to each budget, copying the weights and config at each (the snapshot is what is scored)."""
    for epochs in BUDGETS:
        for name, args in ((n, PRESETS[n]) for n in presets):
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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def score_snapshot(run: Path) -> tuple[dict[str, Any], Disentanglement]:
    """MIG/SAP over all 9,216 images, beside the test reconstruction and KL training measured at that epoch."""
    start = time.perf_counter()
    scores = disentanglement_run(run, None, "cpu")
    seconds = time.perf_counter() - start
    result = scores.to_json()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    factors = {name: row["latent"] for name, row in result["per_factor"].items()}
    return {
        "mig": result["mig"], "mig_active": result["mig_active"], "sap": result["sap"],
        "gaps": {name: row["mig_gap"] for name, row in result["per_factor"].items()}, "latent_of": factors,
        "active_latents": result["active_latents"], "test_recon": last["test_recon"], "test_kld": last["test_kld"],
        "test_neg_elbo": last["test_neg_elbo"], "eval_seconds": seconds,
    }, scores  # fmt: skip


def report(out: Path, dest: Path) -> dict[str, Any]:
    """Score every snapshot trained so far; draw each preset's traversals at its largest budget."""
    dest.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for name in PRESETS:
        rows[name] = {}
        for epochs in (e for e in BUDGETS if snapshot(out / name, e).exists()):
            run = snapshot(out / name, epochs)
            rows[name][str(epochs)], scores = score_snapshot(run)
        if rows[name]:  # the largest budget scored last
            save_image(traversal_picture(load_decoder(run, "cpu"), scores)[0], dest / f"{name}.png")
    result = {
        "presets": {name: " ".join(args) for name, args in PRESETS.items()}, "common": " ".join(COMMON),
        "results": rows, "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    (dest / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["train", "report"])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", type=Path, default=REPORT)
    # one thread: on a CPU shared with other work, a second thread spent most epochs waiting at barriers
    parser.add_argument("--threads", default="1")
    # a subset, so that two processes can train disjoint presets side by side, one core each
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma list of {', '.join(PRESETS)}")
    a = parser.parse_args()
    chosen = [p for p in a.presets.split(",") if p]
    if any(p not in PRESETS for p in chosen):
        parser.error(f"--presets takes a comma list of {', '.join(PRESETS)}")
    if a.step == "train":
        train(a.out, a.threads, chosen)
    else:
        for name, budgets in report(a.out, a.report)["results"].items():
            for epochs, row in budgets.items():
                print(
                    f"{name:8} {epochs:>3} epochs  MIG {row['mig']:.3f} (active {row['mig_active']:.3f})  "
                    f"SAP {row['sap']:.3f}  recon {row['test_recon']:.1f}  KL {row['test_kld']:.1f}  "
                    f"({row['eval_seconds']:.1f} s)"
                )


if __name__ == "__main__":
    main()
