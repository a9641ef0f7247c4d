"""Decode latency of the web bundle in headless Chromium (ONNX Runtime Web, wasm, the threads the page gets)
against native ONNX Runtime CPU on the same machine in the same run, and the size of the bundle.

    python benchmarks/web.py                     # the 64x64 CelebA-configuration decoder (seeded random weights)
    python benchmarks/web.py --artifacts DIR     # an existing export instead
    python benchmarks/web.py --json out.json

Rounds alternate native and browser so that load from other processes hits both; each number is the
median (and the best) over every timed call of every round. Each graph runs on both sides exactly as stored:
decoder.onnx, decoder.cpu.onnx (export's exact CPU rewrites) and decoder.web.onnx (the rewrite that pays
off in wasm), which the bundle ships.
Speed does not depend on the weights, so nothing is trained; the procedural images exist only because
export proves parity on data.
Target: browser batch 1 within 3x of native ONNX Runtime (goal 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from vaekit.export.web.bundle import graph_for_the_web
from vaekit.runtimes.artifacts import cpu_graph_name, onnx_name, web_graph_name
from vaekit.runtimes.backends.browser import BrowserDecoder, load
from vaekit.runtimes.backends.web_bundle import RUNTIME_BUILDS
from vaekit.runtimes.base import Decoder
from vaekit.runtimes.registry import load_decoder

BATCHES = (1, 16)
CELEBA = {"arch": "conv", "in_channels": 3, "image_size": 64, "latent_dim": 128, "likelihood": "gaussian"}
CELEBA_HIDDEN = (32, 64, 128, 256, 512)
# The page times its own calls (performance.now around window.vaekit.decode), so DevTools traffic is not counted.
_BROWSER_TIMES = """(async (n, runs, warmup) => {
  const d = window.vaekit.model.latent_dim, z = new Float32Array(n * d);
  for (let i = 0; i < z.length; i++) z[i] = Math.sin(i * 12.9898) * 1.5;
  for (let i = 0; i < warmup; i++) await window.vaekit.decode(z, n);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now(); await window.vaekit.decode(z, n); times.push(performance.now() - t0);
  }
  return times;
})"""


def make_artifacts(root: Path) -> Path:
    """Export the CelebA-configuration conv VAE (seeded random weights) with max batch 16."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from vaekit.checkpoint import save_config
    from vaekit.config import MODEL_FILE, ModelConfig, RunConfig
    from vaekit.export.pipeline import export_artifacts
    from vaekit.model import build_model

    images = root / "images"
    images.mkdir()
    ramp = np.linspace(0, 255, 64)
    rng = np.random.default_rng(0)
    for i in range(40):  # colour gradients: parity needs real-looking inputs, speed does not care
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        pixels = (ramp[:, None, None] * a + ramp[None, :, None] * b) / 2
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i:03d}.png")
    cfg = RunConfig(model=ModelConfig(**CELEBA, hidden_dims=CELEBA_HIDDEN))  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    run = root / "run"
    run.mkdir()
    save_config(run, cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / MODEL_FILE))
    art = root / "artifacts"
    result = export_artifacts(run, art, max_batch=max(BATCHES), data=f"folder:{images}")
    if not result.passed:
        sys.exit(f"export failed parity: {result.report.failure()}")
    return art


def native_times(decoder: Decoder, n: int, runs: int, warmup: int) -> list[float]:
    z = (np.sin(np.arange(n * decoder.info.latent_dim) * 12.9898) * 1.5).astype(np.float32)
    z = z.reshape(n, decoder.info.latent_dim)
    for _ in range(warmup):
        decoder.decode(z)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        decoder.decode(z)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def bundle_size(art: Path, tmp: Path) -> dict[str, int]:
    """The bundle `vaekit export --web` would write, built in a temp folder (the export is left as it is)."""
    from vaekit.export.web.bundle import PAGE_DIR, publish
    from vaekit.runtimes.backends.web_bundle import bundle_files, runtime_files

    encoder = graph_for_the_web(art, "encoder")
    decoder = graph_for_the_web(art, "decoder")
    files = bundle_files(decoder, encoder if encoder.is_file() else None, runtime_files(), PAGE_DIR)
    web = publish(files, tmp / "web")
    return {p.name: p.stat().st_size for p in sorted(web.iterdir())}


