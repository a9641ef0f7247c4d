"""fp16 graphs: float32 inputs and outputs, float16 inside, with the nodes that would overflow kept in float32.

TensorRT 11 builds strongly typed networks only, so precision has to live in the graph. The conversion is
onnxconverter-common's float16 pass with a node block list; the block list comes from data, not hope:
the fp32 graph runs on real images (encoder) or prior samples with |z| up to 4 (decoder) with every
intermediate tensor exposed, and a node stays float32 when any tensor it reads or writes comes within
HEADROOM_MARGIN of fp16's largest finite value. An overflow inside the graph can hide behind an output
that still looks finite (x / sqrt(mean(x^2)) gives 0, not inf), so outputs alone prove nothing.

The converter leaves Casts that strict type checks reject (a blocked node that writes a graph output gets
its output cast to float16, so the graph no longer returns float32), so the result is repaired and then
checked: float32 I/O, every node computing in the type it was meant to, no no-op Casts. Last, the graph
must meet the fp16 parity tolerance in true fp16 arithmetic (see `verify`), not only on ONNX Runtime CPU.
This module needs onnx, onnxruntime and numpy only: `build-engine --precision fp16` runs it on a device
without torch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from vaekit.errors import VaekitError
from vaekit.export.graph import finalize, fp32_source, set_metadata
from vaekit.runtimes.backends.onnxrt import cpu_session
from vaekit.runtimes.proving.layerwise.budget import node_budget
from vaekit.runtimes.proving.parity import TOLERANCES, judge, judged_as, metrics, typical_rows

FP16_MAX = 65504.0  # largest finite float16
HEADROOM_MARGIN = 16.0  # keep 4 bits of range spare: unseen inputs may reach further than the profiled ones
EMULATED_ROWS = 2  # inputs run in true fp16 arithmetic by the (slow) reference evaluator
HEADROOM_CAP = 1e6  # reported for tensors that are all zero (JSON has no infinity)
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _converter() -> Any:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise VaekitError("fp16 graphs need onnxconverter-common: pip install 'onnxconverter-common>=1.16'") from None
    return float16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor in the top-level graph, from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    found = {t.name: t.data_type for t in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        found[v.name] = v.type.tensor_type.elem_type
    for node in g.node:  # Constant nodes: their value's type
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                found[node.output[0]] = attr.t.data_type
    return found


def profile_peaks(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |value| of every float tensor the graph reads or computes on these inputs (ORT CPU, no fusion)."""
    types = _types(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in listed and types.get(name) == FLOAT:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(name, FLOAT, None))
                listed.add(name)
    session = cpu_session(probe.SerializeToString(), optimize=False)  # keep every node as written
    names = [o.name for o in session.get_outputs()]
    peaks = {
        name: float(np.abs(v).max()) if v.size else 0.0 for name, v in zip(names, session.run(names, feed), strict=True)
    }
    peaks.update({name: float(np.abs(v).max()) for name, v in feed.items()})
    for init in model.graph.initializer:
        if init.data_type == FLOAT:
            values = numpy_helper.to_array(init)
            peaks[init.name] = float(np.abs(values).max()) if values.size else 0.0
    bad = [name for name, peak in peaks.items() if not np.isfinite(peak)]
    if bad:
        raise VaekitError(f"the fp32 graph itself produces NaN/Inf in {', '.join(bad[:5])}: fix the model first")
    return peaks


def _headroom(peak: float) -> float:
    return HEADROOM_CAP if peak <= FP16_MAX / HEADROOM_CAP else round(FP16_MAX / peak, 3)


def node_peaks(model: onnx.ModelProto, peaks: dict[str, float]) -> dict[str, float]:
    """Per node: the largest |value| among the float tensors it reads or writes."""
    return {
        node.name: max((peaks[t] for t in (*node.input, *node.output) if t in peaks), default=0.0)
        for node in model.graph.node
        if any(t in peaks for t in (*node.input, *node.output))
    }


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _bypass(graph: onnx.GraphProto, cast: onnx.NodeProto, src: str, graph_inputs: set[str]) -> None:
    """Remove a Cast whose output holds the same values as tensor src, rewiring its readers (or src's writer)."""
    dst = cast.output[0]
    graph.node.remove(cast)
    if dst in {o.name for o in graph.output} and src not in graph_inputs:
        _rename(graph, src, dst)  # src's producer writes the graph output's name directly
    else:
        _rename(graph, dst, src)


