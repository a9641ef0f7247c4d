"""The deploy benchmark behind the README table: the 64x64 conv VAE (CelebA configuration) on every runtime.

    python benchmarks/run.py                    # ~15 min on 2 cores; writes benchmarks/RESULTS.md (+ .json, .png)
    python benchmarks/run.py --quick            # a smoke run: fewer timed calls, batch sizes 1 and 8

Nothing is trained. The checkpoint is made here: seeded random weights for the reference architecture
(3x64x64 images, hidden 32-64-128-256-512, latent 128, Gaussian likelihood), each layer's weights then
scaled so its output has unit variance on the data (LSUV-style initialisation), which makes the images
span the value range and gives int8 realistic activation ranges. Speed does not depend on the values;
int8 accuracy on a trained model is what `vaekit export --int8` reports through parity.
The calibration / parity images are procedural RGB pictures (coloured ellipses on gradients).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from vaekit.checkpoint import save_config
from vaekit.config import MODEL_FILE, ModelConfig, RunConfig, TrainConfig
from vaekit.data import to_float
from vaekit.export.manifest import add_files
from vaekit.export.pipeline import export_artifacts
from vaekit.export.precisions.bf16 import convert_bf16
from vaekit.images import save_image
from vaekit.model import build_model
from vaekit.runtimes.artifacts import ROLES, load_inputs, onnx_name
from vaekit.runtimes.measuring.bench import DEFAULT_RUNTIMES, BenchReport, BenchSettings, Job, Row, run_bench
from vaekit.runtimes.measuring.chart import bench_chart
from vaekit.runtimes.registry import describe

HERE = Path(__file__).resolve().parent
SEED = 0
N_IMAGES = 2560  # 10% become the test split that calibrates int8 (256 images) and feeds parity
CELEBA = ModelConfig(
    arch="conv",
    in_channels=3,
    image_size=64,
    latent_dim=128,
    hidden_dims=(32, 64, 128, 256, 512),
    likelihood="gaussian",
)


def write_images(folder: Path, n: int = N_IMAGES) -> None:
    """Coloured ellipses on colour gradients: RGB structure at several scales, deterministic."""
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.0, 1.0, 64)[None, :, None]
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        background = (a * (1 - ramp) + b * ramp).repeat(64, axis=0).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(background.transpose(1, 0, 2) if i % 2 else background))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            x, y, rx, ry = rng.uniform(8, 56), rng.uniform(8, 56), rng.uniform(4, 20), rng.uniform(4, 20)
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(folder / f"{i:04d}.png")


def make_checkpoint(run: Path, data_dir: Path) -> None:
    """Seeded init, then each Linear/Conv scaled to unit output variance on a fixed batch (no training)."""
    cfg = RunConfig(model=CELEBA, train=TrainConfig(data=f"folder:{data_dir}"))
    torch.manual_seed(SEED)
    model = build_model(cfg.model).eval()
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    stds: dict[torch.nn.Module, float] = {}
    hooks = [m.register_forward_hook(lambda mod, _, out: stds.__setitem__(mod, float(out.std()))) for m in layers]
    z = torch.randn(64, cfg.model.latent_dim)
    x = torch.rand(64, *cfg.model.image_shape) * 2 - 1
    with torch.no_grad():
        for layer in layers:  # in forward order, so each scale sees its inputs already normalised
            model.decode(z)
            model.encode(x)
            layer.weight.div_(stds[layer])
            if layer.bias is not None:
                layer.bias.div_(stds[layer])
    for h in hooks:
        h.remove()
    run.mkdir(parents=True, exist_ok=True)
    save_config(run, cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / MODEL_FILE))


def _row(r: Any) -> str:
    pct = "" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%"
    return (
        f"| {r.runtime} | {r.precision} | {r.batch} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.images_per_s:,.0f} "
        f"| {r.gflops:.1f} | {pct} | {r.peak_rss_mb:.0f} | {r.parity[:30]} |"
    )


def _find(rows: list[Any], runtime: str, precision: str, graph: str, batch: int) -> Any | None:
    return next(
        (r for r in rows if (r.runtime, r.precision, r.graph, r.batch) == (runtime, precision, graph, batch)), None
    )


def targets(report: BenchReport, int8_psnr: float | None, big: int) -> list[str]:
    """The issue's performance targets, each with the measured ratio."""
    rows = report.rows

    def p50(runtime: str, precision: str, batch: int) -> float | None:
        row = _find(rows, runtime, precision, "decoder", batch)
        return row.p50_ms if row is not None else None

    lines = []
    for batch, need in ((1, 3.0), (big, 2.0)):
        eager, ort = p50("pytorch", "fp32", batch), p50("onnxruntime", "fp32", batch)
        if eager and ort:
            ok = "met" if eager / ort >= need else "not met"
            lines.append(
                f"- ORT fp32 decode vs PyTorch eager, batch {batch}: {eager / ort:.2f}x (target {need}x, {ok})"
            )
    for batch in (1, big):
        comp, ort = p50("torch-compile", "fp32", batch), p50("onnxruntime", "fp32", batch)
        if comp and ort:
            ok = "met" if comp >= ort else "not met"
            lines.append(f"- ORT fp32 decode vs torch.compile, batch {batch}: {comp / ort:.2f}x (target >= 1x, {ok})")
    fp32, int8 = p50("onnxruntime", "fp32", big), p50("onnxruntime", "int8", big)
    if fp32 and int8:
        ok = "met" if fp32 / int8 >= 1.5 and (int8_psnr or 0) >= 30 else "not met"
        psnr = f"{int8_psnr:.1f} dB" if int8_psnr is not None else "n/a"
        speedup = f"{fp32 / int8:.2f}x, PSNR vs fp32 {psnr}"
        lines.append(f"- INT8 vs ORT fp32 decode, batch {big}: {speedup} (target 1.5x, >= 30 dB, {ok})")
    lines += fastest_targets(report, big)
    row = _find(rows, "onnxruntime", "fp32", "decoder", big)
    if row is not None and row.peak_fraction is not None:
        ok = "met" if row.peak_fraction >= 0.5 else "not met"
        lines.append(f"- ORT fp32 decoder, batch {big}: {100 * row.peak_fraction:.0f}% of fp32 peak (target 50%, {ok})")
    return lines


