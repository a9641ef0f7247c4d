"""TensorRT backend: a plain `.plan` engine plus its sidecar `<name>.plan.json`, run with execute_async_v3.

The sidecar (written by `vaekit.export.tensorrt.build.build_engine`, read by `artifacts.read_sidecar`) carries
what the engine itself cannot: vaekit metadata, the TensorRT version and GPU it was built for, the
batch profile, and the plan's size and sha256. It is checked before deserializing, so a plan from
another TensorRT or GPU, or a truncated one, fails with one line saying how to rebuild. Without a
sidecar the engine's own tensor names and shapes are enough to run it. Device buffers come from
`runtimes.cuda`; tensorrt is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import INPUT_NAME, OUTPUT_NAMES, ROLES, WITH_ARTICLE, Role, read_sidecar, sidecar_path
from vaekit.runtimes.backends.cuda import cuda_status, device_buffers, gpu_identity
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

LABEL = "tensorrt"
TRT_MISSING = "tensorrt not installed (pip install 'vaekit[trt]' on a machine with an NVIDIA GPU)"
# The inspector's context property: `execution_context` in TensorRT 11, `context` in 10.x.
INSPECTOR_CONTEXT = ("execution_context", "context")
# Narrowest first: a layer counts as the narrowest type among the tensors it reads and writes.
PRECISION_WORDS = (
    ("int8", ("int8",)),
    ("fp8", ("fp8",)),
    ("bf16", ("bf16", "bfloat16")),
    ("fp16", ("fp16", "half")),
    ("fp32", ("fp32", "float")),
)
BOOKKEEPING_LAYERS = ("reformat", "noop", "shuffle", "constant", "identity", "cast")


def _rebuild_hint(plan: Path, sidecar: dict[str, Any] | None) -> str:
    source = plan.parent / (sidecar or {}).get("source_onnx", plan.stem + ".onnx")
    return f"rebuild on this device with `vaekit build-engine {source}`"


def check_compatible(plan: Path, sidecar: dict[str, Any], tensorrt_version: str, gpu: dict[str, str]) -> None:
    """Refuse, before deserializing, a plan built by another TensorRT version or for another GPU."""
    built, here = sidecar.get("gpu", {}), gpu
    same_trt = sidecar.get("tensorrt_version") == tensorrt_version
    same_gpu = (built.get("name"), built.get("compute_capability")) == (here["name"], here["compute_capability"])
    if same_trt and same_gpu:
        return
    raise VaekitError(
        f"{plan.name} was built with TensorRT {sidecar.get('tensorrt_version', '?')} for "
        f"{built.get('name', '?')} (compute {built.get('compute_capability', '?')}); this machine has TensorRT "
        f"{tensorrt_version} and {here['name']} (compute {here['compute_capability']}): {_rebuild_hint(plan, sidecar)}"
    )


def import_trt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise VaekitError(TRT_MISSING) from None
    except Exception as exc:  # a wheel without its CUDA libraries fails with OSError and others
        raise VaekitError(f"tensorrt cannot load here: {str(exc).splitlines()[0]}") from None
    return tensorrt


def _device_index(device: str) -> int:
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "tensorrt") or not (index.isdigit() or index == ""):
        raise VaekitError(f"a TensorRT engine runs on cuda (or cuda:N), not {device!r}")
    return int(index or 0)


def layer_precisions(engine_info: dict[str, Any]) -> dict[str, int]:
    """Count compute layers by precision in the engine inspector's JSON (10.x and 11.x schemas).

    10.x gives each layer tensor a "Format/Datatype" string ("Row major linear FP16 format"); 11.x splits
    it into "DataType" ("Half") and "Format". Reformat/shuffle layers only move data and are not counted.
    """
    counts: dict[str, int] = {}
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict):
            counts["unknown"] = counts.get("unknown", 0) + 1  # LAYER_NAMES_ONLY: names, no types
            continue
        if str(layer.get("LayerType", "")).lower() in BOOKKEEPING_LAYERS:
            continue
        words = " ".join(
            str(value).lower()
            for entry in (*layer.get("Inputs", []), *layer.get("Outputs", []))
            if isinstance(entry, dict)
            for key, value in entry.items()
            if "type" in key.lower() or "format" in key.lower()
        )
        found = next((p for p, keys in PRECISION_WORDS if any(k in words for k in keys)), "unknown")
        counts[found] = counts.get(found, 0) + 1
    return counts


def inspect_engine(trt: Any, engine: Any, input_name: str, shape: tuple[int, ...]) -> str:
    """The engine inspector's JSON with an execution context at `shape`, so layer formats are resolved
    (without one, dynamic-shape engines report "N/A due to dynamic shapes")."""
    context = engine.create_execution_context()
    context.set_input_shape(input_name, shape)
    inspector = engine.create_engine_inspector()
    attribute = next((a for a in INSPECTOR_CONTEXT if hasattr(inspector, a)), None)
    if attribute is not None:
        setattr(inspector, attribute, context)
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _info_from_sidecar(plan: Path, sidecar: dict[str, Any]) -> ArtifactInfo:
    meta = dict(sidecar["graph_metadata"])
    try:
        meta["max_batch"] = str(int(sidecar["profile"]["max"][0]))
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        raise VaekitError(f"{sidecar_path(plan)} has no batch profile: {_rebuild_hint(plan, sidecar)}") from None
    meta["precision"] = sidecar.get("precision", meta.get("precision", "fp32"))
    meta["tensorrt_version"] = sidecar.get("tensorrt_version", "")
    return metadata_to_info(meta, backend=LABEL, device="cuda", path=str(plan))


def _info_from_engine(trt: Any, engine: Any, plan: Path) -> ArtifactInfo:
    """What a plan without a sidecar reports: tensor names, shapes, the profile, the layer types."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    role = next((r for r in ROLES if (INPUT_NAME[r],) == inputs), None)
    if role is None:
        raise VaekitError(f"{plan.name} is not a vaekit engine: inputs {list(inputs)}, expected ['image'] or ['z']")
    shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
    image = shapes["image"][1:]
    latent = shapes["z" if role == "decoder" else "mu"][1]
    max_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(inputs[0], 0)[2])
    text = inspect_engine(trt, engine, inputs[0], max_shape)
    try:
        layers = layer_precisions(json.loads(text))
    except json.JSONDecodeError:
        layers = {}
    precision = next((p for p in ("int8", "fp16", "bf16") if layers.get(p)), "fp32")
    # Without vaekit metadata the output activation tells the value range: tanh -> [-1, 1], sigmoid -> [0, 1].
    value_range = (-1.0, 1.0) if "tanh" in text.lower() else (0.0, 1.0)
    return ArtifactInfo(
        role=role,
        latent_dim=latent,
        image_shape=(image[0], image[1], image[2]),
        value_range=value_range,
        likelihood="",
        precision=precision,
        backend=LABEL,
        device="cuda",
        max_batch=max_shape[0],
        path=str(plan),
        extra={"metadata": "none beside the plan: names and shapes read from the engine"},
    )


