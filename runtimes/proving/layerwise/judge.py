"""How layerwise parity judges a layer against its reference, and which layer diverges first. The rules:

- Tolerance: the precision's parity row (`parity.TOLERANCES`): mu's row for encoder layers; for decoder
  layers image's on typical latents and image_stress's on stress latents, judged apart as parity does.
  Inside the graph max_abs is scaled by the tensor's magnitude, row max_abs x max(1, max|reference|), since
  rounding error grows with the values rounded; cosine applies as it is. A layer that writes a graph output
  is judged by that output's own row (PSNR included), exactly as parity judges it.
- Growth: the layer's relative error (max abs / max|reference|) over the largest relative error of the
  layers it reads, whose value is floored at NOISE_FRACTION of the row's relative limit (below that both
  are noise). A layer reading only the graph input has no growth. A layer is flagged when its growth is
  above GROWTH_FACTOR x (at least 1) the median growth of the graph's other layers.
- NaN or Inf in a candidate tensor is a failure at the first layer where it appears.
The first layer in graph order that breaks one of these is the first divergence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import reduce
from statistics import median
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import Role
from vaekit.runtimes.proving.layerwise.capture import Tensors
from vaekit.runtimes.proving.layerwise.mapping import Unit
from vaekit.runtimes.proving.parity import (
    CPU_LIKE,
    TOLERANCES,
    Tolerance,
    judge,
    judged_as,
    metrics,
    typical_rows,
    worst,
)

GROWTH_FACTOR = 30.0
NOISE_FRACTION = 0.01
REFERENCE_NONFINITE = "the reference itself is NaN/Inf here"


@dataclass
class LayerResult:
    module: str  # module path ("decoder.1"), or "output image" for an op outside any module
    onnx_node: str
    op_type: str
    tensor: str  # the candidate tensor compared
    key: str = ""
    shape: list[int] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)  # modules computed inside this layer's tensor
    inputs: list[str] = field(default_factory=list)  # keys of the layers it reads
    metrics: dict[str, float] = field(default_factory=dict)  # max_abs, p99_abs, min_cosine, rel, scale, ...
    growth: float | None = None
    nonfinite: int = 0
    tolerance: dict[str, float | None] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    note: str = ""  # why it was not compared


def relative_limit(row: Tolerance) -> float:
    """The relative error a row allows: its max_abs, else the L2 error its cosine allows, else its PSNR's."""
    if row.max_abs is not None:
        return row.max_abs
    if row.min_cosine is not None:
        return math.sqrt(2 * (1 - row.min_cosine))
    return 10 ** (-(row.min_psnr or 0.0) / 20)


@dataclass(frozen=True)
class Group:
    """Rows of the batch judged by one tolerance row, as parity judges them: a decoder's typical latents by
    the image row, its stress latents (|z| = 4) by the image_stress row."""

    name: str
    rows: np.ndarray  # bool mask over the batch
    layer: Tolerance  # what the layers inside the graph are judged by
    outputs: dict[str, Tolerance]  # graph output -> its own row


def groups_for(precision: str, device: str, role: Role, x: np.ndarray) -> list[Group]:
    table = TOLERANCES.get((precision, "cpu" if device.split(":")[0] in CPU_LIKE else "cuda"))
    if table is None:
        raise VaekitError(f"no parity tolerance for {precision} on {device}")
    if role == "encoder":
        return [Group("images", np.ones(len(x), bool), table["mu"], {"mu": table["mu"], "log_var": table["log_var"]})]
    typical = typical_rows(x)
    found = []
    for stress, rows in ((False, typical), (True, ~typical)):
        row = table[judged_as("image", stress)]
        if rows.any():
            found.append(Group("stress latents" if stress else "latents", rows, row, {"image": row}))
    return found


def layer_metrics(ref: np.ndarray, got: np.ndarray, value_range: tuple[float, float] | None) -> dict[str, float]:
    """parity's metrics, plus the 99th percentile of |diff|, max|reference| and the relative error."""
    m = metrics(ref, got, value_range)
    if "p99_abs" not in m:
        m["p99_abs"] = float(np.quantile(np.abs(got.astype(np.float64) - ref.astype(np.float64)), 0.99))
    m["scale"] = float(np.abs(ref).max()) if ref.size else 0.0
    m["rel"] = m["max_abs"] / max(m["scale"], 1e-30)
    return m


