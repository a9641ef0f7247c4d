"""The work of a graph: FLOPs per image from ONNX shape inference, so GFLOP/s compare runtimes and
precisions on the same work (that of the fp32 graph)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def conv_flops(op: str, shapes: dict[str, list[int]], node: onnx.NodeProto) -> int:
    """Multiply-adds x 2 of one Conv / ConvTranspose / Gemm / MatMul from inferred shapes (0 if unknown)."""
    ins = [shapes.get(i) for i in node.input]
    out = shapes.get(node.output[0])
    if out is None or ins[0] is None or len(ins) < 2 or ins[1] is None:
        return 0
    x, w = ins[0], ins[1]
    if op == "Conv":  # out (N, Cout, *spatial), w (Cout, Cin/group, *kernel)
        return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":  # every input pixel scatters into Cout/group x kernel outputs; w (Cin, Cout/group, *k)
        return 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = x[0] if trans_a else x[1]
        return 2 * int(np.prod(out)) * int(k)
    if op == "MatMul":
        return 2 * int(np.prod(out)) * int(x[-1])
    return 0


def count_flops(path: Path) -> dict[str, int]:
    """FLOPs per image of an ONNX graph (batch 1), by op type plus 'total'; bias adds and activations excluded."""
    import onnx

    model = onnx.load(str(path))
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in inferred.graph.initializer:
        shapes[t.name] = list(t.dims)
    flops: dict[str, int] = {}
    for node in inferred.graph.node:
        f = conv_flops(node.op_type, shapes, node)
        if f:
            flops[node.op_type] = flops.get(node.op_type, 0) + f
    flops["total"] = sum(flops.values())
    return flops
