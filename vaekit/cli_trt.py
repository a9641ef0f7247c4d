"""`vaekit build-engine`: a TensorRT engine from an exported ONNX graph, built on the device that will run it.

Precision comes from the graph (TensorRT builds strongly typed networks); `--precision fp16` given an
fp32 graph writes the fp16 graph first, profiled on the parity inputs saved beside it at export.
Needs onnx + onnxruntime + tensorrt, never torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vaekit.cli import DEPLOY_PANEL, command, err_console, out_console
from vaekit.errors import UsageError, VaekitError
from vaekit.fsutil import atomic_write_text, sha256_file


def _convert_first(onnx: Path, role: str, value_range: tuple[float, float]) -> Path:
    from vaekit.data import to_float
    from vaekit.export.fp16 import convert_fp16
    from vaekit.runtimes.parity import load_inputs

    images_u8, z = load_inputs(onnx.parent)
    target = onnx.with_name(f"{role}.fp16.onnx")
    report = convert_fp16(onnx, target, to_float(images_u8, value_range), z)
    blocked = ", ".join(b["node"] for b in report["blocked"]) or "none"
    err_console.print(
        f"[dim]wrote {target.name}: {report['nodes']['fp16']} nodes fp16, kept fp32: {blocked}; "
        f"min headroom {report['min_headroom_fp16']:g}x below 65504[/]",
        highlight=False,
    )
    return target


def _record_in_manifest(paths: list[Path]) -> None:
    """A plan built here is trusted like an exported one: list its hash in the manifest beside it, if any."""
    from vaekit.export.manifest import MANIFEST, read_manifest

    directory = paths[0].parent
    manifest = read_manifest(directory)
    if manifest is None:
        return
    files: dict[str, Any] = manifest.setdefault("files", {})
    for path in paths:
        files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@command(DEPLOY_PANEL, name="build-engine")
def build_engine_command(
    onnx: Annotated[Path, typer.Argument(help="encoder.onnx or decoder.onnx (or its .fp16 / .int8 graph).")],
    precision: Annotated[
        str | None,
        typer.Option(help="fp16 converts an fp32 graph first; otherwise the graph's own.", show_default="the graph's"),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Largest batch (profile max).", show_default="the export's")
    ] = None,
    opt_batch: Annotated[int | None, typer.Option(help="Batch to tune for.", show_default="--max-batch")] = None,
    out: Annotated[Path | None, typer.Option(help="Plan to write.", show_default="<role>.plan beside it")] = None,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace limit in MiB.")] = 1024,
) -> None:
    """Build a TensorRT engine (+ its .plan.json sidecar) from an ONNX graph, on this GPU."""
    from vaekit.export.tensorrt import build_engine
    from vaekit.runtimes.loader import describe, tensorrt_status

    if onnx.suffix.lower() != ".onnx":
        raise UsageError(f"build-engine takes an .onnx graph, got {onnx.name}")
    if precision not in (None, "fp32", "fp16", "int8"):
        raise UsageError(f"--precision must be fp32, fp16 or int8, got {precision!r}")
    if workspace_mib < 1:
        raise UsageError(f"--workspace-mib must be >= 1, got {workspace_mib}")
    for flag, value in (("--max-batch", max_batch), ("--opt-batch", opt_batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    info = describe(onnx)
    convert = precision is not None and precision != info.precision
    if convert and precision == "int8":
        raise UsageError(
            f"int8 engines are built from the Q/DQ graph: `vaekit export --int8` writes {info.role}.int8.onnx"
        )
    if convert and (info.precision, precision) != ("fp32", "fp16"):
        raise UsageError(f"{onnx.name} is an {info.precision} graph: precision comes from the graph you pass")
    missing = tensorrt_status()
    if missing:
        raise VaekitError(f"build-engine needs TensorRT and an NVIDIA GPU: {missing}")
    source = _convert_first(onnx, info.role, info.value_range) if convert else onnx
    plan = out or onnx.parent / f"{info.role}.plan"
    result = build_engine(
        source,
        plan,
        info.max_batch if max_batch is None else max_batch,
        opt_batch=opt_batch,
        workspace=workspace_mib * 2**20,
    )
    _record_in_manifest([plan, plan.with_name(result["sidecar"]), *([source] if source != onnx else [])])
    layers = ", ".join(f"{n} {p}" for p, n in sorted(result["layers"].items()))
    out_console.print(
        f"[green]wrote[/] {plan} ({result['precision']} from {source.name}; layers: {layers}; "
        f"batch {result['profile']['min'][0]}..{result['profile']['max'][0]}; TensorRT {result['tensorrt']} on "
        f"{result['gpu']['name']}; {result['seconds']:.1f} s)"
    )