def _read_plan(plan: Path, sidecar: dict[str, Any] | None) -> bytes:
    if not plan.is_file():
        raise VaekitError(f"{plan} not found")
    data = plan.read_bytes()
    if sidecar is not None:
        expected = sidecar.get("plan_bytes")
        if len(data) != expected:
            raise VaekitError(
                f"{plan.name} is {len(data)} bytes but {sidecar_path(plan).name} says {expected}: "
                f"truncated or replaced; {_rebuild_hint(plan, sidecar)}"
            )
        if hashlib.sha256(data).hexdigest() != sidecar.get("plan_sha256"):
            raise VaekitError(
                f"{plan.name} does not match the sha256 in {sidecar_path(plan).name} (replaced by another build?): "
                f"{_rebuild_hint(plan, sidecar)}, or delete the stale sidecar"
            )
    if not data:
        raise VaekitError(f"{plan} is empty: {_rebuild_hint(plan, sidecar)}")
    return data


def load_info(path: Path) -> ArtifactInfo:
    """ArtifactInfo from the sidecar alone (no tensorrt, no GPU); without one, from the engine (needs both)."""
    sidecar = read_sidecar(path)
    if sidecar is not None:
        return _info_from_sidecar(path, sidecar)
    return _Engine(path, None, "cuda").info


