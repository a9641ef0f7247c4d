"""`vaekit export`: checkpoint -> ONNX graphs (+ fp16 / int8 graphs, + TensorRT engines) -> parity -> manifest.

Each step is timed and turns its failure into one clear message. Export is not done until parity
against the PyTorch model has passed (optimum's validate_model_outputs): on failure the artifacts
stay for inspection and the caller exits non-zero.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.checkpoint import load_config
from vaekit.config import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_BATCH
from vaekit.data import load_data, to_float
from vaekit.errors import VaekitError
from vaekit.export.manifest import write_manifest
from vaekit.export.onnx import export_onnx
from vaekit.fsutil import atomic_write_bytes, atomic_write_text
from vaekit.runtimes.parity import PARITY_INPUTS, PRECISION_SUFFIX, ParityReport, fixed_latents, run_parity

PARITY_JSON = "parity.json"
PARITY_PNG = "parity.png"

StepFn = Callable[[str, float], None]  # (step name, seconds) after each step


@dataclass
class ExportResult:
    out_dir: Path
    report: ParityReport
    steps: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def save_parity_inputs(out_dir: Path, images: np.ndarray, z: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, z=z)
    atomic_write_bytes(out_dir / PARITY_INPUTS, buf.getvalue())


def export_artifacts(
    checkpoint: Path,
    out_dir: Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    precision: str = "fp32",
    int8: bool = False,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    trt: bool = False,
    data: str | None = None,
    on_step: StepFn | None = None,
) -> ExportResult:
    if max_batch < 1:
        raise VaekitError(f"--max-batch must be >= 1, got {max_batch}")
    if precision not in PRECISION_SUFFIX:
        raise VaekitError(f"unknown --precision {precision!r}: use {', '.join(PRECISION_SUFFIX)}")
    if calibration_images < 1:
        raise VaekitError(f"--calibration-images must be >= 1, got {calibration_images}")
    cfg = load_config(checkpoint)
    result = ExportResult(out_dir=out_dir, report=ParityReport(reference={}, n_images=0, n_latents=0))

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        result.steps[name] = time.perf_counter() - t0
        if on_step:
            on_step(name, result.steps[name])
        return value

    spec = data or cfg.train.data
    m = cfg.model
    quantize = int8 or precision == "int8"
    need = max(max_batch, calibration_images) if quantize else max_batch
    real = step("data", lambda: load_data(spec, m.image_size, m.in_channels, cfg.train.test_fraction, limit=need))
    if real.pad != m.pad:
        raise VaekitError(f"--data {spec} is padded by {real.pad}px but the model was trained with {m.pad}px")
    images_u8 = real.test[:max_batch]
    z = fixed_latents(max_batch, m.latent_dim)
    paths = step("onnx", lambda: export_onnx(checkpoint, out_dir, max_batch))
    save_parity_inputs(out_dir, images_u8, z)
    images = to_float(images_u8, m.value_range)

    if precision == "fp16":
        from vaekit.export.fp16 import convert_fp16

        result.details["fp16"] = step(
            "fp16",
            lambda: {
                role: convert_fp16(path, out_dir / f"{role}.fp16.onnx", images, z) for role, path in paths.items()
            },
        )
    if quantize:
        from vaekit.export.quantize import quantize_int8

        # calibrate on training images; parity judges on test images the quantizer never saw
        calibration = to_float(real.train[:calibration_images], m.value_range)
        result.details["int8"] = step(
            "int8",
            lambda: {
                role: quantize_int8(path, out_dir / f"{role}.int8.onnx", calibration, z) for role, path in paths.items()
            },
        )
    if trt:
        from vaekit.export.tensorrt import build_engine

        suffix = PRECISION_SUFFIX[precision]
        result.details["tensorrt"] = step(
            "tensorrt",
            lambda: {
                role: build_engine(out_dir / f"{role}{suffix}.onnx", out_dir / f"{role}.plan", max_batch)
                for role in paths
            },
        )

    report = step("parity", lambda: run_parity(out_dir, checkpoint, images, z))
    result.report = report
    atomic_write_text(out_dir / PARITY_JSON, json.dumps(report.to_json(), indent=2) + "\n")
    info = {
        "checkpoint": str(Path(checkpoint).resolve()),  # bench finds the PyTorch peers from any directory
        "latent_dim": m.latent_dim,
        "image_shape": list(m.image_shape),
        "value_range": list(m.value_range),
        "max_batch": max_batch,
        "precision": precision,
        "steps_seconds": result.steps,
        "details": result.details,
    }
    write_manifest(out_dir, info, {"passed": report.passed, "file": PARITY_JSON})
    return result