def compare(
    found: list[Unit], ref: Tensors, got: Tensors, groups: list[Group], value_range: tuple[float, float] | None
) -> list[LayerResult]:
    """One result per unit, in graph order; units the runtime computed inside a later one are folded into it."""
    results: list[LayerResult] = []
    pending: list[str] = []
    for unit in found:
        r = LayerResult(unit.module, unit.onnx_node, unit.op_type, unit.tensor, unit.key)
        r.fused, r.inputs = list(unit.fused), list(unit.inputs)
        results.append(r)
        reference = ref.get(unit.key, ref.get(unit.output)) if unit.output else ref.get(unit.key)
        if unit.tensor not in got:
            r.note = "computed inside a later layer at run time (rewritten or fused by the runtime)"
            pending.append(unit.module)
            continue
        value = got[unit.tensor]
        r.shape, r.fused = list(value.shape), r.fused + pending
        pending = []
        if reference is None or reference.size != value.size:
            r.note = "no reference tensor" if reference is None else f"reference has shape {list(reference.shape)}"
            continue
        r.nonfinite = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if not np.isfinite(reference).all():
            r.note = REFERENCE_NONFINITE
        elif not r.nonfinite:
            _judge(r, unit, reference.reshape(value.shape), value.astype(np.float32), groups, value_range)
    _fold_unmatched(results, list(ref))
    _growth(found, results, NOISE_FRACTION * relative_limit(groups[0].layer))
    return results


def _judge(
    r: LayerResult,
    unit: Unit,
    reference: np.ndarray,
    value: np.ndarray,
    groups: list[Group],
    value_range: tuple[float, float] | None,
) -> None:
    """Metrics per group of rows, each judged by its row; the layer reports the worst of them."""
    found = []
    for g in groups:
        m = layer_metrics(reference[g.rows], value[g.rows], value_range if unit.output == "image" else None)
        row = g.outputs.get(unit.output) if unit.output else None
        tol = row or Tolerance(
            max_abs=None if g.layer.max_abs is None else g.layer.max_abs * max(1.0, m["scale"]),
            min_cosine=g.layer.min_cosine,
        )
        r.tolerance = r.tolerance or asdict(tol)
        r.broken += [f"{g.name}: {b}" if len(groups) > 1 else b for b in judge(m, tol)]
        found.append(m)
    r.metrics = reduce(worst, found)


def _fold_unmatched(results: list[LayerResult], ref_order: list[str]) -> None:
    """Reference modules the graph has no tensor for (a Linear folded into the next layer's Gemm by a rewrite)
    are listed as fused into the next layer that has one."""
    have = {r.key for r in results}
    position = {key: i for i, key in enumerate(ref_order)}
    last = -1
    for r in results:
        if r.key in position and r.metrics:
            between = [k for k in ref_order[last + 1 : position[r.key]] if k not in have and k not in r.fused]
            r.fused += between
            last = position[r.key]


def _growth(found: list[Unit], results: list[LayerResult], floor: float) -> None:
    rel = {u.key: r.metrics["rel"] for u, r in zip(found, results, strict=True) if r.metrics}
    feeds = {u.key: u.inputs for u in found}

    def input_rel(keys: tuple[str, ...], seen: set[str]) -> list[float]:
        """Relative errors of the compared layers feeding these, through layers computed inside others."""
        found_rel = []
        for k in keys:
            if k in rel:
                found_rel.append(rel[k])
            elif k not in seen:
                seen.add(k)
                found_rel += input_rel(feeds.get(k, ()), seen)
        return found_rel

    for unit, r in zip(found, results, strict=True):
        inputs = input_rel(unit.inputs, set())
        if r.metrics and inputs:
            r.growth = r.metrics["rel"] / max(max(inputs), floor)


def first_divergence(role: Role, results: list[LayerResult]) -> dict[str, Any] | None:
    growths = [r.growth for r in results if r.growth is not None]
    for r in results:
        others = list(growths)
        if r.growth is not None:
            others.remove(r.growth)
        limit = GROWTH_FACTOR * max(1.0, median(others) if others else 1.0)
        if r.nonfinite:
            reason, detail = "nonfinite", f"NaN/Inf appears here ({r.nonfinite} values of {math.prod(r.shape)})"
        elif r.note == REFERENCE_NONFINITE:
            reason, detail = "reference_nonfinite", r.note
        elif r.broken:
            reason, detail = "tolerance", "; ".join(r.broken)
        elif r.growth is not None and r.growth > limit:
            reason, detail = "growth", f"error grows {r.growth:.3g}x over its input's (limit {limit:.3g}x)"
        else:
            continue
        keep = ("module", "onnx_node", "op_type", "tensor", "fused", "growth", "tolerance")
        return {"graph": role, **{k: getattr(r, k) for k in keep}, "reason": reason, "detail": detail, **r.metrics}
    return None
