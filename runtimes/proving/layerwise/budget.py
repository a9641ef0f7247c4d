"""The precision budget: which nodes of an fp16/bf16/int8 graph cost the accuracy, measured against the fp32
graph they were made from, node by node, with the same metrics and rules as layerwise parity.

export/precisions/fp16.py and int8.py use it to choose what stays in float: `node_budget` on the candidate
graph in memory, then `costliest` for the order in which to keep nodes out of reduced precision.
Needs numpy, onnx and onnxruntime only (an fp16 engine is built on devices without torch).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from vaekit.runtimes.proving.layerwise.capture import run_marked
from vaekit.runtimes.proving.layerwise.compare import role_of
from vaekit.runtimes.proving.layerwise.judge import LayerResult, compare, groups_for
from vaekit.runtimes.proving.layerwise.mapping import follow_qdq, node_units

if TYPE_CHECKING:
    import onnx


def node_budget(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, inputs: np.ndarray, precision: str, device: str = "cpu"
) -> list[LayerResult]:
    """Per-node error of a reduced-precision graph against the fp32 graph it was made from: the precision budget.

    reference, candidate: onnx.ModelProto (in memory: export calls this before writing anything). Nodes are
    matched by name (the fp16 converter and the int8 quantizer keep them), so int8 is compared against the
    rewritten fp32 graph the quantizer started from. Each node's candidate value is what its readers see
    (after its Q/DQ pair). Needs onnx and onnxruntime only.
    """
    from vaekit.runtimes.backends.onnxrt import cpu_session

    role = role_of(reference)
    found = node_units(reference)
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    ref = run_marked(reference, [u.tensor for u in found], x, cpu_session)
    seen = follow_qdq(candidate, [u.tensor for u in found])
    got_raw = run_marked(candidate, list(seen.values()), x, cpu_session)
    got = {t: got_raw[c] for t, c in seen.items() if c in got_raw}
    ref_by_key = {u.key: ref[u.tensor] for u in found if u.tensor in ref}
    meta = {p.key: p.value for p in reference.metadata_props}
    value_range = None
    if "value_range" in meta:
        lo, hi = json.loads(meta["value_range"])
        value_range = (float(lo), float(hi))
    return compare(found, ref_by_key, got, groups_for(precision, device, role, x), value_range)


def costliest(results: list[LayerResult], op_types: tuple[str, ...], limit: int) -> list[str]:
    """Node names of the given op types, those that add the most relative error to what they read first:
    the order in which to keep nodes in float."""
    rel = {r.key: r.metrics["rel"] for r in results if r.metrics}

    def added(r: LayerResult) -> float:
        return r.metrics["rel"] - max((rel[k] for k in r.inputs if k in rel), default=0.0)

    ranked = sorted((r for r in results if r.op_type in op_types and r.metrics), key=added, reverse=True)
    return [r.onnx_node for r in ranked[:limit]]
