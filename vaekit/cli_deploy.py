"""Deploy-side commands: export, parity, generate, reconstruct, info. Only `export` needs torch."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from vaekit.cli import DEPLOY_PANEL, command, out_console, require_torch
from vaekit.config import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_BATCH
from vaekit.errors import UsageError, VaekitError
from vaekit.fsutil import atomic_write_bytes, atomic_write_text
from vaekit.runtimes.base import Decoder
from vaekit.runtimes.loader import DECODER_ONNX
from vaekit.runtimes.parity import ParityReport

DEVICE_HELP = "cpu, cuda or tensorrt (ONNX Runtime execution provider; a .plan always runs on cuda)."


def _parse_devices(text: str) -> tuple[str, ...]:
    devices = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in devices if d not in ("cpu", "cuda", "tensorrt")]
    if bad or not devices:
        raise UsageError(f"--devices takes a comma list of cpu, cuda, tensorrt; got {text!r}")
    return devices


def _print_report(report: ParityReport, value_range: tuple[float, float], png: Path | None) -> None:
    from vaekit.reports import parity_table, save_parity_png

    out_console.print(parity_table(report))
    for line in report.skipped:
        out_console.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    for line in report.errors:
        out_console.print(f"[red]error[/] {escape(line)}", highlight=False)
    if png is not None:
        save_parity_png(report, value_range, png)


ARTIFACT_PATTERNS = (
    "*.onnx",
    "*.plan",
    "*.plan.json",
    "manifest.json",
    "parity.json",
    "parity.png",
    "parity_inputs.npz",
)


def _publish(staging: Path, out: Path) -> None:
    """Move each staged file into out (one atomic rename per file), drop artifacts of an older export
    that this one did not write (a stale decoder.fp16.onnx would otherwise sit beside a new manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    fresh = {item.name for item in staging.iterdir() if item.is_file()}
    for pattern in ARTIFACT_PATTERNS:
        for old in out.glob(pattern):
            if old.name not in fresh:
                old.unlink()
    for item in staging.iterdir():
        if item.is_dir():  # a runtime's cache (ORT TensorRT EP): rebuilt on demand, not an artifact
            shutil.rmtree(item)
        else:
            os.replace(item, out / item.name)
    staging.rmdir()


@command(DEPLOY_PANEL)
def export(
    checkpoint: Annotated[Path, typer.Option(help="Run directory or model.safetensors.")],
    out: Annotated[Path, typer.Option(help="Artifact directory.")] = Path("artifacts/default"),
    max_batch: Annotated[
        int, typer.Option(help="Largest batch the artifacts accept (TensorRT profile max).")
    ] = DEFAULT_MAX_BATCH,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8: the graph TensorRT builds from.")] = "fp32",
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write QDQ int8 graphs (ONNX Runtime static quantization).")
    ] = False,
    calibration_images: Annotated[
        int, typer.Option(help="Real images used to calibrate int8.")
    ] = DEFAULT_CALIBRATION_IMAGES,
    trt: Annotated[
        bool, typer.Option("--trt", help="Also build TensorRT engines (needs an NVIDIA GPU + tensorrt).")
    ] = False,
    data: Annotated[str | None, typer.Option(help="Images for parity/calibration; default: the run's data.")] = None,
) -> None:
    """Write encoder.onnx + decoder.onnx (+ fp16/int8 graphs, + .plan engines), then prove them by parity."""
    require_torch("export")
    from vaekit.export.pipeline import PARITY_PNG, export_artifacts

    if trt:
        from vaekit.runtimes.loader import tensorrt_status

        missing = tensorrt_status()
        if missing:
            raise VaekitError(f"--trt: {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        result = export_artifacts(
            checkpoint,
            staging,
            max_batch=max_batch,
            precision=precision,
            int8=int8,
            calibration_images=calibration_images,
            trt=trt,
            data=data,
            on_step=lambda name, s: out_console.print(f"[dim]{name:>9}[/] {s:6.2f} s", highlight=False),
        )
        _print_report(result.report, _value_range(staging), staging / PARITY_PNG)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not result.report.passed:
        rejected = out.with_name(out.name + "-rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        staging.rename(rejected)
        raise VaekitError(f"parity failed: {out} left unchanged; the artifacts are kept in {rejected} for inspection")
    _publish(staging, out)
    out_console.print(f"[green]parity passed[/]: artifacts in {out}/ ({sum(result.steps.values()):.1f} s)")


def _value_range(artifact_dir: Path) -> tuple[float, float]:
    from vaekit.runtimes.loader import describe

    return describe(artifact_dir / DECODER_ONNX).value_range


@command(DEPLOY_PANEL)
def parity(
    artifacts: Annotated[Path, typer.Argument(help="Artifact directory written by `vaekit export`.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Reference run; default: the fp32 ONNX graphs on CPU.")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Images to encode; default: the ones saved at export.")] = None,
    devices: Annotated[str, typer.Option(help="Devices to try, comma separated.")] = "cpu,cuda,tensorrt",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    png: Annotated[Path | None, typer.Option(help="Write reference | runtime | |diff| here.")] = None,
) -> None:
    """Compare every artifact on every runtime here against the reference; exit 1 if a tolerance breaks."""
    from vaekit.data import load_data, to_float
    from vaekit.runtimes.loader import describe
    from vaekit.runtimes.parity import load_inputs, run_parity

    wanted = _parse_devices(devices)
    if not artifacts.is_dir():
        raise VaekitError(f"{artifacts} is not an artifact directory")
    info = describe(artifacts / DECODER_ONNX)
    images_u8, z = load_inputs(artifacts)
    if data:
        c, h, _ = info.image_shape
        images_u8 = load_data(data, h, c, limit=len(images_u8)).test
    report = run_parity(artifacts, checkpoint, to_float(images_u8, info.value_range), z, wanted)
    _print_report(report, info.value_range, png or artifacts / "parity.png")
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_json(), indent=2) + "\n")
    if not report.passed:
        if not report.cases and not report.errors:
            raise VaekitError(
                "nothing to compare: only the reference runs here (pass --checkpoint, or export fp16/int8 graphs)"
            )
        problems = report.errors + [f"{c.runtime} {c.output}: {c.broken[0]}" for c in report.cases if c.broken]
        more = f" (+{len(problems) - 1} more in the table above)" if len(problems) > 1 else ""
        raise VaekitError(f"parity failed: {problems[0]}{more}")
    out_console.print(f"[green]parity passed[/] ({len(report.cases)} checks)")


