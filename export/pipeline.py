"""`vaekit export` as one library call: checkpoint -> ONNX graphs (+ fp16 / int8 graphs, + TensorRT engines)
-> parity -> parity.json, parity.png, manifest -> a published artifact directory.

Export is not done until parity against the PyTorch model has passed (optimum's validate_model_outputs):
everything is written into a staging directory beside `out`; on success each file moves into `out` by
an atomic rename and files an older export wrote but this one did not are dropped; on failure `out` is
left as it was and the staged artifacts move to `<out>-rejected/` for inspection. Each step is timed.
The checkpoint is read once: its config, weights and hash are passed on to every step.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vaekit.checkpoint import Run, load_run
from vaekit.config import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_BATCH
from vaekit.data import ImageData, data_dirs, load_data, to_float
from vaekit.errors import VaekitError
from vaekit.export.graph import finalize, set_metadata
from vaekit.export.manifest import write_manifest
from vaekit.export.onnx import export_onnx
from vaekit.export.publish import files_of, publish, reject, set_aside
from vaekit.export.tensorrt.engines import FLOAT_GRAPHS, float_converter
from vaekit.fsutil import atomic_write_bytes, atomic_write_text, check_output_dir, refuse_to_replace, run_lock
from vaekit.runtimes.artifacts import (
    ENGINE_SUFFIXES,
    NCNN_PARAM_SUFFIX,
    ONNX_SUFFIX,
    PARITY_INPUTS,
    PARITY_JSON,
    PARITY_PNG,
    PRECISIONS,
    PTE_SUFFIX,
    ROLES,
    cpu_graph_name,
    is_artifact_dir,
    ncnn_name,
    onnx_name,
    plan_name,
    pte_name,
    web_graph_name,
)
from vaekit.runtimes.backends import pyt
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu, rewrite_for_wasm
from vaekit.runtimes.backends.onnxrt import graph_metadata, read_graph
from vaekit.runtimes.cpu import TARGET_CLASSES
from vaekit.runtimes.proving.golden import save_golden
from vaekit.runtimes.proving.parity import Case, ParityReport, References, fixed_latents, run_parity
from vaekit.runtimes.proving.pictures import save_parity_png

StepFn = Callable[[str, float], None]  # (step name, seconds) after each step
T = TypeVar("T")


@dataclass
class ExportResult:
    out_dir: Path  # where the artifacts are: `out` when parity passed, `<out>-rejected` when not
    report: ParityReport
    steps: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    diagnosis: str = ""  # when parity failed: the first layer that diverges, from the layerwise pass
    dropped: dict[str, str] = field(default_factory=dict)  # optional precision graph -> why it was not published

    @property
    def passed(self) -> bool:
        return self.report.passed


@dataclass
class ExportOptions:
    max_batch: int = DEFAULT_MAX_BATCH
    precision: str = "fp32"  # the graph TensorRT builds from
    int8: bool = False
    int8_target: str = "any"  # the CPUs an int8 graph must hold on (runtimes.cpu.TARGET_CLASSES)
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    trt: bool = False
    data: str | None = None  # images for parity and calibration; default: the run's own
    overwrite: bool = False  # replace an existing artifact directory
    executorch: bool = False  # encoder/decoder.pte (+ .int8.pte with int8)
    ncnn: bool = False  # encoder/decoder.ncnn.param/.bin (+ fp16 nets where the headroom allows)

    def check(self) -> None:
        if self.max_batch < 1:
            raise VaekitError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.precision not in PRECISIONS:
            raise VaekitError(f"unknown --precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.int8_target not in TARGET_CLASSES:
            raise VaekitError(f"unknown --int8-target {self.int8_target!r}: use {', '.join(TARGET_CLASSES)}")
        if self.calibration_images < 1:
            raise VaekitError(f"--calibration-images must be >= 1, got {self.calibration_images}")

    @property
    def quantize(self) -> bool:
        return self.int8 or self.precision == "int8"


class _Steps:
    """Times each named step and reports it as it finishes."""

    def __init__(self, result: ExportResult, on_step: StepFn | None) -> None:
        self.result, self.on_step = result, on_step

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        value = fn()
        self.result.steps[name] = time.perf_counter() - t0
        if self.on_step:
            self.on_step(name, self.result.steps[name])
        return value


def check_destination(out: Path, checkpoint: Path, overwrite: bool, data: str) -> None:
    """Refuse an output that overlaps the checkpoint's run or the images it reads, or an existing export
    without --overwrite."""
    check_output_dir(out, [checkpoint if checkpoint.is_dir() else checkpoint.parent, *data_dirs(data)])
    if is_artifact_dir(out) and not overwrite:
        raise refuse_to_replace(out, "an export")  # in the words `train` uses


def export_artifacts(
    checkpoint: Path, out: Path, options: ExportOptions | None = None, on_step: StepFn | None = None, **kw: Any
) -> ExportResult:
    """Export, prove and publish; keyword arguments are ExportOptions fields (max_batch=8, int8=True, ...)."""
    opts = options or ExportOptions(**kw)
    opts.check()
    if opts.trt:  # a GPU that cannot build this precision: refused before the export's work, not after it
        from vaekit.export.tensorrt.build import check_gpu_precision
        from vaekit.runtimes.backends.cuda import gpu_identity

        check_gpu_precision(opts.precision, gpu_identity(0))
    checkpoint, out = Path(checkpoint), Path(out)
    run = load_run(checkpoint)
    check_destination(out, checkpoint, opts.overwrite, opts.data or run.cfg.train.data)
    with run_lock(out):  # a second export into `out` is refused while this one runs
        check_destination(out, checkpoint, opts.overwrite, opts.data or run.cfg.train.data)  # now it holds
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
        try:
            result = _build(run, checkpoint, staging, opts, on_step)
            if result.passed:
                if result.dropped:  # kept for inspection beside the published export, like a rejected one
                    set_aside(staging, out, list(result.dropped))
                publish(staging, out)
                result.out_dir = out
            else:
                result.out_dir = reject(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return result


def _build(run: Run, checkpoint: Path, staging: Path, opts: ExportOptions, on_step: StepFn | None) -> ExportResult:
    result = ExportResult(out_dir=staging, report=ParityReport(reference={}, n_images=0, n_latents=0))
    step = _Steps(result, on_step)
    real = step("data", lambda: _images(run, opts))
    images_u8 = real.test[: opts.max_batch]
    z = fixed_latents(opts.max_batch, run.cfg.model.latent_dim)
    paths = step("onnx", lambda: export_onnx(run, staging, opts.max_batch))
    save_parity_inputs(staging, images_u8, z)
    images = to_float(images_u8, run.cfg.model.value_range)
    result.details["cpu_graphs"] = step("cpu", lambda: write_cpu_graphs(paths))
    result.details["web_graphs"] = step("web graphs", lambda: write_web_graphs(paths))
    _precision_graphs(step, result, run, real, paths, images, z, opts)
    if opts.trt:
        result.details["tensorrt"] = step("tensorrt", lambda: _engines(staging, list(paths), opts))
    _mobile(step, result, run, real, staging, images, z, opts)
    reference = pyt.from_model(run.model, run.cfg, run.sha256, str(checkpoint.resolve()))
    save_golden(staging, *reference, images, z)
    report = step("parity", lambda: run_parity(staging, reference, images, z))
    result.report, result.dropped = drop_failed_precisions(report, result.details)
    atomic_write_text(staging / PARITY_JSON, json.dumps(result.report.to_json(), indent=2) + "\n")
    save_parity_png(result.report, run.cfg.model.value_range, staging / PARITY_PNG)
    info = {
        "checkpoint": str(checkpoint.resolve()),  # bench finds the PyTorch peers from any directory
        "checkpoint_sha256": run.sha256,
        "latent_dim": run.cfg.model.latent_dim,
        "image_shape": list(run.cfg.model.image_shape),
        "value_range": list(run.cfg.model.value_range),
        "max_batch": opts.max_batch,
        "precision": opts.precision,
        "steps_seconds": result.steps,
        "details": result.details,
    }
    if result.dropped:
        info["dropped"] = result.dropped
    skip = {p.name for name in result.dropped for p in files_of(staging / name)}
    write_manifest(staging, info, {"passed": result.report.passed, "file": PARITY_JSON}, skip=skip)
    if not result.report.passed:
        result.diagnosis = step("layerwise", lambda: diagnose(staging, result.report, reference))
    return result


# What to try when a precision graph fails, by precision.
TRY = {
    "int8": "try --int8-target vnni where every device has VNNI/AMX or is ARM64, or more --calibration-images",
    "fp16": "use the bf16 or fp32 graph; fp16's range is what broke",
    "bf16": "use the fp16 or fp32 graph",
    "int8 .pte": "neither calibration held (typical latents, then stress ones too); the fp32 .pte stays",
}


def drop_failed_precisions(report: ParityReport, details: dict[str, Any]) -> tuple[ParityReport, dict[str, str]]:
    """Split off the optional precision graphs that failed, so the verified fp32 export is not lost with them.

    A graph fails when one of its parity cases breaks a tolerance or, for int8, when it does not hold on every
    CPU class its target names (judged by the quantizer). The fp32 graphs and runtime-side precisions stay as
    judged: when they fail, the whole export does. Returns the report of what is published and file -> why."""
    why: dict[str, str] = {}
    for _role, summary in details.get("int8", {}).items():
        if not summary.get("within_tolerance", True):
            classes = summary.get("cpu_classes", {}).get("classes", {})
            outside = [c for c, how in classes.items() if "OUTSIDE" in how]
            where = f" on {', '.join(outside)} CPUs" if outside else ""
            attempt = min(summary["attempts"], key=lambda a: len(a["broken"]))
            first = attempt["broken"][0] if attempt["broken"] else "see the int8 attempts in manifest.json"
            why[summary["file"]] = f"no int8 scheme met the int8 tolerance{where} ({first}); {TRY['int8']}"
    for case in report.cases:
        if case.broken and _precision_artifact(case):
            precision = case.runtime.rsplit("-", 1)[-1]
            hint = TRY[f"{precision} .pte" if case.path.endswith(PTE_SUFFIX) else precision]
            why.setdefault(case.path, f"{case.runtime} {case.output}: {case.broken[0]}; {hint}")
    if not why:
        return report, {}
    kept = [c for c in report.cases if c.path not in why]
    rest = ParityReport(report.reference, report.n_images, report.n_latents, kept, report.skipped, report.errors)
    rest.previews = {k: v for k, v in report.previews.items() if any(c.runtime == k for c in kept)}
    return (rest if kept else report), why


def _precision_artifact(case: Case) -> bool:
    """A graph stored in a lower precision, or an engine built in one: what a failed precision drops."""
    graphs = {onnx_name(role, p) for role in ROLES for p in PRECISIONS if p != "fp32"}
    graphs |= {pte_name(role, "int8") for role in ROLES} | {ncnn_name(role, "fp16") for role in ROLES}
    precision = case.runtime.rsplit("-", 1)[-1]
    return case.path in graphs or (precision != "fp32" and case.path.endswith(ENGINE_SUFFIXES))


def diagnose(staging: Path, report: ParityReport, reference: References) -> str:
    """Run the layerwise pass on the first graph that broke a tolerance and name its first diverging layer."""
    from vaekit.runtimes.proving.layerwise import compare_layers

    broken = next((c for c in report.cases if c.broken), None)
    if broken is None or not broken.path.endswith((ONNX_SUFFIX, NCNN_PARAM_SUFFIX)):  # what exposes its layers
        return ""
    path = staging / broken.path
    model = reference[0] if broken.output in ("mu", "log_var") else reference[1]
    try:
        return compare_layers(path, model).summary()
    except VaekitError as exc:
        return f"layerwise pass failed: {exc}"


def _images(run: Run, opts: ExportOptions) -> ImageData:
    """Real images for parity (test split) and int8 calibration (train split), at the model's size."""
    m = run.cfg.model
    spec = opts.data or run.cfg.train.data
    need = max(opts.max_batch, opts.calibration_images) if opts.quantize else opts.max_batch
    real = load_data(spec, m.image_size, m.in_channels, run.cfg.train.test_fraction, limit=need)
    if real.pad != m.pad:
        raise VaekitError(f"--data {spec} is padded by {real.pad}px but the model was trained with {m.pad}px")
    return real


