"""INT8 graphs for CPU edge devices (and TensorRT): static Q/DQ quantization with ONNX Runtime's tools.

Choices, each measured on the 64x64 decoder (latent 128) on an AVX-512 VNNI CPU:
- The graph is first rewritten exactly (`rewrite_for_cpu(every_upsample=True)`): ONNX Runtime's CPU
  provider has no int8 ConvTranspose, so a quantized ConvTranspose still runs in float between Q/DQ
  pairs (0.9x of fp32); as 2x2 convolutions + DepthToSpace they become QLinearConv (2x fp32's speed).
- Symmetric int8 activations and per-channel symmetric int8 weights: TensorRT accepts only zero point 0,
  and ONNX Runtime's CPU provider fuses the same graph into QLinearConv once every quantized activation
  has a single consumer (which the 2x2 form gives); asymmetric uint8 measured 1.5 dB better but no faster.
- Percentile (99.999) calibration: +1.7 dB image PSNR over MinMax, whose ranges a few outliers stretch.
- Decided by measurement, against the int8 parity tolerance (with a margin) on the inputs parity judges
  (real images; their mu plus the prior samples, stress latents included): calibration with and without
  the stress latents is tried; if neither meets it, the weighted layers that add the most error (measured
  per node by the layerwise budget; position, nearest the output first, only where nothing was measured)
  stay float one by one and quantization repeats (calibrated once, the ranges are reused).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vaekit.errors import VaekitError
from vaekit.export.graph import finalize, set_metadata
from vaekit.runtimes.artifacts import onnx_name
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu
from vaekit.runtimes.backends.onnxrt import OrtEncoder, cpu_session, graph_metadata, read_graph
from vaekit.runtimes.base import in_batches
from vaekit.runtimes.cpu import INT8_CLASSES, TARGET_CLASSES, int8_class, isa_flags
from vaekit.runtimes.proving.int8_kernels import saturation_free, simulate
from vaekit.runtimes.proving.layerwise.budget import costliest, node_budget
from vaekit.runtimes.proving.parity import TOLERANCES, Tolerance, judge, judged_as, metrics, typical_rows

SCHEME_8BIT = "int8 weights"  # full range: the most accurate, but pair sums saturate without VNNI
SCHEME_7BIT = "7-bit weights"  # |w| <= 64: no pair sum leaves int16 on any CPU, one bit of weight precision less
PERCENTILE = 99.999
CALIBRATION_BATCH = 32
MAX_FP32_LAYERS = 3  # how many layers may fall back to float before we report failure
PSNR_MARGIN_DB = 2.0  # aim above the parity tolerance: parity compares with PyTorch, at other batch sizes
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over one array, in batches."""

    def __init__(self, name: str, data: np.ndarray, batch: int) -> None:
        # Equal batches only: the histogram calibrators stack per-batch outputs and fail on a ragged last one.
        n = len(data) - len(data) % batch if len(data) >= batch else len(data)
        self._batches = iter([{name: data[i : i + batch]} for i in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints progress and logs advice to the root logger; neither is the user's business."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _margined(tol: Tolerance) -> Tolerance:
    cosine = None if tol.min_cosine is None else 1 - (1 - tol.min_cosine) / 2
    psnr = None if tol.min_psnr is None else tol.min_psnr + PSNR_MARGIN_DB
    return Tolerance(max_abs=tol.max_abs, min_cosine=cosine, min_psnr=psnr)


def _run(model: str | bytes, feed_name: str, data: np.ndarray, outputs: list[str], batch: int) -> list[np.ndarray]:
    sess = cpu_session(model)
    result = in_batches(lambda x: tuple(sess.run(outputs, {feed_name: x})), data, batch)
    return list(result)


STRESS = "stress latents"


def calibration_sets(
    src: Path, role: str, calibration: np.ndarray, z: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray, str]:
    """Inputs as the graph sees them in use.

    Returns (calibration sets to try, the check inputs, row masks judged separately, the typical rows, a
    description). Encoder: the real images. Decoder: the latents real images encode to (mu from the fp32
    encoder.onnx beside src) and the prior samples z, judged apart so that a few z count as much as they do
    in parity. Stress latents in z (|z| = 4 everywhere) are tried both ways: fitted by calibration (every
    range stretched for them) or left to clip; the check decides.
    """
    images = np.ascontiguousarray(calibration, dtype=np.float32)
    if role == "encoder":
        every = np.ones(len(images), bool)
        return {"images": images}, images, {"images": every}, every, f"{len(images)} images"
    z = np.ascontiguousarray(z, dtype=np.float32)
    encoder = src.parent / onnx_name("encoder")
    mu = np.zeros((0, z.shape[1]), np.float32)
    if encoder.is_file():
        enc = OrtEncoder(encoder)
        mu = in_batches(enc.encode, images, enc.info.max_batch)[0]
    check = np.concatenate([mu, z])
    is_mu = np.arange(len(check)) < len(mu)
    typical = is_mu | np.concatenate([np.zeros(len(mu), bool), typical_rows(z)])
    groups = {"encoded images": is_mu, "prior samples": ~is_mu & typical, STRESS: ~typical}
    groups = {name: rows for name, rows in groups.items() if rows.any()}
    sets = {"typical": check[typical]}
    if not typical.all():
        sets["typical+stress"] = check
    n_typical = int(typical.sum()) - len(mu)
    source = f"{len(mu)} encoded images (mu) + " if len(mu) else "no encoder.onnx beside it: "
    return sets, check, groups, typical, f"{source}{n_typical} prior + {len(z) - n_typical} stress latents"


def _weighted_order(model: onnx.ModelProto) -> list[str]:
    """Weighted layers, nearest the output first, then nearest the input, alternating inwards."""
    names = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    order: list[str] = []
    while names:
        order.append(names.pop())
        if names:
            order.append(names.pop(0))
    return order


def _rank(attempt: dict[str, Any]) -> tuple[int, float, int]:
    """Fewest broken limits, then the best worst image PSNR (or 100 x encoder cosine), then fewest float layers."""
    found = [m for group in attempt["metrics"].values() for m in group.values()]
    quality = min(m.get("psnr", 100 * m["min_cosine"]) for m in found)
    return len(attempt["broken"]), -round(quality, 1), len(attempt["fp32_layers"])


def _quantize(prepared: Path, out: Path, reader: _Feeds | None, exclude: list[str], cache: Path, scheme: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs: dict[str, Any] = {}
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        kwargs["calibration_cache_path"] = cache  # calibrate once; retries with more fp32 layers reuse the ranges
    with _quiet():
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=scheme == SCHEME_7BIT,  # weights in [-64, 64]
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "CalibPercentile": PERCENTILE,
                "CalibMaxIntermediateOutputs": 8,  # bounds calibration memory to 8 batches of activations
            },
            **kwargs,
        )


def schemes_for(target: str) -> tuple[str, ...]:
    """The weight schemes to try, in order, for the CPUs an int8 graph must run on."""
    if target not in TARGET_CLASSES:
        raise VaekitError(f"unknown --int8-target {target!r}: use {', '.join(TARGET_CLASSES)}")
    return (SCHEME_7BIT, SCHEME_8BIT) if target == "any" else (SCHEME_8BIT,)


class _Search:
    """Quantize one graph, judge each try on the inputs parity judges, keep the first that meets the target."""

    def __init__(self, src: Path, calibration: np.ndarray, z: np.ndarray, tmp: Path) -> None:
        self.src = src
        self.model, self.meta, role = _source(src, calibration)
        self.sets, self.check, self.groups, self.typical, self.described = calibration_sets(src, role, calibration, z)
        self.feed = self.model.graph.input[0].name
        self.outputs = [o.name for o in self.model.graph.output]
        self.batch = max(1, min(CALIBRATION_BATCH, int(self.meta.get("max_batch", CALIBRATION_BATCH))))
        self.reference = _run(str(src), self.feed, self.check, self.outputs, self.batch)
        lo, hi = json.loads(self.meta["value_range"])
        self.value_range = (float(lo), float(hi))
        self.tolerances = TOLERANCES[("int8", "cpu")]
        self.rewrites = rewrite_for_cpu(self.model, every_upsample=True)
        self.tmp, self.prepared = tmp, tmp / "prepared.onnx"
        onnx.save(self.model, str(self.prepared))
        self.attempts: list[dict[str, Any]] = []

    def scores(self, got: list[np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
        """Metrics per input group and output."""
        return {
            group: {
                name: metrics(ref[rows], g[rows], self.value_range if name == "image" else None)
                for name, ref, g in zip(self.outputs, self.reference, got, strict=True)
            }
            for group, rows in self.groups.items()
        }

    def broken(self, found: dict[str, dict[str, dict[str, float]]], margin: bool = True) -> list[str]:
        """Every limit the scores break: with the search's margin while searching, without it to accept."""
        limit = _margined if margin else (lambda tol: tol)
        return [
            f"{group}: {b}"
            for group, by_output in found.items()
            for name, m in by_output.items()
            for b in judge(m, limit(self.tolerances[judged_as(name, group == STRESS)]))
        ]

    def attempt(self, scheme: str, variant: str, exclude: list[str]) -> dict[str, Any]:
        cache, out = self.tmp / f"ranges-{variant}.json", self.tmp / "int8.onnx"
        reader = None if cache.is_file() else _Feeds(self.feed, self.sets[variant], self.batch)
        try:
            _quantize(self.prepared, out, reader, exclude, cache, scheme)
        except Exception as exc:  # the quantizer raises many types; all mean this graph could not be quantized
            raise VaekitError(f"int8 quantization of {self.src.name} failed: {str(exc).splitlines()[0]}") from None
        got = _run(str(out), self.feed, self.check, self.outputs, self.batch)
        found = self.scores(got)
        broken = self.broken(found)
        typical = {
            name: metrics(ref[self.typical], g[self.typical], self.value_range if name == "image" else None)
            for name, ref, g in zip(self.outputs, self.reference, got, strict=True)
        }
        result = {"scheme": scheme, "calibration": variant, "fp32_layers": exclude, "metrics": found}
        self.attempts.append({**result, "broken": broken, "typical": typical, "model": out.read_bytes()})
        return self.attempts[-1]

    def search(self, scheme: str) -> dict[str, Any]:
        """Every calibration with all layers int8, then the costliest layers kept float one by one."""
        tried = [self.attempt(scheme, variant, []) for variant in self.sets]
        ok = next((a for a in tried if not a["broken"]), None)
        if ok is not None:
            return ok
        best = min(tried, key=_rank)
        budget = node_budget(self.model, onnx.load_from_string(best["model"]), self.check[self.typical], "int8")
        candidates = costliest(budget, WEIGHTED_OPS, MAX_FP32_LAYERS) or _weighted_order(self.model)
        for n_float in range(1, min(MAX_FP32_LAYERS, len(candidates)) + 1):
            found = self.attempt(scheme, best["calibration"], candidates[:n_float])
            if not found["broken"]:
                return found
        # Float layers are kept only where they meet the target; otherwise the best all-int8 graph stays.
        return best

    def within(self, attempt: dict[str, Any]) -> bool:
        """Whether an attempt meets the int8 tolerance itself (the search aims higher, by a margin)."""
        return not self.broken(attempt["metrics"], margin=False)

    def without_vnni(self, attempt: dict[str, Any]) -> dict[str, Any]:
        """The attempt as a CPU without VNNI computes it: exact when its weights cannot saturate, else simulated."""
        proto = onnx.load_from_string(attempt["model"])
        if saturation_free(proto):
            return {"how": "saturation-free weights (|w| <= 64)", "broken": [], "saturated": 0}
        got, saturation = simulate(proto, self.check)
        found = self.scores(got)
        return {
            "how": "simulated u8 x s8 kernel",
            "broken": self.broken(found, margin=False),
            "saturated": saturation.total,
            "metrics": found,
        }


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, z: np.ndarray, target: str = "any") -> dict[str, Any]:
    """Write dst (e.g. decoder.int8.onnx) from the fp32 graph src; returns what was done and what it cost.

    calibration: real images, float32 in the model's value range; z: prior latents (|z| up to 4). target:
    "any" (every x86 class and ARM64: 7-bit weights first, 8-bit only where a CPU without VNNI still meets
    the tolerance) or "vnni" (VNNI/AMX x86 and ARM64 only: 8-bit weights).
    """
    t0 = time.perf_counter()
    schemes = schemes_for(target)
    with tempfile.TemporaryDirectory(prefix="vaekit-int8-") as tmp:
        search = _Search(src, calibration, z, Path(tmp))
        chosen, without_vnni = None, None
        for scheme in schemes:
            found = search.search(scheme)
            if not search.within(found):
                continue
            without_vnni = search.without_vnni(found) if target == "any" else None
            if without_vnni is None or not without_vnni["broken"]:
                chosen = found
                break
        final = chosen or min((a for a in search.attempts if not a["fp32_layers"]), key=_rank)
        proto = onnx.load_from_string(final["model"])
    set_metadata(proto, {**search.meta, "precision": "int8", "int8_scheme": final["scheme"], "int8_target": target})
    finalize(proto, dst)
    summary = _summary(proto, final, search.attempts, search.tolerances, holds=chosen is not None)
    return {
        "file": dst.name,
        "calibration": f"{final['calibration']} of {search.described}",
        "calibration_count": len(search.sets[final["calibration"]]),
        "rewrites": search.rewrites,
        **summary,
        "cpu_classes": cpu_classes(target, final, without_vnni),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def cpu_classes(target: str, final: dict[str, Any], without_vnni: dict[str, Any] | None) -> dict[str, Any]:
    """Which CPU classes the graph holds on and how that is known: measured here, by construction, simulated."""
    here = int8_class()
    classes = {c: "not a target" for c in INT8_CLASSES}
    for c in TARGET_CLASSES[target]:
        classes[c] = "exact int32 accumulation, same arithmetic as measured here" if c != "avx2" else "not checked"
    if without_vnni is not None:
        classes["avx2"] = without_vnni["how"] + (", within tolerance" if not without_vnni["broken"] else ", OUTSIDE")
    if here in classes:
        classes[here] = f"measured here ({isa_flags()})"
    return {"target": target, "measured_on": here, "isa_flags": isa_flags(), "classes": classes}


def _source(src: Path, calibration: np.ndarray) -> tuple[onnx.ModelProto, dict[str, str], str]:
    """The fp32 vaekit graph to quantize, its metadata and role; anything else is one line."""
    model = read_graph(src)
    meta = graph_metadata(model)
    role = meta.get("role")
    if role not in ("encoder", "decoder"):
        raise VaekitError(f"{src} is not a vaekit graph (no role in its metadata)")
    if meta.get("precision", "fp32") != "fp32":
        raise VaekitError(f"{src.name} is already {meta['precision']}: int8 graphs are made from the fp32 graph")
    if len(calibration) < 1:
        raise VaekitError("int8 calibration needs at least one image")
    return model, meta, role


def _summary(
    proto: onnx.ModelProto,
    final: dict[str, Any],
    attempts: list[dict[str, Any]],
    tolerances: dict[str, Tolerance],
    holds: bool,
) -> dict[str, Any]:
    """What the chosen graph costs, judged against the tolerance without the search's margin; holds: whether
    it met the target on every CPU class it must run on."""
    within = holds and not any(
        judge(m, tolerances[judged_as(name, group == STRESS)])
        for group, found in final["metrics"].items()
        for name, m in found.items()
    )
    weights = (
        "per-channel symmetric 7-bit weights"
        if final["scheme"] == SCHEME_7BIT
        else "per-channel symmetric int8 weights"
    )
    return {
        "method": f"QDQ, symmetric int8 activations (percentile {PERCENTILE}), per-channel symmetric {weights} weights",
        "scheme": final["scheme"],
        "fp32_layers": final["fp32_layers"],
        "quantized_layers": sum(1 for n in proto.graph.node if n.op_type in WEIGHTED_OPS) - len(final["fp32_layers"]),
        "accuracy_vs_fp32": final["metrics"],
        "accuracy_typical_inputs": final["typical"],
        "within_tolerance": within,
        "attempts": [
            {**{k: a[k] for k in ("scheme", "calibration", "fp32_layers", "broken")}, "worst": -_rank(a)[1]}
            for a in attempts
        ],
    }