# The peers of the fastest-artifact target, as the issue names them: what a user reaches without vaekit's
# runtime choice (OpenVINO's default precision on decoder.onnx, OpenVINO on vaekit's int8 graph, NNCF's own
# int8, PyTorch bf16 autocast, torch.compile, plain ONNX Runtime on the stored graph).
PEER_ROUTES = ("openvino-bf16", "openvino-nncf-int8", "pytorch-bf16", "torch-compile", "onnxruntime-as-stored")


def _is_peer(row: Row) -> bool:
    return row.runtime in PEER_ROUTES or (row.runtime == "openvino" and row.precision == "int8")


def _fastest(rows: list[Row]) -> Row:
    return min(rows, key=lambda r: r.p50_ms or float("inf"))


def _at_equal_accuracy(own: list[Row], peers: list[Row]) -> list[str]:
    """The 1.2x goal is at equal accuracy: vaekit's fastest route vs the fastest peer within each class
    (float: fp32/fp16/bf16 rows, which parity holds to >= 40 dB; int8: >= 30 dB)."""
    lines = []
    for name, members in (("float", ("fp32", "fp16", "bf16")), ("int8", ("int8",))):
        mine = [r for r in own if r.precision in members]
        theirs = [r for r in peers if r.precision in members]
        if mine and theirs:
            a, b = _fastest(mine), _fastest(theirs)
            ratio = _speedup(a, b)
            lines.append(
                f"  - {name} accuracy: {a.runtime} {a.precision} on {a.artifact} ({a.p50_ms:.3f} ms) vs"
                f" {b.runtime} {b.precision} ({b.p50_ms:.3f} ms): {ratio:.2f}x ({_judged(ratio, goal=1.2)})"
            )
    return lines


def _speedup(mine: Row, peer: Row) -> float:
    return (peer.p50_ms or 0) / (mine.p50_ms or 1)


def _judged(ratio: float, **needs: float) -> str:
    """'target 1.0x, met; goal 1.2x, not met' for target=1.0, goal=1.2."""
    return "; ".join(f"{kind} {need}x, {'met' if ratio >= need else 'not met'}" for kind, need in needs.items())


