"""TensorRT backend: a plain `.plan` engine plus its sidecar `<name>.plan.json`, run with execute_async_v3.

The sidecar (written by `vaekit.export.tensorrt.build_engine`) carries what the engine itself cannot:
vaekit metadata, the TensorRT version and GPU it was built for, the batch profile, and the plan's size
and sha256. It is checked before deserializing, so a plan from another TensorRT or GPU, or a truncated
one, fails with one line saying how to rebuild. Without a sidecar the engine's own tensor names and
shapes are enough to run it. Device buffers are torch CUDA tensors when torch with CUDA is importable,
else cuda-python allocations; both are imported lazily, like tensorrt itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

SIDECAR_FORMAT = 1
TRT_MISSING = "tensorrt not installed (pip install 'vaekit[trt]' on a machine with an NVIDIA GPU)"
IO_NAMES = {"encoder": (("image",), ("mu", "log_var")), "decoder": (("z",), ("image",))}
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


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def read_sidecar(plan: Path) -> dict[str, Any] | None:
    path = sidecar_path(plan)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VaekitError(f"{path} is not a vaekit engine sidecar: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or "graph_metadata" not in data:
        raise VaekitError(f"{path} is not a vaekit engine sidecar (format {SIDECAR_FORMAT} expected)")
    return data


def make_sidecar(
    graph_meta: dict[str, str],
    *,
    plan: bytes,
    precision: str,
    tensorrt_version: str,
    gpu: dict[str, str],
    profile: dict[str, Any],
    source_onnx: str,
    source_sha256: str,
    layers: dict[str, int],
    build_seconds: float,
) -> dict[str, Any]:
    """The JSON written beside a plan: everything `load_info` and the compatibility check need."""
    from vaekit import __version__

    return {
        "format": SIDECAR_FORMAT,
        "producer": "vaekit",
        "vaekit_version": __version__,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu,
        "precision": precision,
        "profile": profile,
        "source_onnx": source_onnx,
        "source_onnx_sha256": source_sha256,
        "plan_bytes": len(plan),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "layers": layers,
        "build_seconds": round(build_seconds, 2),
        "graph_metadata": graph_meta,
    }


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


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ok(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, unwrap the value."""
    err, *values = result
    if int(err) != 0:
        raise VaekitError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


@functools.cache
def _cuda_backend() -> tuple[str, str]:
    """('torch' | 'cuda-python', '') when a CUDA GPU is usable, else ('', why not)."""
    reasons = []
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", ""
        reasons.append(f"torch {torch.__version__} sees no CUDA GPU")
    except ImportError:
        reasons.append("no torch")
    try:
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            return "cuda-python", ""
        reasons.append(f"cuda-python sees no CUDA GPU ({err})")
    except ImportError:
        reasons.append("no cuda-python")
    return "", f"no usable CUDA GPU ({', '.join(reasons)}): TensorRT engines need an NVIDIA GPU and its driver"


def cuda_status() -> str:
    """'' when a CUDA GPU is usable for TensorRT buffers here, else the reason."""
    return _cuda_backend()[1]


def gpu_identity(index: int = 0) -> dict[str, str]:
    """Name and compute capability of CUDA device `index`: what a plan is tied to."""
    backend, reason = _cuda_backend()
    if backend == "torch":
        import torch

        major, minor = torch.cuda.get_device_capability(index)
        return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
    if backend == "cuda-python":
        props = _ok(_cudart().cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
    raise VaekitError(reason)


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
    except (KeyError, IndexError, TypeError, ValueError):
        raise VaekitError(f"{sidecar_path(plan)} has no batch profile: {_rebuild_hint(plan, sidecar)}") from None
    meta["precision"] = sidecar.get("precision", meta.get("precision", "fp32"))
    meta["tensorrt_version"] = sidecar.get("tensorrt_version", "")
    return metadata_to_info(meta, backend="tensorrt", device="cuda", path=str(plan))


def _info_from_engine(trt: Any, engine: Any, plan: Path) -> ArtifactInfo:
    """What a plan without a sidecar reports: tensor names, shapes, the profile, the layer types."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    role = next((r for r, (ins, _) in IO_NAMES.items() if ins == inputs), None)
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
    precision = next((p for p in ("int8", "fp16") if layers.get(p)), "fp32")
    # Without vaekit metadata the output activation tells the value range: tanh -> [-1, 1], sigmoid -> [0, 1].
    value_range = (-1.0, 1.0) if "tanh" in text.lower() else (0.0, 1.0)
    return ArtifactInfo(
        role=role,
        latent_dim=latent,
        image_shape=(image[0], image[1], image[2]),
        value_range=value_range,
        likelihood="",
        precision=precision,
        backend="tensorrt",
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


class _TorchBuffers:
    """Flat float32 CUDA tensors and one side stream, from torch."""

    def __init__(self, index: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        self.handle = int(self.stream.cuda_stream)

    def alloc(self, count: int) -> tuple[Any, int]:
        tensor = self.torch.empty(count, dtype=self.torch.float32, device=self.device)
        return tensor, int(tensor.data_ptr())

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buffer[: array.size].copy_(self.torch.from_numpy(array.reshape(-1)))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        self.stream.synchronize()
        return buffer[: math.prod(shape)].view(shape).cpu().numpy()


class _CudaPythonBuffers:
    """The same with cuda-python: cudaMalloc'd buffers freed when the engine goes away."""

    def __init__(self, index: int) -> None:
        self.cudart = _cudart()
        _ok(self.cudart.cudaSetDevice(index))
        self.stream = _ok(self.cudart.cudaStreamCreate())
        self.handle = int(self.stream)
        self.pointers: list[Any] = []
        weakref.finalize(self, _free, self.cudart, self.pointers, self.stream)

    def alloc(self, count: int) -> tuple[Any, int]:
        pointer = _ok(self.cudart.cudaMalloc(count * 4))
        self.pointers.append(pointer)
        return pointer, int(pointer)

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _ok(self.cudart.cudaMemcpyAsync(buffer, array.ctypes.data, array.nbytes, kind, self.stream))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, dtype=np.float32)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ok(self.cudart.cudaMemcpyAsync(out.ctypes.data, buffer, out.nbytes, kind, self.stream))
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return out


def _free(cudart: Any, pointers: list[Any], stream: Any) -> None:
    for pointer in pointers:
        cudart.cudaFree(pointer)
    cudart.cudaStreamDestroy(stream)


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
        backend = _cuda_backend()[0]
        self.buffers = _TorchBuffers(index) if backend == "torch" else _CudaPythonBuffers(index)
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
            raise VaekitError(f"{plan.name} is an {self.info.role} engine, not a {role}")
        self.inputs, self.outputs = IO_NAMES[self.info.role]
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