def _precision_graphs(
    step: _Steps,
    result: ExportResult,
    run: Run,
    real: ImageData,
    paths: dict[str, Path],
    images: np.ndarray,
    z: np.ndarray,
    opts: ExportOptions,
) -> None:
    """fp16 graphs (profiled on the parity inputs), bf16 graphs and int8 graphs (calibrated on training images)."""
    if opts.precision in FLOAT_GRAPHS:
        convert = float_converter(opts.precision)
        result.details[opts.precision] = step(
            opts.precision,
            lambda: {
                role: convert(p, p.with_name(onnx_name(role, opts.precision)), images, z) for role, p in paths.items()
            },
        )
    if opts.quantize:
        from vaekit.export.precisions.int8 import quantize_int8

        # calibrate on training images; parity judges on test images the quantizer never saw
        calibration = to_float(real.train[: opts.calibration_images], run.cfg.model.value_range)
        result.details["int8"] = step(
            "int8",
            lambda: {
                role: quantize_int8(p, p.with_name(onnx_name(role, "int8")), calibration, z, opts.int8_target)
                for role, p in paths.items()
            },
        )


def _mobile(
    step: _Steps,
    result: ExportResult,
    run: Run,
    real: ImageData,
    staging: Path,
    images: np.ndarray,
    z: np.ndarray,
    opts: ExportOptions,
) -> None:
    """ExecuTorch programs (int8 ones calibrated like the int8 graphs) and ncnn nets; parity proves them after."""
    if opts.executorch:
        from vaekit.export.mobile.pte import export_pte

        calibration = to_float(real.train[: opts.calibration_images], run.cfg.model.value_range)
        result.details["executorch"] = step(
            "executorch", lambda: export_pte(run, staging, opts.max_batch, calibration if opts.quantize else None, z)
        )
    if opts.ncnn:
        from vaekit.export.mobile.ncnn_net import export_ncnn

        result.details["ncnn"] = step("ncnn", lambda: export_ncnn(run, staging, opts.max_batch, images, z))


