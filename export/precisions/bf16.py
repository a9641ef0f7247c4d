"""bf16 graphs: float32 inputs and outputs, bfloat16 everywhere inside, for runtimes that read precision from
the graph (TensorRT 10.x/11.x strongly typed networks; OpenVINO runs them too).

bfloat16 keeps float32's exponent, so unlike fp16 nothing can overflow and no node needs to stay float32:
every float weight is rounded to bfloat16 (to nearest, ties to even), the input is cast in and the outputs
cast out. ONNX allows bfloat16 Conv and ConvTranspose only from opset 22, so the graph is first converted
to opset 22 (ONNX's version converter; our ops did not change meaning between 18 and 22). TensorRT 10.x's
parser lists BF16 for every op these graphs use and reads any opset from 9 up; TensorRT 11.x reads up to 25.
The result must meet the bf16 parity tolerance in bfloat16 arithmetic (the ONNX reference evaluator computes
in the graph's own types). Needs onnx, onnxruntime and numpy only, like the fp16 pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator

from vaekit.errors import VaekitError
from vaekit.export.graph import finalize, fp32_source, set_metadata
from vaekit.runtimes.backends.onnxrt import cpu_session
from vaekit.runtimes.proving.parity import TOLERANCES, judge, judged_as, metrics, typical_rows

BF16_OPSET = 22  # the first opset whose Conv/ConvTranspose accept bfloat16
EMULATED_ROWS = 2  # inputs run through the (slow) reference evaluator in bfloat16 arithmetic
FLOAT, BFLOAT16 = TensorProto.FLOAT, TensorProto.BFLOAT16
# Ops whose bfloat16 form (opset 22) computes what their float32 form does; anything else is refused
# rather than converted on hope.
BF16_OPS = frozenset(
    {
        "Add",
        "BatchNormalization",
        "Cast",
        "Concat",
        "Constant",
        "Conv",
        "ConvTranspose",
        "Div",
        "Exp",
        "Flatten",
        "Gemm",
        "Identity",
        "LeakyRelu",
        "MatMul",
        "Mul",
        "Relu",
        "Reshape",
        "Sigmoid",
        "Softplus",
        "Sub",
        "Tanh",
        "Transpose",
    }
)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest with ties to even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _bf16_tensor(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor)
    return helper.make_tensor(tensor.name, BFLOAT16, values.shape, to_bf16_bits(values).tobytes(), raw=True)


def _cast_io(graph: onnx.GraphProto) -> None:
    """Cast each float32 input to bfloat16 where it enters and each float32 output back where it leaves
    (an output that is also an input passes through as it is)."""
    inputs = {v.name for v in graph.input}
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inner = f"{value.name}_bf16"
        for node in graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        graph.node.insert(0, helper.make_node("Cast", [value.name], [inner], name=f"{inner}_cast", to=BFLOAT16))
    outputs = {v.name: v.type.tensor_type.elem_type for v in graph.output}
    for name in (n for n, kind in outputs.items() if kind == FLOAT and n not in inputs):
        inner = f"{name}_bf16"
        for node in graph.node:  # its producer and any node that also reads it move to the bf16 tensor
            node.input[:] = [inner if n == name else n for n in node.input]
            node.output[:] = [inner if n == name else n for n in node.output]
        for init in graph.initializer:
            if init.name == name:
                init.name = inner
        graph.node.append(helper.make_node("Cast", [inner], [name], name=f"{name}_cast", to=FLOAT))


def _constant_to_bf16(node: onnx.NodeProto) -> None:
    """A Constant's float value (as a tensor, value_float or value_floats) becomes a bfloat16 tensor."""
    for i, attr in enumerate(node.attribute):
        if attr.name == "value" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_bf16_tensor(attr.t))
        elif attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32)
            tensor = _bf16_tensor(numpy_helper.from_array(values, node.output[0]))
            node.attribute[i].CopyFrom(helper.make_attribute("value", tensor))


