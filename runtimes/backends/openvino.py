"""OpenVINO backend: vaekit's ONNX graphs (fp32, fp16, the CPU graph, Q/DQ int8) compiled for an OpenVINO
device (cpu, and gpu / npu where OpenVINO sees one).

Precision is the graph's own unless `precision` asks for a runtime-side one on an fp32 graph: bf16 or fp16
become OpenVINO's inference precision hint, stated in ArtifactInfo.precision. OpenVINO's CPU plugin
computes in bf16 by default on CPUs with bf16 units (AMX, AVX512-BF16), so fp32 is asked for explicitly:
a vaekit artifact computes what it says. `cache_dir` keeps compiled blobs for a fast second start.
`calibration` quantizes an fp32 graph in memory with NNCF post-training quantization: the OpenVINO user's
own int8 route, which bench measures beside vaekit's int8 graphs.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import INPUT_NAME, OUTPUT_NAMES, WITH_ARTICLE, Role
from vaekit.runtimes.backends.onnxrt import describe as describe_onnx
from vaekit.runtimes.backends.onnxrt import load_info
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

LABEL = "openvino"
DEVICE_NAMES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
# runtime precision -> (OpenVINO's inference precision hint, the capability the device must report)
HINTS = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}
RUNTIME_PRECISIONS = ("bf16", "fp16")  # what an fp32 graph can be asked to compute in here
INSTALL = "pip install 'vaekit[openvino]'"


def import_ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise VaekitError(f"OpenVINO is not installed: {INSTALL}") from None
    return openvino


@functools.cache
def _core() -> Any:
    """One OpenVINO Core per process: creating one enumerates the devices, which status() asks often."""
    return import_ov().Core()


def status(device: str) -> str:
    """'' when OpenVINO can run on `device` here, else why not."""
    try:
        core = _core()
    except VaekitError:
        return f"openvino not installed ({INSTALL})"
    name = DEVICE_NAMES[device]
    if name not in core.available_devices:
        return f"OpenVINO sees no {name} device here (it has {', '.join(core.available_devices) or 'none'})"
    return ""


def precision_status(device: str, precision: str) -> str:
    """'' when `device` computes in `precision` natively, else why not (OpenVINO would emulate or refuse)."""
    missing = status(device)
    if missing:
        return missing
    capabilities = _core().get_property(DEVICE_NAMES[device], "OPTIMIZATION_CAPABILITIES")
    wanted = HINTS[precision][1]
    if wanted not in capabilities:
        return f"the {DEVICE_NAMES[device]} device has no {precision} units (it reports {', '.join(capabilities)})"
    return ""


def _precision(info: ArtifactInfo, asked: str | None, device: str) -> str:
    """The precision this load computes in: the graph's own, or a runtime hint on an fp32 graph."""
    if asked is None or asked == info.precision:
        return info.precision
    if info.precision != "fp32" or asked not in RUNTIME_PRECISIONS:
        raise VaekitError(
            f"{Path(info.path).name} is an {info.precision} graph: OpenVINO can run an fp32 graph in "
            f"{' or '.join(RUNTIME_PRECISIONS)}, other precisions come from the graph"
        )
    missing = precision_status(device, asked)
    if missing:
        raise VaekitError(f"OpenVINO {asked} on {device}: {missing}")
    return asked


def _config(precision: str, device: str, threads: int | None, cache_dir: Path | None) -> dict[str, Any]:
    # int8 graphs: the quantized layers run int8 whatever the hint; the rest stays fp32 as in the graph.
    # A bf16/fp16 graph on a device without those units: f32 arithmetic on the graph's rounded values.
    native = precision in HINTS and not (precision != "fp32" and precision_status(device, precision))
    hint = HINTS[precision if native else "fp32"][0]
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _quantize(model: Any, role: Role, calibration: np.ndarray) -> Any:
    try:
        import nncf
    except ImportError:
        raise VaekitError("NNCF post-training quantization needs nncf: pip install nncf") from None
    name = INPUT_NAME[role]
    dataset = nncf.Dataset([{name: calibration[i : i + 1]} for i in range(len(calibration))])
    return nncf.quantize(model, dataset, subset_size=len(calibration))