class _Engine:
    """A deserialized engine with one execution context and device buffers sized for the profile's max."""

    def __init__(self, plan: Path, role: str | None, device: str) -> None:
        index = _device_index(device)
        sidecar = read_sidecar(plan)
        data = _read_plan(plan, sidecar)
        trt = import_trt()
        missing = cuda_status()
        if missing:
            raise VaekitError(f"{plan.name}: {missing}")
        if sidecar is not None:
            check_compatible(plan, sidecar, trt.__version__, gpu_identity(index))
        self.buffers = device_buffers(index)
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise VaekitError(
                f"TensorRT cannot deserialize {plan.name} (truncated, corrupt, or from another TensorRT version "
                f"or GPU): {_rebuild_hint(plan, sidecar)}"
            )
        self.info = _info_from_sidecar(plan, sidecar) if sidecar else _info_from_engine(trt, self.engine, plan)
        if role is not None and self.info.role != role:
            raise VaekitError(f"{plan.name} is {WITH_ARTICLE[self.info.role]} engine, not {WITH_ARTICLE[role]}")
        self.inputs, self.outputs = (INPUT_NAME[self.info.role],), OUTPUT_NAMES[self.info.role]
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted((*self.inputs, *self.outputs)):
            raise VaekitError(f"{plan.name} has tensors {names}, expected {[*self.inputs, *self.outputs]}")
        wrong = [n for n in names if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT]
        if wrong:
            raise VaekitError(f"{plan.name}: tensors {wrong} are not float32; vaekit engines keep float32 I/O")
        self.context = self.engine.create_execution_context()
        self.device_buffers: dict[str, Any] = {}
        for name in names:
            dims = [int(d) for d in self.engine.get_tensor_shape(name)][1:]
            buffer, pointer = self.buffers.alloc(self.info.max_batch * math.prod(dims))
            self.device_buffers[name] = buffer
            self.context.set_tensor_address(name, pointer)

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        name = self.inputs[0]
        if not self.context.set_input_shape(name, tuple(array.shape)):
            raise VaekitError(f"TensorRT rejected input shape {tuple(array.shape)} for {name}")
        self.buffers.upload(self.device_buffers[name], array)
        if not self.context.execute_async_v3(self.buffers.handle):
            raise VaekitError("TensorRT execution failed (execute_async_v3 returned False)")
        return [
            self.buffers.download(self.device_buffers[out], tuple(int(d) for d in self.context.get_tensor_shape(out)))
            for out in self.outputs
        ]


class TrtEncoder(Encoder):
    def __init__(self, path: Path, device: str = "cuda") -> None:
        self.runner = _Engine(Path(path), "encoder", device)
        self.info = self.runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu, log_var


class TrtDecoder(Decoder):
    def __init__(self, path: Path, device: str = "cuda") -> None:
        self.runner = _Engine(Path(path), "decoder", device)
        self.info = self.runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0]


def status(device: str) -> str:
    """'' when TensorRT engines can run here, else why not."""
    try:
        import_trt()
    except VaekitError as exc:
        return str(exc)
    return cuda_status()


def load(path: Path, role: Role, device: str) -> Encoder | Decoder:
    return TrtEncoder(path, device) if role == "encoder" else TrtDecoder(path, device)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    """The graph's own metadata (role: only a checkpoint holds both halves; a graph describes its own)."""
    return load_info(path)
