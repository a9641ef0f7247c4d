"""Deploy commands: export, parity, generate, reconstruct, info, doctor. Only `export` needs torch."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import numpy as np
import typer
from rich.markup import escape

from vaekit.cli.app import DEPLOY_PANEL, PARTIAL, command, err_console, fail, note, out_console, wrote
from vaekit.cli.tables import graph_notes, key_value_table, parity_table
from vaekit.config import (
    DEFAULT_ARTIFACTS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MAX_BATCH,
    SAMPLE_COUNT,
    SAMPLE_SEED,
)
from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes, atomic_write_text
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.proving.parity import ParityReport

if TYPE_CHECKING:
    from vaekit.runtimes.proving.layerwise import LayerwiseReport

DEVICE_HELP = "cpu, cuda or tensorrt (ONNX Runtime's TensorRT provider); default: the artifact's own (.plan: cuda)."
ALL_DEVICES = "cpu,cuda,tensorrt,wasm"
RUNTIME_HELP = "pyt, onnxrt, openvino, trt, executorch, ncnn; auto: the fastest verified one `bench --record` measured."
# The options every command that loads an artifact shares.
DeviceOption = Annotated[str | None, typer.Option(help=DEVICE_HELP)]
TrustOption = Annotated[bool, typer.Option("--trust", help="Load an artifact whose hash does not match its manifest.")]
RuntimeOption = Annotated[str | None, typer.Option(help=RUNTIME_HELP, show_default="the artifact's own")]


def _check_picture(n: int, out: Path) -> None:
    """--n and an --out this cannot write are refused before anything is loaded or decoded."""
    from vaekit.images import check_count, image_format

    check_count(n)
    image_format(out)


def _open(
    role: str, path: Path, device: str | None, trust: bool, runtime: str | None, batch: int
) -> tuple[Encoder | Decoder, str]:
    """The artifact's encoder or decoder and where it came from; `--runtime auto`: the fastest verified runtime
    `vaekit bench --record` measured for this directory on this machine."""
    from vaekit.fsutil import dir_lock
    from vaekit.runtimes.artifacts import artifact_dir_of, provenance
    from vaekit.runtimes.measuring.fastest import load_fastest
    from vaekit.runtimes.registry import open_decoder, open_encoder

    if runtime == "auto":
        with dir_lock(artifact_dir_of(path), exclusive=False):  # no export publishes between choice and check
            loaded, why = load_fastest(artifact_dir_of(path), "encoder" if role == "encoder" else "decoder", batch)
            return loaded, f"{why}; {provenance(Path(loaded.info.path), trust)}"
    opener = open_encoder if role == "encoder" else open_decoder
    return opener(path, device or "", trust, runtime)


def _print_report(report: ParityReport) -> None:
    out_console.print(parity_table(report))
    if report.skipped:  # one line: what this machine lacks
        out_console.print(f"[yellow]not on this machine[/] {escape('; '.join(report.skipped))}", highlight=False)
    for line in report.errors:
        out_console.print(f"[red]error[/] {escape(line)}", highlight=False)


@command(DEPLOY_PANEL)
def export(
    checkpoint: Annotated[Path, typer.Option(help="Run directory or model.safetensors.")],
    out: Annotated[Path, typer.Option(help="Artifact directory.")] = Path(DEFAULT_ARTIFACTS),
    max_batch: Annotated[
        int, typer.Option(help="Largest batch the artifacts accept (TensorRT profile max).")
    ] = DEFAULT_MAX_BATCH,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, fp16, bf16 or int8: the graph TensorRT builds from (fp16/bf16/int8 graphs are written)."
        ),
    ] = "fp32",
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write QDQ int8 graphs (ONNX Runtime static quantization).")
    ] = False,
    int8_target: Annotated[
        str,
        typer.Option(
            help="CPUs the int8 graphs must hold on: any (every x86 class and ARM64; 7-bit weights where 8-bit "
            "would saturate without VNNI) or vnni (VNNI/AMX x86 and ARM64 only: 8-bit weights)."
        ),
    ] = "any",
    calibration_images: Annotated[
        int, typer.Option(help="Real images used to calibrate int8.")
    ] = DEFAULT_CALIBRATION_IMAGES,
    trt: Annotated[
        bool, typer.Option("--trt", help="Also build TensorRT engines (needs an NVIDIA GPU + tensorrt).")
    ] = False,
    data: Annotated[str | None, typer.Option(help="Images for parity/calibration; default: the run's data.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export in --out.")] = False,
    executorch: Annotated[
        bool, typer.Option("--executorch", help="Also write XNNPACK .pte programs (+ int8 ones with --int8).")
    ] = False,
    ncnn: Annotated[bool, typer.Option("--ncnn", help="Also write ncnn nets (fp32, and fp16 where it fits).")] = False,
    web: Annotated[
        bool,
        typer.Option("--web", help="Also write web/: the latent-space explorer page, the graphs, ONNX Runtime Web."),
    ] = False,
    web_runtime_dir: Annotated[
        Path | None, typer.Option(help="With --web: ONNX Runtime Web's files from this folder, not the npm registry.")
    ] = None,
) -> None:
    """Write encoder.onnx + decoder.onnx (+ fp16/int8 graphs, + .plan engines), then prove them by parity."""
    from vaekit.export.pipeline import ExportOptions, export_artifacts
    from vaekit.runtimes.registry import BACKENDS

    if trt and (missing := BACKENDS["trt"].status("cuda")):
        raise VaekitError(f"--trt: {missing}")
    if web:
        from vaekit.export.web.bundle import check_runtime_dir

        check_runtime_dir(out, web_runtime_dir)  # before the export replaces out/web
    options = ExportOptions(
        max_batch, precision, int8, int8_target, calibration_images, trt, data, overwrite, executorch, ncnn
    )
    result = export_artifacts(
        checkpoint,
        out,
        options,
        on_step=lambda name, s: out_console.print(f"[dim]{name:>9}[/] {s:6.2f} s", highlight=False),
    )
    _print_report(result.report)
    if not result.passed:
        where = f"; {result.diagnosis}" if result.diagnosis else ""
        raise VaekitError(
            f"{result.report.failure()}{where}; {out} left unchanged, the artifacts are kept in {result.out_dir}"
        )
    for line in graph_notes(result.details):
        note(line)
    out_console.print(f"[green]parity passed[/]: artifacts in {out}/ ({sum(result.steps.values()):.1f} s)")
    if web:
        from vaekit.export.web.bundle import build_bundle

        wrote(build_bundle(out, web_runtime_dir), f" (vaekit view {out} serves it)")
    if result.dropped:  # the verified graphs are published; the precision asked for is not: say so, and exit so
        for name, why in result.dropped.items():
            err_console.print(f"[bold red]not published:[/] {escape(name)}: {escape(why)}", highlight=False)
        rejected = out.with_name(out.name + "-rejected")
        raise fail(
            f"not every precision asked for passed: the rest is in {out}/, the failed graphs in {rejected}/", PARTIAL
        )


@command(DEPLOY_PANEL)
def parity(
    artifacts: Annotated[Path, typer.Argument(help="Artifact directory written by `vaekit export`.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Reference run; default: the golden outputs stored at export.")
    ] = None,
    reference_onnx: Annotated[
        bool, typer.Option("--reference-onnx", help="Judge against the fp32 ONNX graphs on CPU (no golden outputs).")
    ] = False,
    data: Annotated[str | None, typer.Option(help="Images to encode; default: the ones saved at export.")] = None,
    devices: Annotated[str, typer.Option(help="Devices to try, comma separated.")] = ALL_DEVICES,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    png: Annotated[
        Path | None,
        typer.Option(help="Write reference | runtime | |diff| here.", show_default="parity.png in the directory"),
    ] = None,
    layerwise: Annotated[
        bool,
        typer.Option(
            "--layerwise", help="Compare every layer of each ONNX graph and ncnn net; name the first that diverges."
        ),
    ] = False,
) -> None:
    """Compare every artifact on every runtime here against the reference; exit 1 if a tolerance breaks."""
    from vaekit.runtimes.artifacts import PARITY_PNG
    from vaekit.runtimes.proving.parity import parity_of
    from vaekit.runtimes.proving.pictures import save_parity_png

    wanted = tuple(d.strip() for d in devices.split(",") if d.strip())
    report, info = parity_of(artifacts, checkpoint, data, wanted, reference_onnx)
    _print_report(report)
    picture = png or artifacts / PARITY_PNG
    if report.previews:
        save_parity_png(report, info.value_range, picture)
        wrote(picture)
    payload = report.to_json()
    layers = _layerwise(artifacts, checkpoint) if layerwise else []
    if layers:
        first = next((r for r in layers if r.first_divergence), None)
        payload["first_divergence"] = first.first_divergence if first else None
        payload["layerwise"] = [r.to_json() for r in layers]
    if json_out:
        atomic_write_text(json_out, json.dumps(payload, indent=2) + "\n")
        wrote(json_out)
    diverged = [r for r in layers if not r.passed]
    if not report.passed or diverged:
        raise VaekitError(report.failure() if not report.passed else f"layerwise: {diverged[0].summary()}")
    out_console.print(f"[green]parity passed[/] ({len(report.cases)} checks)")


def _layerwise(artifacts: Path, checkpoint: Path | None) -> list[LayerwiseReport]:
    """Every ONNX graph (on ONNX Runtime CPU) and ncnn net of the directory, layer by layer, against the PyTorch
    model (or, without a checkpoint, the fp32 graph): a table each, an error-per-layer PNG each, the first
    divergence."""
    from rich.table import Table

    from vaekit.runtimes.artifacts import NCNN_PARAM_SUFFIX, ONNX_SUFFIX, artifact_dir_of, artifact_files
    from vaekit.runtimes.proving.layerwise import LayerwiseReport, compare_layers, save_layer_error_png
    from vaekit.runtimes.registry import describe, runnable_backend

    reports = []
    directory = artifact_dir_of(artifacts)
    for _, path in artifact_files(directory):
        if not path.name.endswith((ONNX_SUFFIX, NCNN_PARAM_SUFFIX)):
            continue  # engines need TensorRT on a GPU to mark layers; ExecuTorch exposes no intermediate tensors
        precision = describe(path).precision
        if runnable_backend(path, "cpu", precision) is None and path.suffix == ONNX_SUFFIX:
            note(f"{path.name}: no runtime here runs a {precision} graph on the CPU (bf16: vaekit[openvino]); skipped")
            continue
        report = compare_layers(path, checkpoint)
        table = Table(title=f"{path.name} on {report.runtime} vs {report.reference}: {report.summary()}")
        for column in LayerwiseReport.COLUMNS:
            table.add_column(column)
        for row in report.rows():
            table.add_row(*(escape(cell) for cell in row))
        out_console.print(table)
        for line in report.notes:
            note(line)
        picture = directory / f"layers.{path.stem}.png"
        save_layer_error_png(report, picture)
        wrote(picture)
        reports.append(report)
    return reports


@command(DEPLOY_PANEL)
def generate(
    engine: Annotated[Path, typer.Option(help="Decoder: .onnx, .plan, run dir or artifact dir.")],
    n: Annotated[int, typer.Option(help="Number of samples.")] = SAMPLE_COUNT,
    seed: Annotated[int, typer.Option(help="Seed of z ~ N(0, I); a run's samples.png is this seed's.")] = SAMPLE_SEED,
    out: Annotated[Path, typer.Option(help="Picture to write: .png, .jpg or .webp.")] = Path("samples.png"),
    npy: Annotated[Path | None, typer.Option(help="Also save z and images as .npz.")] = None,
    interpolate: Annotated[
        int | None, typer.Option(help="K steps between pairs of seeded samples: n // K rows of K.")
    ] = None,
    traverse: Annotated[
        int | None,
        typer.Option(help="K steps over [-3, 3] for each top latent dimension: n // K rows (dimensions) of K."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="With --traverse: data with known factors (shapes) to label rows by.")
    ] = None,
    device: DeviceOption = None,
    trust: TrustOption = False,
    runtime: RuntimeOption = None,
) -> None:
    """Decode samples from the prior (or interpolations / traversals) with any decoder artifact."""
    from vaekit.images import save_image
    from vaekit.runtimes.generate import check_pair, decode_all, generate_picture, picture_latents
    from vaekit.runtimes.traversal import around, by_kl, row_labels, score_encoder

    _check_picture(n, out)
    if data is not None and traverse is None:
        raise VaekitError("--data labels the rows of a traversal: add --traverse K")
    loaded, origin = _open("decoder", engine, device, trust, runtime, n)
    decoder = cast(Decoder, loaded)
    if origin:
        note(origin)
    report = None
    if data is not None:  # the encoder beside the decoder scores the code the rows are labelled from
        encoder = cast(
            Encoder, _open("encoder", engine if engine.is_dir() else engine.parent, device, trust, runtime, n)[0]
        )
        check_pair(encoder, decoder)
        report = score_encoder(encoder, data)
        note(f"MIG {report.mig():.3f}, SAP {report.sap():.3f} over {report.n_images} images ({encoder.info.name})")
    order, centre = (by_kl(report), report.centre) if report else (None, None)
    z, ncol, dims = picture_latents(decoder, n, seed, interpolate, traverse, order, centre)
    if dims:
        note(f"rows traverse latent dimensions {dims}")
    images = decode_all(decoder, z)
    labels = row_labels(dims, report)
    save_image(generate_picture(images, decoder.info.value_range, seed, ncol, labels, around(report)), out)
    if npy:
        buf = io.BytesIO()
        np.savez(buf, z=z, images=images)
        atomic_write_bytes(npy, buf.getvalue())
    wrote(out, f" ({len(images)} images, {decoder.info.name})")


@command(DEPLOY_PANEL)
def reconstruct(
    encoder: Annotated[Path, typer.Option(help="Encoder: .onnx, .plan, run dir or artifact dir.")],
    decoder: Annotated[Path, typer.Option(help="Decoder: .onnx, .plan, run dir or artifact dir.")],
    data: Annotated[str | None, typer.Option(help="Images; default: those saved beside the encoder at export.")] = None,
    n: Annotated[int, typer.Option(help="Number of images.")] = 32,
    out: Annotated[Path, typer.Option(help="PNG: inputs above, reconstructions below.")] = Path("recon.png"),
    device: DeviceOption = None,
    trust: TrustOption = False,
    runtime: RuntimeOption = None,
) -> None:
    """Encode real images to mu and decode them back, with any pair of artifacts."""
    from vaekit.data import load_data, to_float
    from vaekit.images import grid, labelled_rows, save_image, scale_to_width, titled
    from vaekit.runtimes.artifacts import load_inputs
    from vaekit.runtimes.generate import reconstruct as run_reconstruct

    _check_picture(n, out)
    loaded_enc, enc_origin = _open("encoder", encoder, device, trust, runtime, n)
    loaded_dec, dec_origin = _open("decoder", decoder, device, trust, runtime, n)
    enc, dec = cast(Encoder, loaded_enc), cast(Decoder, loaded_dec)
    for origin in (enc_origin, dec_origin):
        if origin:
            note(origin)
    c, h, _ = enc.info.image_shape
    images_u8 = load_data(data, h, c, limit=n).test if data else load_inputs(Path(enc.info.path).parent)[0][:n]
    images = to_float(images_u8, enc.info.value_range)
    recon, psnr = run_reconstruct(enc, dec, images)
    vr = dec.info.value_range
    ncol = min(16, len(images))
    rows = [("input", grid(images, vr, ncol)), ("reconstruction", grid(recon, vr, ncol))]
    title = f"reconstructions by {enc.info.name} -> {dec.info.name}: mean PSNR {psnr:.1f} dB"
    save_image(titled(labelled_rows(rows, scale_to_width(rows[0][1])), title), out)
    wrote(out, f": {len(images)} images, mean PSNR {psnr:.2f} dB ({enc.info.name} -> {dec.info.name})")


@command(DEPLOY_PANEL)
def info(
    artifact: Annotated[
        Path | None, typer.Argument(help="An .onnx, .plan or run dir; omit to describe this machine.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What an artifact is (shapes, latent dim, precision, provenance), or which runtimes this machine has."""
    from vaekit.runtimes.measuring.machine import machine_report
    from vaekit.runtimes.registry import describe

    if artifact is None:
        data = machine_report()
    elif artifact.is_dir():  # a run or an export: both halves
        data = {role: describe(artifact, role).to_json() for role in ("encoder", "decoder")}
    else:
        data = describe(artifact).to_json()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out_console.print(key_value_table(str(artifact) if artifact else "this machine", data))


@command(DEPLOY_PANEL)
def doctor() -> None:
    """Which runtimes, execution providers, GPUs and versions this machine has, and what each command lacks."""
    from vaekit.extras import report
    from vaekit.runtimes.measuring.machine import machine_report

    out_console.print(key_value_table("this machine", {**machine_report(), "commands": report()}))