def write_cpu_graphs(paths: dict[str, Path]) -> dict[str, list[str]]:
    """<role>.cpu.onnx: the fp32 graph with the exact CPU rewrites applied, so an application that loads it
    with plain ONNX Runtime gets the speed vaekit's own backend gets (role -> rewrites; none: not written)."""
    return _rewritten(paths, "cpu", rewrite_for_cpu, cpu_graph_name)


def write_web_graphs(paths: dict[str, Path]) -> dict[str, list[str]]:
    """<role>.web.onnx: the fp32 graph with the exact rewrites that speed up ONNX Runtime Web, which a web
    bundle ships; parity proves it like every graph (role -> rewrites; none: not written)."""
    return _rewritten(paths, "web", rewrite_for_wasm, web_graph_name)


def _rewritten(
    paths: dict[str, Path], kind: str, rewrite: Callable[[Any], list[str]], name: Callable[[str], str]
) -> dict[str, list[str]]:
    written = {}
    for role, path in paths.items():
        model = read_graph(path)
        rewrites = rewrite(model)
        if not rewrites:
            continue
        meta = graph_metadata(model)
        set_metadata(model, {**meta, "graph": kind, f"{kind}_rewrites": json.dumps(rewrites)})
        finalize(model, path.with_name(name(role)))
        written[role] = rewrites
    return written


def _engines(staging: Path, roles: list[str], opts: ExportOptions) -> dict[str, Any]:
    from vaekit.export.tensorrt.build import build_engine

    return {
        role: build_engine(staging / onnx_name(role, opts.precision), staging / plan_name(role), opts.max_batch)
        for role in roles
    }


def save_parity_inputs(out_dir: Path, images: np.ndarray, z: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, z=z)
    atomic_write_bytes(out_dir / PARITY_INPUTS, buf.getvalue())
