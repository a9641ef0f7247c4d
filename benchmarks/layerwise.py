"""Layerwise parity on the 64x64 CelebA-configuration VAE, batch 7: seconds and extra peak memory per graph.

    python benchmarks/layerwise.py              # ~1 min on 2 cores; prints a table (issue 12 target: < 10 s, < 1 GB)
    python benchmarks/layerwise.py --json out.json

The checkpoint is the deploy benchmark's (`run.make_checkpoint`: seeded, LSUV-scaled weights, no training),
exported to fp32 ONNX. Each measurement runs in a fresh process: the time is one `layerwise()` call
(checkpoint load, PyTorch hooks, graph rewrite, session, marked run, metrics), the memory its peak RSS
(VmHWM, reset just before the call) above the RSS then (torch, onnx and onnxruntime already imported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BATCH = 7
CASES = (  # (label, reference, rewrite)
    ("PyTorch reference, graph as the CPU backend runs it", "checkpoint", True),
    ("PyTorch reference, every module boundary (no rewrite)", "checkpoint", False),
    ("fp32 ONNX reference (no torch needed)", "onnx", True),
)

CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
import onnxruntime, torch  # imported before the baseline: the call is what is measured
from vaekit.runtimes.proving.layerwise import compare_layers

role, art, run, ref_kind, rewrite = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
x = np.load(art / f"{role}_inputs.npy")
def status_kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

open("/proc/self/clear_refs", "w").write("5")  # Linux: reset the peak (VmHWM) to the current RSS
rss = status_kb("VmRSS") * 1024
t0 = time.perf_counter()
report = compare_layers(art / f"{role}.onnx", run if ref_kind == "checkpoint" else None, inputs=x, rewrite=rewrite)
seconds = time.perf_counter() - t0
peak = status_kb("VmHWM") * 1024
compared = sum(1 for layer in report.layers if layer.metrics)
print(json.dumps({"seconds": seconds, "extra_mb": max(0, peak - rss) / 2**20, "layers": compared,
                  "passed": report.passed, "summary": report.summary()}))
"""


def prepare(folder: Path) -> tuple[Path, Path]:
    """The CelebA-configuration checkpoint, its fp32 ONNX graphs, and batch-7 inputs for both."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from run import CELEBA, make_checkpoint

    from vaekit.checkpoint import load_run
    from vaekit.export.onnx import export_onnx
    from vaekit.runtimes.proving.parity import fixed_latents

    run, art = folder / "run", folder / "art"
    art.mkdir(parents=True)
    make_checkpoint(run, folder / "images")  # the images folder is only named in the config, never read
    export_onnx(load_run(run), art, max_batch=8)
    rng = np.random.default_rng(0)
    np.save(art / "encoder_inputs.npy", rng.uniform(-1, 1, (BATCH, *CELEBA.image_shape)).astype(np.float32))
    np.save(art / "decoder_inputs.npy", fixed_latents(BATCH, CELEBA.latent_dim))
    return run, art


def measure(role: str, art: Path, run: Path, reference: str, rewrite: bool) -> dict[str, Any]:
    args = [sys.executable, "-c", CHILD, role, str(art), str(run), reference, "1" if rewrite else "0"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{role} {reference}: {result.stderr.strip().splitlines()[-1]}")
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaekit-layerwise-") as tmp:
        run, art = prepare(Path(tmp))
        for label, reference, rewrite in CASES:
            for role in ("encoder", "decoder"):
                rows.append({"case": label, "graph": role, **measure(role, art, run, reference, rewrite)})
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(f"layerwise, 64x64 CelebA configuration, batch {BATCH}, {machine}")
    print(f"| case | graph | layers compared | seconds | extra peak MB | passed |\n|{' --- |' * 6}")
    for r in rows:
        cells = (r["case"], r["graph"], r["layers"], f"{r['seconds']:.2f}", f"{r['extra_mb']:.0f}", r["passed"])
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"batch": BATCH, "machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