def fastest_targets(report: BenchReport, big: int) -> list[str]:
    """The runtime vaekit chooses (fastest verified row of all) vs the fastest peer, what vaekit's own routes
    reach without the peers' runtimes, and plain ONNX Runtime on the CPU graph vs PyTorch eager."""
    lines = []
    for graph in ("decoder", "encoder"):
        for batch in (1, big):
            rows = [r for r in report.rows if r.graph == graph and r.batch == batch and r.p50_ms and r.parity == "pass"]
            peers = [r for r in rows if _is_peer(r)]
            own = [r for r in rows if not _is_peer(r) and r.runtime != "pytorch"]
            if not rows or not peers:
                continue
            chosen, peer = _fastest(rows), _fastest(peers)
            ratio = _speedup(chosen, peer)
            lines.append(
                f"- {graph} batch {batch}: vaekit's choice ({chosen.runtime} {chosen.precision} on {chosen.artifact},"
                f" {chosen.p50_ms:.3f} ms) vs fastest peer ({peer.runtime} {peer.precision}, {peer.p50_ms:.3f} ms):"
                f" {ratio:.2f}x ({_judged(ratio, target=1.0, goal=1.2)})"
            )
            if own:
                mine = _fastest(own)
                lines.append(
                    f"  - without the peers' routes: {mine.runtime} {mine.precision} on {mine.artifact},"
                    f" {mine.p50_ms:.3f} ms: {_speedup(mine, peer):.2f}x the fastest peer"
                )
            lines += _at_equal_accuracy(own, peers)
            eager = next((r for r in rows if r.runtime == "pytorch" and r.precision == "fp32"), None)
            plain = next((r for r in rows if r.runtime == "onnxruntime-cpu-graph"), None)
            plain = plain or next((r for r in rows if r.runtime == "onnxruntime-as-stored"), None)  # no rewrites apply
            if eager and plain:
                need = 3.0 if batch == 1 else 2.0
                speed = _speedup(plain, eager)
                lines.append(
                    f"- {graph} batch {batch}: plain ONNX Runtime on {plain.artifact} vs PyTorch eager fp32:"
                    f" {speed:.2f}x ({_judged(speed, target=need)})"
                )
    return lines


def _pass(title: str, report: BenchReport, psnr: float | None, big: int) -> list[str]:
    m, cpu = report.machine, report.machine["cpu"]
    busy = max((r.other_load or 0.0 for r in report.rows), default=0.0)
    lines = [
        f"## {title}",
        "",
        f"- {m['threads']} thread(s) pinned, {report.settings['clock']} clock, {report.settings['rounds']} round(s);"
        f" peaks (G)FLOP/s {', '.join(f'{p} {v:g}' for p, v in cpu['peaks'].items())} ({cpu['cores']} x"
        f" {cpu['clock_ghz']} GHz; {', '.join(f'{p}: {u}' for p, u in cpu['peak_units'].items())});"
        f" ONNX Runtime's own fp32 GEMM (1024^3) reached {cpu.get('gemm_gflops', 'n/a')} GFLOP/s",
        f"- load average at start {m['load_average']}; other processes used up to {busy:.0%} of the CPUs"
        + (" (not a quiet machine's numbers)" if busy > 0.1 else ""),
        "",
        *targets(report, psnr, big),
        "",
    ]
    for graph in ("decoder", "encoder"):
        measured = [r for r in report.rows if r.graph == graph and r.p50_ms]
        lines += [
            f"### {graph}",
            "",
            "| runtime | precision | batch | p50 ms | p95 ms | images/s | GFLOP/s | % peak | peak MB | parity |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *[_row(r) for r in sorted(measured, key=lambda r: (r.batch, r.runtime, r.precision))],
            "",
        ]
    return lines


