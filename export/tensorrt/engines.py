"""`vaekit build-engine` as a library call: a TensorRT engine from an exported ONNX graph, built on the device
that will run it, and listed in the manifest beside it.

Precision comes from the graph (TensorRT builds strongly typed networks); asking for fp16 or bf16 given an
fp32 graph writes that graph first, checked on the parity inputs saved beside it at export.
Needs onnx + onnxruntime + tensorrt, never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.data import to_float
from vaekit.errors import UsageError, VaekitError
from vaekit.export.manifest import add_files
from vaekit.runtimes.artifacts import ONNX_SUFFIX, PRECISIONS, load_inputs, onnx_name, plan_name, sidecar_path
from vaekit.runtimes.backends.cuda import gpu_identity
from vaekit.runtimes.base import ArtifactInfo
from vaekit.runtimes.registry import BACKENDS, describe


@dataclass
class EngineRequest:
    onnx: Path
    precision: str | None = None  # None: the graph's own
    max_batch: int | None = None  # None: the export's
    opt_batch: int | None = None  # None: max_batch
    out: Path | None = None  # None: <role>.plan beside the graph
    workspace_mib: int = 1024

    def check(self) -> ArtifactInfo:
        """Every rule of the request; returns what the graph is."""
        if self.onnx.suffix.lower() != ONNX_SUFFIX:
            raise UsageError(f"build-engine takes an .onnx graph, got {self.onnx.name}")
        if self.precision not in (None, *PRECISIONS):
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mib < 1:
            raise UsageError(f"--workspace-mib must be >= 1, got {self.workspace_mib}")
        for flag, value in (("--max-batch", self.max_batch), ("--opt-batch", self.opt_batch)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        info = describe(self.onnx)
        if self.converts(info) and self.precision == "int8":
            int8_graph = onnx_name(info.role, "int8")
            raise UsageError(f"int8 engines are built from the Q/DQ graph: `vaekit export --int8` writes {int8_graph}")
        if self.converts(info) and (info.precision != "fp32" or self.precision not in FLOAT_GRAPHS):
            raise UsageError(
                f"{self.onnx.name} holds an {info.precision} graph: the engine's precision is the graph's; "
                f"pass the {self.precision} graph instead"
            )
        return info

    def converts(self, info: ArtifactInfo) -> bool:
        return self.precision is not None and self.precision != info.precision


FLOAT_GRAPHS = ("fp16", "bf16")  # precisions written from the fp32 graph without calibration data


def float_converter(precision: str) -> Callable[[Path, Path, np.ndarray, np.ndarray], dict[str, Any]]:
    """The pass that writes a `precision` graph from the fp32 one: fp16 range-profiled, bf16 rounded."""
    if precision == "fp16":
        from vaekit.export.precisions.fp16 import convert_fp16

        return convert_fp16
    from vaekit.export.precisions.bf16 import convert_bf16

    return convert_bf16


def _float_graph(onnx: Path, info: ArtifactInfo, precision: str) -> tuple[Path, dict[str, Any]]:
    images_u8, z = load_inputs(onnx.parent)
    target = onnx.with_name(onnx_name(info.role, precision))
    return target, float_converter(precision)(onnx, target, to_float(images_u8, info.value_range), z)


def build_for_device(request: EngineRequest) -> dict[str, Any]:
    """Check, convert if asked, build, and record the new files in the manifest; returns the build summary
    (with the conversion's report under its precision, "fp16" or "bf16", when one was made)."""
    from vaekit.export.tensorrt.build import build_engine, check_gpu_precision

    info = request.check()
    missing = BACKENDS["trt"].status("cuda")
    if missing:
        raise VaekitError(f"build-engine needs TensorRT and an NVIDIA GPU: {missing}")
    check_gpu_precision(request.precision or info.precision, gpu_identity(0))
    converted = request.converts(info)
    source, report = _float_graph(request.onnx, info, str(request.precision)) if converted else (request.onnx, None)
    plan = request.out or request.onnx.parent / plan_name(info.role)
    result = build_engine(
        source,
        plan,
        info.max_batch if request.max_batch is None else request.max_batch,
        opt_batch=request.opt_batch,
        workspace=request.workspace_mib * 2**20,
    )
    add_files(plan.parent, [plan, sidecar_path(plan), *([source] if source != request.onnx else [])])
    if report is not None:
        result[str(request.precision)] = report
    return result
