"""ExecuTorch programs: `torch.export` -> XNNPACK-lowered `encoder.pte` / `decoder.pte`, and int8 programs
through the XNNPACK quantizer (pt2e), calibrated on real images.

The example input has the largest batch: a program traced at batch 2 refuses batch 16 even with
Dim(max=16). Some bounds still come out static (batch bound 16 with a 16-d latent ran only batch 16), so
each program is run at batch 1, a middle size and the maximum before it is kept, and lowered again with a
bound one larger when it fails. Every node must land in the XNNPACK delegate: the portable-kernel fallback
computes the same values ~20x slower, so a graph that is not whole is refused.
"""

from __future__ import annotations

import logging
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
from vaekit.fsutil import atomic_write_bytes, captured_output
from vaekit.runtimes.artifacts import Role, pte_name
from vaekit.runtimes.proving.parity import typical_rows

DELEGATE = "executorch_call_delegate"
INSTALL = "pip install 'vaekit[mobile]'"


def _quiet() -> None:
    """torchao logs every optional CUDA kernel it cannot load on a CPU machine: not the user's concern."""
    for name in ("torchao", "torch.export", "torch._export", "torch.utils._pytree", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _example(run: Run, role: Role, max_batch: int) -> torch.Tensor:
    m = run.cfg.model
    shape = (max_batch, *m.image_shape) if role == "encoder" else (max_batch, m.latent_dim)
    return torch.zeros(shape)


def _export(module: nn.Module, example: torch.Tensor, max_batch: int) -> Any:
    # Dim(min=1, max=1) is not a range torch.export accepts: a batch-1 program is static
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    return torch.export.export(module, (example,), dynamic_shapes=shapes)


def _quantize(program: Any, example: torch.Tensor, calibration: list[torch.Tensor], max_batch: int) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return _export(convert_pt2e(prepared), example, max_batch)


def _refused_batches(data: bytes, example: torch.Tensor, max_batch: int) -> list[int]:
    """The batch sizes of 1, a middle one and max_batch that the lowered program refuses to run."""
    from executorch.runtime import Runtime

    refused = []
    with captured_output():  # what ExecuTorch logs on a refused size: the sizes refused are the answer
        method = Runtime.get().load_program(data).load_method("forward")
        for n in sorted({1, (max_batch + 1) // 2, max_batch}):
            try:
                method.execute([torch.zeros(n, *example.shape[1:])])
            except RuntimeError:
                refused.append(n)
    return refused


def _lower(program: Any) -> tuple[bytes, int, list[str]]:
    """The .pte bytes, the number of XNNPACK delegate calls and the ops left outside it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    nodes = [n for n in edge.exported_program().graph_module.graph.nodes if n.op == "call_function"]
    delegates = sum(DELEGATE in str(n.target) for n in nodes)
    outside = [
        str(n.target).split(":")[0] for n in nodes if DELEGATE not in str(n.target) and "getitem" not in str(n.target)
    ]
    return edge.to_executorch().buffer, delegates, outside


def calibration_batches(run: Run, role: Role, images: np.ndarray, z: np.ndarray, size: int) -> list[torch.Tensor]:
    """The inputs the graph sees in use: real images for the encoder; for the decoder, the latents those
    images encode to (mu) and the typical prior samples of z (stress latents are left to clip)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if role == "decoder":
        with torch.no_grad():
            mu = run.model.eval().encode(x)[0]
        x = torch.cat([mu, torch.from_numpy(z[typical_rows(z)])])
    return [x[i : i + size] for i in range(0, len(x), size)]


def _program(
    run: Run,
    role: Role,
    module: nn.Module,
    max_batch: int,
    precision: str,
    calibration: np.ndarray | None,
    z: np.ndarray,
) -> tuple[bytes, int, list[str]]:
    """The lowered program that runs every batch in 1..max_batch (b"" when no bound tried does)."""
    for bound in (max_batch, max_batch + 1, max_batch + 2):
        example = _example(run, role, bound)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = _export(module.eval(), example, bound)
            if calibration is not None and precision == "int8":
                batches = calibration_batches(run, role, calibration, z, min(max_batch, 32))
                program = _quantize(program, example, batches, bound)
            data, delegates, outside = _lower(program)
        if not _refused_batches(data, example, max_batch):
            return data, delegates, outside
    return b"", 0, []


def export_pte(
    run: Run, out_dir: Path, max_batch: int, calibration: np.ndarray | None, z: np.ndarray
) -> dict[str, Any]:
    """Write encoder.pte and decoder.pte (and *.int8.pte when calibration images are given) with sidecars;
    z: the parity latents, whose typical rows calibrate the int8 decoder. Returns, per file, its delegate
    count, size and export seconds."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise VaekitError(f"--executorch needs ExecuTorch: {INSTALL}") from None
    _quiet()
    graphs: dict[Role, nn.Module] = {"encoder": EncoderGraph(run.model), "decoder": DecoderGraph(run.model)}
    done: dict[str, Any] = {}
    precisions = ["fp32", "int8"] if calibration is not None else ["fp32"]
    for role, module in graphs.items():
        for precision in precisions:
            t0 = time.perf_counter()
            path = out_dir / pte_name(role, precision)
            try:
                data, delegates, outside = _program(run, role, module, max_batch, precision, calibration, z)
            except VaekitError:
                raise
            except Exception as exc:  # torch.export and the lowering raise many types: the graph did not lower
                if caused_by_interrupt(exc):
                    raise KeyboardInterrupt from None
                first = ANSI.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise VaekitError(f"ExecuTorch export of {path.name} failed: {first}") from None
            if not data:
                raise VaekitError(f"{path.name}: ExecuTorch's program refuses some batch sizes in 1..{max_batch}")
            if delegates != 1 or outside:
                left = f"; outside it: {', '.join(sorted(set(outside)))}" if outside else ""
                raise VaekitError(
                    f"{path.name}: XNNPACK took the graph in {delegates} pieces{left} (portable kernels run ~20x "
                    "slower); this model has a layer XNNPACK does not lower"
                )
            atomic_write_bytes(path, data)
            meta = graph_metadata(run.cfg, role, run.sha256, max_batch, precision)
            write_sidecar(path, {**meta, "graph": "executorch-xnnpack"}, delegates=delegates)
            done[path.name] = {"delegates": delegates, "bytes": len(data), "seconds": time.perf_counter() - t0}
    return done
