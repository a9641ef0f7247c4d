"""ExecuTorch programs: `torch.export` -> XNNPACK-lowered `encoder.pte` / `decoder.pte`, and int8 programs
through the XNNPACK quantizer (pt2e), calibrated on real images.

The example input has the largest batch: a program traced at batch 2 refuses batch 16 even with
Dim(max=16). Some bounds still come out static (batch bound 16 with a 16-d latent ran only batch 16), so
each program is run at batch 1, a middle size and the maximum before it is kept, and lowered again with a
bound one larger when it fails. Every node must land in the XNNPACK delegate: the portable kernels compute
the same values about 100x slower (a batch-16 decoder here: 272 ms against 2.9 ms), so a graph that is not
whole is refused.
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
from vaekit.runtimes.proving.parity import TOLERANCES, judge, judged_as, metrics, typical_rows

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


CALIBRATIONS = ("typical", "typical+stress")  # tried in turn for int8, the first that holds is kept


def check_inputs(run: Run, role: Role, images: np.ndarray, z: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The inputs the graph sees in use, and which of them are typical: real images for the encoder; for the
    decoder, the latents those images encode to (mu) and the parity latents z (|z| = 4 ones are stress)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if role == "encoder":
        return x, np.ones(len(x), bool)
    with torch.no_grad():
        mu = run.model.eval().encode(x)[0]
    return torch.cat([mu, torch.from_numpy(z)]), np.concatenate([np.ones(len(mu), bool), typical_rows(z)])


def _broken(
    data: bytes,
    module: nn.Module,
    x: torch.Tensor,
    typical: np.ndarray,
    max_batch: int,
    value_range: tuple[float, float],
) -> list[str]:
    """The int8 tolerances the lowered program breaks on the check inputs, judged as parity judges them."""
    from executorch.runtime import Runtime

    with captured_output():
        method = Runtime.get().load_program(data).load_method("forward")
        got = [method.execute([x[i : i + max_batch]]) for i in range(0, len(x), max_batch)]
    with torch.no_grad():
        ref = module(x)
    outputs = [torch.cat(parts).numpy() for parts in zip(*got, strict=True)]
    refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    names = ("mu", "log_var") if len(refs) == 2 else ("image",)
    broken = []
    for name, r, g in zip(names, refs, outputs, strict=True):
        for stress, rows in ((False, typical), (True, ~typical)):
            if rows.any():
                row = TOLERANCES[("int8", "cpu")][judged_as(name, stress)]
                m = metrics(r[rows], g[rows], value_range if name == "image" else None)
                broken += [f"{judged_as(name, stress)}: {b}" for b in judge(m, row)]
    return broken


def _program(
    run: Run,
    role: Role,
    module: nn.Module,
    max_batch: int,
    precision: str,
    calibration: np.ndarray | None,
    z: np.ndarray,
) -> tuple[bytes, dict[str, Any]]:
    """The lowered program that runs every batch in 1..max_batch (b"" when no bound tried does) and what it is:
    delegates, ops outside them and, for int8, the calibration kept and what it still breaks."""
    x, typical = check_inputs(run, role, calibration, z) if calibration is not None else (torch.empty(0), np.ones(0))
    found: tuple[bytes, dict[str, Any]] = (b"", {})
    for calibrated in CALIBRATIONS if precision == "int8" else ("",):
        for bound in (max_batch, max_batch + 1, max_batch + 2):
            example = _example(run, role, bound)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = _export(module.eval(), example, bound)
                if calibrated:  # stress latents clip under "typical"; "typical+stress" stretches ranges for them
                    rows = x if calibrated == "typical+stress" else x[torch.from_numpy(typical)]
                    step = min(max_batch, 32)
                    batches = [rows[i : i + step] for i in range(0, len(rows), step)]
                    program = _quantize(program, example, batches, bound)
                data, delegates, outside = _lower(program)
            if not _refused_batches(data, example, max_batch):
                break
        else:
            return found
        about: dict[str, Any] = {"delegates": delegates, "outside": outside}
        if calibrated:
            broken = _broken(data, module, x, typical, max_batch, run.cfg.model.value_range)
            about |= {"calibration": f"{calibrated} ({len(x)} check inputs)", "broken": broken}
            if broken and (not found[0] or len(broken) < len(found[1]["broken"])):
                found = data, about
            if broken:
                continue
        return data, about
    return found


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
                data, about = _program(run, role, module, max_batch, precision, calibration, z)
            except VaekitError:
                raise
            except Exception as exc:  # torch.export and the lowering raise many types: the graph did not lower
                if caused_by_interrupt(exc):
                    raise KeyboardInterrupt from None
                first = ANSI.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise VaekitError(f"ExecuTorch export of {path.name} failed: {first}") from None
            if not data:
                raise VaekitError(f"{path.name}: ExecuTorch's program refuses some batch sizes in 1..{max_batch}")
            delegates, outside = about["delegates"], about["outside"]
            if delegates != 1 or outside:
                left = f"; outside it: {', '.join(sorted(set(outside)))}" if outside else ""
                raise VaekitError(
                    f"{path.name}: XNNPACK took the graph in {delegates} pieces{left} (portable kernels run about "
                    "100x slower); this model has a layer XNNPACK does not lower"
                )
            atomic_write_bytes(path, data)
            meta = graph_metadata(run.cfg, role, run.sha256, max_batch, precision)
            write_sidecar(path, {**meta, "graph": "executorch-xnnpack"}, delegates=delegates)
            about.pop("outside")
            done[path.name] = {**about, "bytes": len(data), "seconds": time.perf_counter() - t0}
    return done