def write_results(passes: list[tuple[str, BenchReport]], details: dict[str, Any], path: Path, big: int) -> None:
    report = passes[0][1]
    m, cpu = report.machine, report.machine["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    int8 = details.get("int8", {}).get("decoder", {})
    psnr = int8.get("accuracy_typical_inputs", {}).get("image", {}).get("psnr")
    psnr_all = int8.get("accuracy_vs_fp32", {}).get("prior samples", {}).get("image", {}).get("psnr")
    parity = "passed" if details.get("parity_passed") else "failed (see results.json)"
    lines = [
        "# Deploy benchmark: 64x64 conv VAE (CelebA configuration, latent 128)",
        "",
        f"- date: {m['date']}; made by `python benchmarks/run.py` (`make bench`)",
        f"- machine: {cpu['model']}, {m['platform']}",
        f"- vector ISA: {cpu['isa']} = {cpu['flop_per_cycle']} fp32 FLOP/cycle/core;"
        f" int8 dot product: {cpu['int8_dot_product']}; clock {cpu['clock_ghz']} GHz from {cpu['clock_source']}",
        f"- versions: {versions}",
        f"- work per image (fp32 ONNX graph): decoder {report.flops_per_image.get('decoder', 0) / 1e6:.1f} MFLOP,"
        f" encoder {report.flops_per_image.get('encoder', 0) / 1e6:.1f} MFLOP; GFLOP/s below = that work / p50"
        " (int8 rows do the same work in int8, so they can pass 100% of the fp32 peak; so can fp32 rows when the"
        " core boosts above the clock read here, which the measured GEMM ceiling shows)",
        "",
    ]
    for title, r in passes:
        lines += _pass(title, r, psnr, big)
    notes = sorted({f"- {r.runtime}: {r.note}" for _, rep in passes for r in rep.rows if r.note})
    lines += ["## Not measured here", "", *(notes or ["- nothing"]), ""]
    if int8:
        lines += [
            "## INT8",
            "",
            f"- {int8.get('method', '')}; calibration: {int8.get('calibration', '')}",
            f"- decoder rewrites: {'; '.join(int8.get('rewrites', []))}",
            f"- layers kept fp32: {', '.join(int8.get('fp32_layers', [])) or 'none'}",
            f"- decoder image PSNR vs fp32: {psnr:.1f} dB on encoded images + prior samples;"
            f" {psnr_all:.1f} dB on parity's latents (|z| = 4 stress latents included)"
            if psnr is not None and psnr_all is not None
            else "",
            f"- parity (the export's own check, stress latents included): {parity}",
            "",
        ]
    lines += [
        "`onnxruntime-as-stored` is plain ONNX Runtime on `decoder.onnx` (vaekit's in-memory CPU rewrites off), "
        "`onnxruntime-cpu-graph` plain ONNX Runtime on the `decoder.cpu.onnx` artifact. "
        "peak MB: resident high-water growth of the measuring process (library + model + runs).",
        "",
    ]
    path.write_text("\n".join(lines))


def add_bf16_graphs(art: Path) -> dict[str, Any]:
    """The bf16 graphs beside the fp16 ones (an export writes one float precision), listed in its manifest."""
    images_u8, z = load_inputs(art)
    images = to_float(images_u8, describe(art / onnx_name("encoder")).value_range)
    written = {role: convert_bf16(art / onnx_name(role), art / onnx_name(role, "bf16"), images, z) for role in ROLES}
    add_files(art, [art / onnx_name(role, "bf16") for role in ROLES])
    return written


def _report(data: dict[str, Any]) -> BenchReport:
    rows = [Row(**{k: v for k, v in r.items() if k in Row.__dataclass_fields__}) for r in data["rows"]]
    return BenchReport(data["machine"], data["settings"], data["flops_per_image"], rows, data.get("best", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch sizes 1,8 and few timed calls")
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md, results.json and bench.png go")
    parser.add_argument("--work", type=Path, default=None, help="keep the checkpoint and artifacts here")
    parser.add_argument("--threads", type=int, default=0, help="threads pinned (0: every core here)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the all-core pass")
    parser.add_argument("--render", type=Path, default=None, help="rewrite RESULTS.md from this results.json")
    args = parser.parse_args(argv)
    big = 8 if args.quick else 64
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        passes = [(title, _report(data)) for title, data in payload["passes"].items()]
        big = max(r.batch for r in passes[0][1].rows)
        write_results(
            passes, {**payload["export"], "parity_passed": payload["parity"]["passed"]}, args.out / "RESULTS.md", big
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="vaekit-bench-") as tmp:
        work = args.work or Path(tmp)
        data, run, art = work / "images", work / "run", work / "artifacts"
        print(f"making images and checkpoint in {work}", file=sys.stderr)
        write_images(data)
        make_checkpoint(run, data)
        result = export_artifacts(
            run, art, max_batch=big, precision="fp16", int8=True, calibration_images=N_IMAGES // 10
        )
        print(f"export: parity {'passed' if result.report.passed else 'FAILED'} {result.steps}", file=sys.stderr)
        result.details["bf16"] = add_bf16_graphs(art)
        runtimes = [*DEFAULT_RUNTIMES, "onnxruntime-as-stored", "onnxruntime-cpu-graph", "openvino-cpu-graph"]
        common = {
            "batch_sizes": [1, 8] if args.quick else [1, 8, 64],
            "runtimes": runtimes,
            "min_runs": 5 if args.quick else 10,
            "min_seconds": 0.2 if args.quick else 1.0,
            "max_seconds": 1.0 if args.quick else 3.0,
        }
        wall = BenchSettings(**common, rounds=1 if args.quick else args.rounds, threads=args.threads)
        cpu = BenchSettings(**common, threads=1, clock="cpu")

        def progress(job: Job, done: int, total: int) -> None:
            print(f"{done}/{total} {job.runtime} {job.graph} {job.precision}", file=sys.stderr)

        passes = [("All cores, wall clock", run_bench(art, wall, progress))]
        passes.append(
            (
                "One core, CPU time of the calling thread (what a busy machine cannot disturb)",
                run_bench(art, cpu, progress),
            )
        )
        details = {**result.details, "parity_passed": result.report.passed}
        args.out.mkdir(parents=True, exist_ok=True)
        write_results(passes, details, args.out / "RESULTS.md", big)
        payload = {
            "passes": {title: r.to_json() for title, r in passes},
            "export": details,
            "parity": result.report.to_json(),
        }
        (args.out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        save_image(bench_chart(passes[0][1]), args.out / "bench.png")
    print(f"wrote {args.out / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
