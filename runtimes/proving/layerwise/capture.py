"""Intermediate tensors of a runtime, by ONNX tensor name: the candidate side of layerwise parity.

Each runtime exposes a tensor by making it an output: ONNX Runtime by adding it to the graph's outputs
(the same graph, rewrites and session options its backend uses), TensorRT by marking it a network
output before the engine is built (a built .plan cannot expose anything, so the engine is rebuilt from
the ONNX graph it came from). Only the layer boundaries are marked, so memory stays bounded and the
fusions inside a layer (Conv+BatchNorm+activation, Q/DQ into QLinearConv) mostly stay; a fusion across a
marked tensor is undone, which is why graph outputs are always compared as the runtime computes them.

Another backend joins by defining, in its own module, `capture_tensors(path, device, names, x) -> dict`
(OpenVINO: `model.add_outputs(names)` before `compile_model`); a backend without one is compared on its
outputs only, and the report says why.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import ENGINE_SUFFIXES, read_sidecar
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu
from vaekit.runtimes.registry import Backend

if TYPE_CHECKING:
    import onnx

Tensors = dict[str, np.ndarray]
CaptureFn = Callable[[Path, str, list[str], np.ndarray], Tensors]
HOOK = "capture_tensors"  # the function a backend module defines to take part


def graph_source(path: Path) -> Path:
    """The ONNX graph whose tensors a runtime computes: the file itself, or the one a TensorRT plan was built from."""
    if path.suffix.lower() not in ENGINE_SUFFIXES:
        return path
    sidecar = read_sidecar(path) or {}
    source = path.parent / str(sidecar.get("source_onnx", path.stem + ".onnx"))
    if not source.is_file():
        raise VaekitError(f"layerwise on {path.name} needs the ONNX graph it was built from ({source.name} not found)")
    return source


def runnable_model(path: Path, device: str = "cpu", rewrite: bool = True) -> tuple[Any, list[str]]:
    """The graph as the onnxrt backend runs it on `device`: on CPU with its exact rewrites applied in memory."""
    import onnx

    from vaekit.runtimes.backends.onnxrt import read_graph

    model = read_graph(path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))  # read_graph checked where they point
    done = rewrite_for_cpu(model) if device == "cpu" and rewrite else []
    return model, done


def run_marked(model: onnx.ModelProto, names: list[str], x: np.ndarray, session: Callable[[bytes], Any]) -> Tensors:
    """Run `model` with the tensors `names` (those it has) added to its outputs; graph outputs come back too."""
    import onnx

    present = {t for n in model.graph.node for t in n.output}
    listed = [o.name for o in model.graph.output]
    extra = [n for n in dict.fromkeys(names) if n in present and n not in listed]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)  # ONNX Runtime infers their types
    sess = session(probe.SerializeToString())
    wanted = listed + extra
    try:
        values = sess.run(wanted, {model.graph.input[0].name: x})
    except Exception as exc:  # ORT raises its own types; all mean this graph cannot run this input
        raise VaekitError(f"ONNX Runtime failed to run the graph with its layer tensors marked: {exc}") from None
    return dict(zip(wanted, values, strict=True))


def ort_session(path: Path, device: str, threads: int | None) -> Callable[[bytes], Any]:
    """Sessions as the onnxrt backend builds them: its options, its provider (and TensorRT EP profile)."""
    from vaekit.runtimes.backends import onnxrt

    reason = onnxrt.status(device)
    if reason:
        raise VaekitError(f"ONNX Runtime here has {reason}")
    providers: list[Any] = [onnxrt.PROVIDERS[device]]
    if device == onnxrt.TENSORRT_EP:
        options = onnxrt.tensorrt_options(path, onnxrt.load_info(path, device))
        providers = [(onnxrt.PROVIDERS[device], options), onnxrt.PROVIDERS["cuda"]]

    def build(model: bytes) -> Any:
        ort = onnxrt.import_ort()
        try:
            return ort.InferenceSession(model, sess_options=onnxrt.session_options(threads), providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean "cannot load"
            raise VaekitError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}") from None

    return build


def capture_ort(
    path: Path, device: str, names: list[str], x: np.ndarray, threads: int | None = None, rewrite: bool = True
) -> Tensors:
    """ONNX Runtime's values of `names` (those that survive its CPU rewrites) and of the graph outputs."""
    model, _ = runnable_model(path, device, rewrite)
    return run_marked(model, names, x, ort_session(path, device, threads))


def capture_tensorrt(path: Path, device: str, names: list[str], x: np.ndarray) -> Tensors:
    """TensorRT's values of `names`: the engine rebuilt from its ONNX graph with those tensors marked as outputs.

    Built as export builds it (strongly typed, TF32 off) for exactly x's shape. A marked tensor that is not
    float32 (fp16 inside a strongly typed network) is cast to float32 first, so every buffer is float32.
    """
    from vaekit.runtimes.backends.cuda import cuda_status, device_buffers
    from vaekit.runtimes.backends.trt import import_trt

    trt = import_trt()
    missing = cuda_status()
    if missing:
        raise VaekitError(missing)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    source = graph_source(path)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise VaekitError(f"TensorRT cannot parse {source.name}: {errors}")
    wanted, marked = set(names), {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor.name not in wanted or tensor.is_network_output:
                continue
            name = tensor.name
            if tensor.dtype != trt.DataType.FLOAT:
                tensor = network.add_cast(tensor, trt.DataType.FLOAT).get_output(0)
                tensor.name = f"{name}:float32"
            network.mark_output(tensor)
            marked[tensor.name] = name
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    profile.set_shape(input_name, x.shape, x.shape, x.shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VaekitError(f"TensorRT could not build {source.name} with its layer tensors marked")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    context.set_input_shape(input_name, tuple(x.shape))
    buffers = device_buffers(int(device.partition(":")[2] or 0))
    io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    shapes = {n: tuple(int(d) for d in context.get_tensor_shape(n)) for n in io}
    held = {}
    for n in io:
        held[n], pointer = buffers.alloc(max(1, int(np.prod(shapes[n]))))
        context.set_tensor_address(n, pointer)
    buffers.upload(held[input_name], np.ascontiguousarray(x, dtype=np.float32))
    if not context.execute_async_v3(buffers.handle):
        raise VaekitError("TensorRT execution failed (execute_async_v3 returned False)")
    return {marked.get(n, n): buffers.download(held[n], shapes[n]) for n in io if n != input_name}


BUILTIN: dict[str, Callable[..., Tensors]] = {"onnxrt": capture_ort, "trt": capture_tensorrt}


def capture_for(backend: Backend) -> tuple[Callable[..., Tensors] | None, str]:
    """The capture function of a backend, or None with the reason it cannot mark intermediate tensors."""
    if backend.name in BUILTIN:
        return BUILTIN[backend.name], ""
    hook = getattr(importlib.import_module(backend.import_path), HOOK, None)
    if callable(hook):
        return hook, ""
    return None, f"{backend.label} cannot mark intermediate tensors here ({backend.import_path} has no {HOOK})"