def _checked(path: Path, role: str, trust: bool) -> Path:
    """Resolve an artifact and print where it came from (refusing a hash mismatch unless --trust)."""
    from vaekit.export.manifest import provenance
    from vaekit.runtimes.loader import resolve

    resolved = resolve(path, role)
    if resolved.suffix != ".safetensors":
        out_console.print(f"[dim]{escape(provenance(resolved, trust))}[/]", highlight=False)
    return resolved


def _device_for(path: Path, device: str) -> str:
    return "cuda" if path.suffix in (".plan", ".engine") else device


def _load_decoder_checked(engine: Path, device: str, trust: bool) -> Decoder:
    from vaekit.runtimes import load_decoder

    resolved = _checked(engine, "decoder", trust)
    return load_decoder(resolved, _device_for(resolved, device))


@command(DEPLOY_PANEL)
def generate(
    engine: Annotated[Path, typer.Option(help="Decoder: .onnx, .plan, run dir or artifact dir.")],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of z ~ N(0, I).")] = 0,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("samples.png"),
    npy: Annotated[Path | None, typer.Option(help="Also save z and images as .npz.")] = None,
    interpolate: Annotated[
        int | None, typer.Option(help="K steps between pairs of seeded samples (n // K rows).")
    ] = None,
    traverse: Annotated[int | None, typer.Option(help="K steps over [-3, 3] for each top latent dimension.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    trust: Annotated[bool, typer.Option(help="Load an artifact whose hash does not match its manifest.")] = False,
) -> None:
    """Decode samples from the prior (or interpolations / traversals) with any decoder artifact."""
    from vaekit.generate import decode_all, interpolation_latents, prior_latents, traversal_latents
    from vaekit.images import grid, save_png, upscale

    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    if interpolate is not None and traverse is not None:
        raise UsageError("--interpolate and --traverse are separate pictures: pick one")
    steps = interpolate if interpolate is not None else traverse
    if steps is not None and steps < 2:
        raise UsageError(f"--interpolate/--traverse needs >= 2 steps, got {steps}")
    decoder = _load_decoder_checked(engine, device, trust)
    d = decoder.info.latent_dim
    ncol = None
    if interpolate is not None:
        z, ncol = interpolation_latents(max(1, n // interpolate), interpolate, d, seed), interpolate
    elif traverse is not None:
        z, dims = traversal_latents(decoder, max(1, n // traverse), traverse)
        ncol = traverse
        out_console.print(f"[dim]rows traverse latent dimensions {dims}[/]", highlight=False)
    else:
        z = prior_latents(n, d, seed)
    images = decode_all(decoder, z)
    save_png(upscale(grid(images, decoder.info.value_range, ncol=ncol), 512), out)
    if npy:
        buf = io.BytesIO()
        np.savez(buf, z=z, images=images)
        atomic_write_bytes(npy, buf.getvalue())
    out_console.print(f"[green]wrote[/] {out} ({len(images)} images, {decoder.info.name})")


@command(DEPLOY_PANEL)
def reconstruct(
    encoder: Annotated[Path, typer.Option(help="Encoder: .onnx, .plan, run dir or artifact dir.")],
    decoder: Annotated[Path, typer.Option(help="Decoder: .onnx, .plan, run dir or artifact dir.")],
    data: Annotated[str | None, typer.Option(help="Images; default: those saved beside the encoder at export.")] = None,
    n: Annotated[int, typer.Option(help="Number of images.")] = 32,
    out: Annotated[Path, typer.Option(help="PNG: inputs above, reconstructions below.")] = Path("recon.png"),
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    trust: Annotated[bool, typer.Option(help="Load an artifact whose hash does not match its manifest.")] = False,
) -> None:
    """Encode real images to mu and decode them back, with any pair of artifacts."""
    from vaekit.data import load_data, to_float
    from vaekit.generate import reconstruct as run_reconstruct
    from vaekit.images import grid, labelled_rows, save_png, upscale
    from vaekit.runtimes import load_encoder
    from vaekit.runtimes.parity import load_inputs

    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    enc_path = _checked(encoder, "encoder", trust)
    enc = load_encoder(enc_path, _device_for(enc_path, device))
    dec = _load_decoder_checked(decoder, device, trust)
    c, h, _ = enc.info.image_shape
    images_u8 = load_data(data, h, c, limit=n).test if data else load_inputs(enc_path.parent)[0][:n]
    images = to_float(images_u8, enc.info.value_range)
    recon, psnr = run_reconstruct(enc, dec, images)
    vr = dec.info.value_range
    ncol = min(16, len(images))
    save_png(
        upscale(labelled_rows([("input", grid(images, vr, ncol)), ("reconstruction", grid(recon, vr, ncol))]), 512), out
    )
    out_console.print(
        f"[green]wrote[/] {out}: {len(images)} images, mean PSNR {psnr:.2f} dB ({enc.info.name} -> {dec.info.name})"
    )


@command(DEPLOY_PANEL)
def info(
    artifact: Annotated[
        Path | None, typer.Argument(help="An .onnx, .plan or run dir; omit to describe this machine.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What an artifact is (shapes, latent dim, precision, provenance), or which runtimes this machine has."""
    from vaekit.doctor import machine_report
    from vaekit.runtimes.loader import describe

    data = describe(artifact).to_json() if artifact is not None else machine_report()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=str(artifact) if artifact else "this machine", show_header=False)
    for key, value in data.items():
        table.add_row(key, escape(value if isinstance(value, str) else json.dumps(value)))
    out_console.print(table)


@command(DEPLOY_PANEL)
def doctor() -> None:
    """Which runtimes, execution providers, GPUs and versions this machine has."""
    info(None, as_json=False)