def _next_fix(model: onnx.ModelProto, original: dict[str, onnx.TensorProto], graph_inputs: set[str]) -> bool:
    """Apply one Cast repair; False when none is left."""
    graph = model.graph
    del graph.value_info[:]  # stale after each edit; shape inference rebuilds it
    types = _types(model)
    producers = {out: node for node in graph.node for out in node.output}
    fp16_inits = {t.name for t in graph.initializer if t.data_type == FLOAT16}
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        src, to = node.input[0], _cast_to(node)
        upstream = producers.get(src)
        if types.get(src) == to:  # a no-op Cast
            _bypass(graph, node, src, graph_inputs)
        elif upstream is not None and upstream.op_type == "Cast" and types.get(upstream.input[0]) == to:
            # A -> B -> A: fp16 -> fp32 -> fp16 is exact, fp32 -> fp16 -> fp32 only rounds (or overflows).
            _bypass(graph, node, upstream.input[0], graph_inputs)
        elif src in fp16_inits and to == FLOAT and src in original:
            # The converter halves a blocked node's weights and casts them back: give it the fp32 weights.
            weights = onnx.TensorProto()
            weights.CopyFrom(original[src])
            weights.name = node.output[0]
            graph.node.remove(node)
            graph.initializer.append(weights)
        else:
            continue
        return True
    return False


def repair_casts(model: onnx.ModelProto, io_types: dict[str, int], original: dict[str, onnx.TensorProto]) -> None:
    """Restore the original I/O types, and remove the Casts the converter left that change nothing or only round.

    original: the fp32 graph's float initializers by name.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        wanted = io_types[output.name]
        if output.type.tensor_type.elem_type == wanted:
            continue
        producer = producers.get(output.name)
        if producer is None or producer.op_type != "Cast":
            raise VaekitError(f"fp16 conversion changed the type of output {output.name!r} and no Cast can restore it")
        next(a for a in producer.attribute if a.name == "to").i = wanted
        output.type.tensor_type.elem_type = wanted
    graph_inputs = {i.name for i in graph.input}
    while _next_fix(model, original, graph_inputs):
        pass
    while True:  # Casts and fp16 weights nobody reads any more
        readers = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in readers]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name not in readers]:
        graph.initializer.remove(init)
    del graph.value_info[:]


def check_types(model: onnx.ModelProto, io_types: dict[str, int], blocked: set[str]) -> dict[str, int]:
    """Prove the converted graph is what we claim; returns {'fp16': nodes, 'fp32': nodes} (Casts excluded)."""
    types = _types(model)
    graph = model.graph
    wrong_io = [v.name for v in (*graph.input, *graph.output) if types.get(v.name) != io_types[v.name]]
    if wrong_io:
        raise VaekitError(f"fp16 graph changed the types of {', '.join(wrong_io)}: callers expect float32")
    counts = {"fp16": 0, "fp32": 0}
    problems = []
    for node in graph.node:
        floats = {types[t] for t in (*node.input, *node.output) if types.get(t) in (FLOAT, FLOAT16)}
        if node.op_type == "Cast":
            if node.input[0] in types and types[node.input[0]] == _cast_to(node):
                problems.append(f"no-op Cast {node.name}")
            continue
        if not floats:
            continue
        expected = FLOAT if node.name in blocked else FLOAT16
        if floats != {expected}:
            problems.append(f"{node.op_type} {node.name} mixes or has the wrong float type")
        counts["fp32" if expected == FLOAT else "fp16"] += 1
    if problems:
        raise VaekitError(f"fp16 conversion left a graph strict type checks reject: {'; '.join(problems[:5])}")
    return counts


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = cpu_session(model.SerializeToString())
    try:
        return list(session.run(None, feed))
    except Exception as exc:  # ORT raises its own types; all mean the graph does not run here
        raise VaekitError(f"ONNX Runtime CPU cannot run the fp16 graph: {str(exc).splitlines()[0]}") from None


def verify(
    model: onnx.ModelProto,
    converted: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    value_range: tuple[float, float],
) -> dict[str, dict[str, dict[str, float]]]:
    """Compare the fp16 graph with the fp32 one, two ways, and refuse it when fp16 arithmetic breaks tolerance.

    ONNX Runtime CPU has few fp16 kernels: it computes most nodes in fp32 and merges the Cast pairs around
    them, which hides an overflow between nodes. The ONNX reference evaluator computes in the graph's own
    types, as a GPU would; it is slow, so it runs on the first EMULATED_ROWS inputs (the |z| = 4 corners).
    """
    name = model.graph.input[0].name
    outputs = [o.name for o in model.graph.output]
    reference, got = _run(model, feed), _run(converted, feed)
    rows = {name: feed[name][:EMULATED_ROWS]}
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows up below as a broken tolerance
        emulated = [np.asarray(a, dtype=np.float32) for a in ReferenceEvaluator(converted).run(None, rows)]
    result: dict[str, dict[str, dict[str, float]]] = {"onnxruntime_cpu": {}, "fp16_arithmetic": {}}
    broken = []
    for out, ref, ort_out, emu in zip(outputs, reference, got, emulated, strict=True):
        if not (np.isfinite(ort_out).all() and np.isfinite(emu).all()):
            raise VaekitError(f"the fp16 graph returns NaN/Inf in {out} on the profiling inputs")
        span = value_range if out == "image" else None
        result["onnxruntime_cpu"][out] = metrics(ref, ort_out, span)
        result["fp16_arithmetic"][out] = metrics(ref[:EMULATED_ROWS], emu, span)
        # the emulated decoder rows are the stress corners: judged as parity judges them
        key = judged_as(out, stress=not typical_rows(rows[name]).all())
        broken += [f"{out} {b}" for b in judge(result["fp16_arithmetic"][out], TOLERANCES[("fp16", "cpu")][key])]
    if broken:
        raise VaekitError(f"in fp16 arithmetic the graph breaks the fp16 tolerance: {'; '.join(broken)}")
    return result


def _convert(model: onnx.ModelProto, blocked: set[str], io_types: dict[str, int]) -> onnx.ModelProto:
    """The converter's fp16 graph with `blocked` nodes in fp32, its Casts repaired."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for each tiny weight it clamps to its min positive value
        converted = _converter().convert_float_to_float16(
            converted, keep_io_types=True, node_block_list=sorted(blocked), max_finite_val=FP16_MAX
        )
    repair_casts(converted, io_types, {t.name: t for t in model.graph.initializer if t.data_type == FLOAT})
    return converted