class OvRunner:
    """One compiled model and one infer request; loading (precision, threads, cache) is done here, once."""

    def __init__(
        self,
        path: Path,
        role: Role,
        device: str,
        threads: int | None,
        precision: str | None,
        cache_dir: Path | None,
        calibration: np.ndarray | None,
    ) -> None:
        info = load_info(path, device)
        if info.role != role:
            raise VaekitError(f"{path} is {WITH_ARTICLE[info.role]} graph, not {WITH_ARTICLE[role]}")
        computes = _precision(info, precision, device)
        core = _core()
        try:
            model = core.read_model(str(path))
            if calibration is not None:
                model, computes = _quantize(model, role, calibration), "int8"
            self.compiled = core.compile_model(
                model, DEVICE_NAMES[device], _config(computes, device, threads, cache_dir)
            )
        except VaekitError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own: the graph cannot load
            raise VaekitError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        extra = {**info.extra, "inference_precision": getattr(hint, "get_type_name", lambda: str(hint))()}
        self.info = dataclasses.replace(info, backend=LABEL, precision=computes, extra=extra)
        self.outputs = [self.compiled.output(name) for name in OUTPUT_NAMES[role]]

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        try:
            results = self.request.infer({INPUT_NAME[self.info.role]: array})
        except Exception as exc:  # OpenVINO's own error types: this input cannot run
            raise VaekitError(f"OpenVINO failed to run {self.info.path}: {str(exc).strip().splitlines()[0]}") from None
        return [np.asarray(results[out]) for out in self.outputs]


class OvEncoder(Encoder):
    def __init__(self, runner: OvRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu, log_var


class OvDecoder(Decoder):
    def __init__(self, runner: OvRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0]


def load(
    path: Path,
    role: Role,
    device: str,
    threads: int | None = None,
    precision: str | None = None,
    cache_dir: Path | None = None,
    calibration: np.ndarray | None = None,
) -> Encoder | Decoder:
    """threads: inference threads (default: OpenVINO's choice); precision: bf16/fp16 on an fp32 graph."""
    runner = OvRunner(path, role, device, threads, precision, cache_dir, calibration)
    return OvEncoder(runner) if role == "encoder" else OvDecoder(runner)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    """The graph's own metadata (role: only a checkpoint holds both halves; a graph describes its own)."""
    return dataclasses.replace(describe_onnx(path), backend=LABEL)


def capture_tensors(
    path: Path, device: str, names: list[str], x: np.ndarray, threads: int | None = None, precision: str | None = None
) -> dict[str, np.ndarray]:
    """OpenVINO's values of the tensors `names` (those its graph still has after reading the ONNX file) and of
    the graph outputs, for layerwise parity: the tensors become extra model outputs before compiling, which
    can keep OpenVINO from fusing across them (its graph outputs are compared as computed either way)."""
    info = load_info(path, device)
    computes = _precision(info, precision, device)
    core = _core()
    model = core.read_model(str(path))
    known = {name for op in model.get_ops() for out in op.outputs() for name in out.get_names()}
    wanted = [n for n in dict.fromkeys(names) if n in known]
    if wanted:
        model.add_outputs(wanted)
    compiled = core.compile_model(model, DEVICE_NAMES[device], _config(computes, device, threads, None))
    results = compiled.create_infer_request().infer({INPUT_NAME[info.role]: x})
    found: dict[str, np.ndarray] = {}
    for out in compiled.outputs:
        value = _as_float32(np.asarray(results[out]), out.get_element_type().get_type_name())
        for name in out.get_names():
            found[name] = value
    return found


def _as_float32(value: np.ndarray, element_type: str) -> np.ndarray:
    """OpenVINO hands bf16 tensors to numpy as float16-typed bit patterns: widen the bits, not the values."""
    if element_type == "bf16":
        return (value.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return value.astype(np.float32, copy=False)