def measure(art: Path, rounds: int, runs: int) -> dict[str, Any]:
    """ms per (runtime, graph, batch): each graph on native ONNX Runtime CPU (run as stored) and in a page."""
    names = (onnx_name("decoder"), cpu_graph_name("decoder"), web_graph_name("decoder"))
    graphs = [art / name for name in names if (art / name).is_file()]
    native = {g.name: load_decoder(g, "cpu", runtime="onnxrt", rewrite=False) for g in graphs}
    pages = {g.name: cast(BrowserDecoder, load(g, "decoder", "wasm")) for g in graphs}  # alive: their tabs stay open
    tabs = {name: page.runner.page.tab for name, page in pages.items()}
    threads = next(iter(tabs.values())).evaluate("window.vaekit.threads")
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for n in BATCHES:
            for g in graphs:
                times.setdefault(f"native {g.name} {n}", []).extend(native_times(native[g.name], n, runs, 3))
                times.setdefault(f"browser {g.name} {n}", []).extend(tabs[g.name].evaluate(_call(n, runs)))
    stats = {key: {"median": statistics.median(t), "min": min(t)} for key, t in times.items()}
    shipped = graph_for_the_web(art, "decoder").name
    return {
        "ms": stats,
        "graphs": [g.name for g in graphs],
        "shipped": shipped,
        "browser_threads": threads,
        "runs": rounds * runs,
    }


def _call(n: int, runs: int) -> str:
    return f"{_BROWSER_TIMES}({n}, {runs}, 3)"


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, help="an export directory (default: make the CelebA one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaekit-web-bench-") as tmp:
        art = args.artifacts or make_artifacts(Path(tmp))
        before = machine()
        result = measure(art, args.rounds, args.runs)
        result["bundle_bytes"] = bundle_size(art, Path(tmp))
    result["machine"] = f"{before}; at the end {os.getloadavg()[0]:.1f}"
    print(f"{art}: {result['machine']}; browser wasm threads {result['browser_threads']}, {result['runs']} calls each")
    ms = result["ms"]
    for g in result["graphs"]:
        for n in BATCHES:
            nat, web = ms[f"native {g} {n}"], ms[f"browser {g} {n}"]
            print(
                f"{g:>17} batch {n:>2}: native {nat['median']:7.2f} ms (min {nat['min']:.2f}), browser "
                f"{web['median']:7.2f} ms (min {web['min']:.2f}): {web['median'] / nat['median']:.2f}x"
                f" (min/min {web['min'] / nat['min']:.2f}x)"
            )
    shipped = result["shipped"]  # the bundle's graph
    fastest_native = min(ms[f"native {g} 1"]["median"] for g in result["graphs"])
    same_graph = ms[f"native {shipped} 1"]["median"]
    for against, native_ms in (("the same graph", same_graph), ("its fastest graph", fastest_native)):
        ratio = ms[f"browser {shipped} 1"]["median"] / native_ms
        verdict = "goal met" if ratio <= 2 else "target met" if ratio <= 3 else "target NOT met"
        print(
            f"batch 1, browser on {shipped} (what the bundle ships) / native on {against}: {ratio:.2f}x"
            f" (target 3x, goal 2x: {verdict})"
        )
    sizes = result["bundle_bytes"]
    webgpu = sum(sizes.get(name, 0) for name in RUNTIME_BUILDS["webgpu"])
    files = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items())
    print(f"bundle: {sum(sizes.values()) / 1e6:.1f} MB, of which the WebGPU build {webgpu / 1e6:.1f} MB ({files})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