def convert_fp16(
    src: Path, dst: Path, images: np.ndarray, z: np.ndarray, *, margin: float = HEADROOM_MARGIN
) -> dict[str, Any]:
    """Write dst (e.g. decoder.fp16.onnx) from the fp32 graph src; returns the headroom report.

    images: float32 real images in the value range (profile the encoder); z: latents with |z| up to 4
    (profile the decoder). margin: a node stays float32 when a tensor it touches exceeds 65504 / margin.
    """
    if margin < 1:
        raise VaekitError(f"fp16 headroom margin must be >= 1, got {margin}")
    model, meta = fp32_source(src, "fp16")
    role = meta["role"]
    inputs = images if role == "encoder" else z
    feed = {model.graph.input[0].name: np.ascontiguousarray(inputs, dtype=np.float32)}
    io_types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}

    limit = FP16_MAX / margin
    per_node = node_peaks(model, profile_peaks(model, feed))
    ops = {n.name: n.op_type for n in model.graph.node}
    blocked = {name for name, peak in per_node.items() if peak > limit}

    converted = _convert(model, blocked, io_types)
    # The precision budget: per-node error of the fp16 graph; a node breaking the fp16 row (or not finite)
    # stays fp32 too, and the graph is converted again with it blocked.
    budget = node_budget(model, converted, inputs, "fp16")
    costly = {r.onnx_node for r in budget if (r.broken or r.nonfinite) and r.onnx_node in ops} - blocked
    if costly:
        blocked |= costly
        converted = _convert(model, blocked, io_types)
    counts = check_types(converted, io_types, blocked)
    if counts["fp16"] == 0:
        raise VaekitError(
            f"every node of {src.name} comes within {margin:g}x of fp16's range: an fp16 graph would compute in fp32"
        )
    lo, hi = json.loads(meta.get("value_range", "[0, 1]"))
    checks = verify(model, converted, feed, (float(lo), float(hi)))
    fp16_nodes = {name: peak for name, peak in per_node.items() if name not in blocked}
    tightest = max(fp16_nodes, key=lambda n: fp16_nodes[n], default="")
    report: dict[str, Any] = {
        "file": dst.name,
        "profiled_on": f"{len(inputs)} {'real images' if role == 'encoder' else 'latent vectors'}",
        "margin": margin,
        "limit": round(limit, 1),
        "min_headroom": _headroom(max(per_node.values(), default=0.0)),
        "min_headroom_fp16": _headroom(fp16_nodes[tightest]) if tightest else HEADROOM_CAP,
        "tightest_fp16_node": tightest,
        "blocked": [
            {"node": n, "op": ops[n], "max_abs": per_node[n], "headroom": _headroom(per_node[n])}
            for n in sorted(blocked)
        ],
        "nodes": counts,
        "kept_fp32_by_budget": sorted(costly),
        "budget": [
            {"node": r.onnx_node, "module": r.module, **{k: r.metrics[k] for k in ("max_abs", "rel")}}
            for r in budget
            if r.metrics
        ],
        "vs_fp32": checks,
    }
    meta.update(
        precision="fp16",
        fp16_blocked_nodes=json.dumps(sorted(blocked)),
        fp16_min_headroom=str(report["min_headroom_fp16"]),
    )
    set_metadata(converted, meta)
    finalize(converted, dst)
    return report