def to_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The bfloat16 form of an fp32 graph at opset 22 (float32 I/O); refuses ops outside BF16_OPS."""
    unknown = sorted({n.op_type for n in model.graph.node} - BF16_OPS)
    if unknown:
        raise VaekitError(f"no bf16 form for op {', '.join(unknown)}: export the fp32 or fp16 graph instead")
    try:
        converted = version_converter.convert_version(model, BF16_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError with its reason
        raise VaekitError(f"cannot convert the graph to opset {BF16_OPSET}: {exc}") from None
    graph = converted.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == FLOAT:
            graph.initializer[i].CopyFrom(_bf16_tensor(init))
    for node in graph.node:
        if node.op_type == "Constant":
            _constant_to_bf16(node)
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = BFLOAT16
    del graph.value_info[:]  # stale float32 types; finalize infers them again, strictly
    _cast_io(graph)
    return converted


def node_types(model: onnx.ModelProto) -> dict[str, int]:
    """Compute nodes (not Casts, Reshapes or Constants) by the type they compute in: every one must be bf16."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    counts = {"bf16": 0, "fp32": 0}
    for node in inferred.graph.node:
        if node.op_type in ("Cast", "Constant", "Reshape", "Flatten", "Identity", "Transpose"):
            continue
        counts["bf16" if types.get(node.output[0]) == BFLOAT16 else "fp32"] += 1
    return counts


def verify(
    model: onnx.ModelProto, converted: onnx.ModelProto, feed: dict[str, np.ndarray], value_range: tuple[float, float]
) -> dict[str, dict[str, float]]:
    """The bf16 graph in bfloat16 arithmetic on the first EMULATED_ROWS inputs (the |z| = 4 corners for a
    decoder) against the fp32 graph on ONNX Runtime, judged by the bf16 parity row; refused when broken."""
    name = model.graph.input[0].name
    rows = {name: feed[name][:EMULATED_ROWS]}
    reference = cpu_session(model.SerializeToString()).run(None, rows)
    with np.errstate(over="ignore", invalid="ignore"):
        emulated = [np.asarray(a, dtype=np.float32) for a in ReferenceEvaluator(converted).run(None, rows)]
    result, broken = {}, []
    for out, ref, got in zip((o.name for o in model.graph.output), reference, emulated, strict=True):
        if not np.isfinite(got).all():
            raise VaekitError(f"the bf16 graph returns NaN/Inf in {out}")
        result[out] = metrics(ref, got, value_range if out == "image" else None)
        key = judged_as(out, stress=not typical_rows(rows[name]).all())
        broken += [f"{out} {b}" for b in judge(result[out], TOLERANCES[("bf16", "cpu")][key])]
    if broken:
        raise VaekitError(f"in bf16 arithmetic the graph breaks the bf16 tolerance: {'; '.join(broken)}")
    return result


def convert_bf16(src: Path, dst: Path, images: np.ndarray, z: np.ndarray) -> dict[str, Any]:
    """Write dst (e.g. decoder.bf16.onnx) from the fp32 graph src; returns what was converted and checked.

    images: float32 real images in the value range (encoder); z: latents, stress corners first (decoder).
    """
    model, meta = fp32_source(src, "bf16")
    inputs = images if meta["role"] == "encoder" else z
    converted = to_bf16(model)
    counts = node_types(converted)
    lo, hi = json.loads(meta.get("value_range", "[0, 1]"))
    feed = {model.graph.input[0].name: np.ascontiguousarray(inputs, dtype=np.float32)}
    checks = verify(model, converted, feed, (float(lo), float(hi)))
    set_metadata(converted, {**meta, "precision": "bf16", "opset": str(BF16_OPSET)})
    finalize(converted, dst)
    return {"file": dst.name, "opset": BF16_OPSET, "nodes": counts, "bf16_arithmetic": checks}
