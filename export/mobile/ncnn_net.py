"""ncnn nets through pnnx: `encoder.ncnn.param/.bin`, `decoder.ncnn.param/.bin` (fp32) and the fp16 nets.

pnnx traces the graph (TorchScript) at batch 1: ncnn has no batch axis, and its runtime backend loops over
a batch image by image. pnnx stores fp16 weights unless told not to, so the fp32 net is written with
fp16=False. The fp16 net is written only where the model's activations leave fp16 the headroom the fp16
ONNX graphs are held to, measured on the parity inputs; parity then judges it like every artifact.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaekit.checkpoint import Run
from vaekit.errors import VaekitError, caused_by_interrupt
from vaekit.export.mobile.sidecar import write_sidecar
from vaekit.export.onnx import ANSI, DecoderGraph, EncoderGraph, graph_metadata
from vaekit.export.precisions.fp16 import FP16_MAX, HEADROOM_MARGIN
from vaekit.fsutil import captured_output
from vaekit.runtimes.artifacts import Role, ncnn_bin, ncnn_name

INSTALL = "pip install 'vaekit[mobile]'"
NCNN_INPUT, NCNN_OUTPUTS = "in0", {"encoder": ("out0", "out1"), "decoder": ("out0",)}  # pnnx's blob names


def peak_activation(module: nn.Module, inputs: torch.Tensor) -> float:
    """The largest |value| any layer of module produces on inputs (what fp16's range must hold)."""
    peak = [float(inputs.abs().max())]

    def record(_m: nn.Module, _i: Any, out: Any) -> None:
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                peak.append(float(t.detach().abs().max()))

    hooks = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return max(peak)


def _convert(module: nn.Module, example: torch.Tensor, work: Path, fp16: bool) -> tuple[Path, Path]:
    import pnnx

    traced = work / "graph.pt"
    try:
        with warnings.catch_warnings(), captured_output() as log:
            warnings.simplefilter("ignore")
            pnnx.export(module, str(traced), (example,), fp16=fp16)
    except Exception as exc:  # pnnx raises what its tracer raises
        if caused_by_interrupt(exc):
            raise KeyboardInterrupt from None
        first = ANSI.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VaekitError(f"pnnx could not convert the {module.__class__.__name__}: {first}") from None
    param, weights = work / "graph.ncnn.param", work / "graph.ncnn.bin"
    if not param.is_file() or not weights.is_file():
        raise VaekitError(f"pnnx wrote no ncnn net ({log.last_line() or 'it printed nothing'})")
    return param, weights


def export_ncnn(run: Run, out_dir: Path, max_batch: int, images: np.ndarray, z: np.ndarray) -> dict[str, Any]:
    """Write the fp32 ncnn nets and, where fp16 has the headroom, the fp16 nets, each with its sidecar;
    returns per role the fp16 headroom measured and per file its size and conversion seconds."""
    try:
        import ncnn  # noqa: F401
        import pnnx  # noqa: F401
    except ImportError:
        raise VaekitError(f"--ncnn needs ncnn and pnnx: {INSTALL}") from None
    m = run.cfg.model
    graphs: dict[Role, tuple[nn.Module, torch.Tensor]] = {
        "encoder": (EncoderGraph(run.model).eval(), torch.from_numpy(np.ascontiguousarray(images))),
        "decoder": (DecoderGraph(run.model).eval(), torch.from_numpy(np.ascontiguousarray(z))),
    }
    done: dict[str, Any] = {"files": {}, "fp16_headroom": {}}
    for role, (module, inputs) in graphs.items():
        headroom = FP16_MAX / max(peak_activation(module, inputs), 1e-30)
        done["fp16_headroom"][role] = round(min(headroom, 1e6), 3)
        example = torch.zeros(1, *m.image_shape) if role == "encoder" else torch.zeros(1, m.latent_dim)
        for precision in ("fp32", "fp16") if headroom >= HEADROOM_MARGIN else ("fp32",):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".pnnx-") as tmp:
                param, weights = _convert(module, example, Path(tmp), fp16=precision == "fp16")
                dest = out_dir / ncnn_name(role, precision)
                shutil.move(weights, ncnn_bin(dest))
                shutil.move(param, dest)  # the param last: a net is there only once both halves are
            meta = graph_metadata(run.cfg, role, run.sha256, max_batch, precision)
            blobs = {"input": NCNN_INPUT, "outputs": list(NCNN_OUTPUTS[role])}
            write_sidecar(dest, {**meta, "graph": "ncnn", "fp16_min_headroom": str(done["fp16_headroom"][role])},
                          blobs=blobs)  # fmt: skip
            size = dest.stat().st_size + ncnn_bin(dest).stat().st_size
            done["files"][dest.name] = {"bytes": size, "seconds": time.perf_counter() - t0}
        if headroom < HEADROOM_MARGIN:
            done.setdefault("fp16_skipped", {})[role] = (
                f"peak activation leaves fp16 {headroom:.1f}x headroom (< {HEADROOM_MARGIN:g}x): no fp16 net"
            )
    return done
