"""`vaekit build-engine`: a TensorRT engine from an exported ONNX graph, built on the device that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vaekit.cli.app import DEPLOY_PANEL, command, note, wrote


@command(DEPLOY_PANEL, name="build-engine")
def build_engine(
    onnx: Annotated[Path, typer.Argument(help="encoder.onnx or decoder.onnx (or its .fp16 / .bf16 / .int8 graph).")],
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp16 or bf16 converts an fp32 graph first; otherwise the graph's own.", show_default="the graph's"
        ),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Largest batch (profile max).", show_default="the export's")
    ] = None,
    opt_batch: Annotated[int | None, typer.Option(help="Batch to tune for.", show_default="--max-batch")] = None,
    out: Annotated[Path | None, typer.Option(help="Plan to write.", show_default="<role>.plan beside it")] = None,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT workspace limit in MiB.")] = 1024,
) -> None:
    """Build a TensorRT engine (+ its .plan.json sidecar) from an ONNX graph, on this GPU."""
    from vaekit.export.tensorrt.engines import EngineRequest, build_for_device

    result = build_for_device(EngineRequest(onnx, precision, max_batch, opt_batch, out, workspace_mib))
    if "bf16" in result:
        note(f"wrote {result['bf16']['file']}: {result['bf16']['nodes']['bf16']} nodes bf16")
    if "fp16" in result:
        fp16 = result["fp16"]
        kept = ", ".join(b["node"] for b in fp16["blocked"]) or "none"
        note(
            f"wrote {fp16['file']}: {fp16['nodes']['fp16']} nodes fp16, kept fp32: {kept}; "
            f"min headroom {fp16['min_headroom_fp16']:g}x below 65504"
        )
    layers = ", ".join(f"{n} {p}" for p, n in sorted(result["layers"].items()))
    wrote(
        (out or onnx.parent / result["plan"]),
        f" ({result['precision']} from {result['source']}; layers: {layers}; "
        f"batch {result['profile']['min'][0]}..{result['profile']['max'][0]}; TensorRT {result['tensorrt']} on "
        f"{result['gpu']['name']}; {result['seconds']:.1f} s)",
    )
