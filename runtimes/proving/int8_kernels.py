"""What an int8 graph computes on a CPU without VNNI: a numpy model of the u8 x s8 kernels, run on any machine.

Without VNNI (AVX2, and AVX-512 before VNNI) ONNX Runtime's int8 convolutions and GEMMs multiply with
`vpmaddubsw`: unsigned 8-bit activations (signed ones shifted by +128) times signed 8-bit weights, two
neighbouring products summed into a *saturating int16* before the int32 accumulation. VNNI/AMX (`vpdpbusd`)
and ARM64 accumulate in int32 directly. A pair of products can reach 2 x 255 x 127 = 64770 > 32767, so the
same graph computes something else there; with weights in 7 bits (|w| <= 64) no pair can pass 2 x 255 x 64 =
32640, which `saturation_free` checks from the weights alone.

`simulate` runs a Q/DQ graph with every quantized Conv and Gemm computed the non-VNNI way (neighbouring input
channels of one kernel tap paired, as the NHWC kernels lay K out; a Gemm pairs neighbouring features) and
everything else as ONNX's reference evaluator computes it, so an export can judge the graph an AVX2 CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

INT16_MAX, INT16_MIN = 32767, -32768
U8_MAX = 255
SAFE_WEIGHT = 64  # |w| <= 64: 2 x 255 x 64 = 32640 fits an int16, whatever the activations
DOMAIN = "vaekit.int8_kernels"
QUANTIZED_OPS = ("Conv", "Gemm")


@dataclass
class Saturation:
    """Pair sums that left the int16 range, per node: what `simulate` found on its inputs."""

    pairs: dict[str, int] = field(default_factory=dict)  # node -> pair sums evaluated (those that could saturate)
    saturated: dict[str, int] = field(default_factory=dict)  # node -> pair sums clipped

    def add(self, node: str, pairs: int, saturated: int) -> None:
        self.pairs[node] = self.pairs.get(node, 0) + pairs
        self.saturated[node] = self.saturated.get(node, 0) + saturated

    @property
    def total(self) -> int:
        return sum(self.saturated.values())


def as_unsigned(q: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, int]:
    """The kernel's u8 view of quantized activations and the offset it subtracts again afterwards."""
    if q.dtype == np.int8:  # signed activations are shifted into u8; the shift is undone exactly later
        return q.astype(np.int32) + 128, 128 + int(zero_point)
    return q.astype(np.int32), int(zero_point)


def saturating_matmul(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, int, int]:
    """a (M, K) in [0, 255] times w (N, K) int8 with neighbouring products summed in a saturating int16.

    Returns the int32-exact result with each clipped pair corrected, the pair sums that could saturate
    (evaluated), and how many did. Only pairs whose bound passes the int16 range are evaluated."""
    if a.shape[1] % 2:
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    exact = (a.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64)  # exact: |sum| < 2**53
    a0, a1 = a[:, 0::2], a[:, 1::2]
    w0, w1 = w[:, 0::2].astype(np.int32), w[:, 1::2].astype(np.int32)
    top0, top1 = a0.max(axis=0, initial=0), a1.max(axis=0, initial=0)
    bound = np.maximum(
        np.maximum(w0, 0) * top0 + np.maximum(w1, 0) * top1, -np.minimum(w0, 0) * top0 - np.minimum(w1, 0) * top1
    )
    evaluated = clipped = 0
    for n in np.flatnonzero((bound > INT16_MAX).any(axis=1)):
        cols = np.flatnonzero(bound[n] > INT16_MAX)
        s = a0[:, cols] * w0[n, cols] + a1[:, cols] * w1[n, cols]  # (M, pairs) int32
        over = np.clip(s, INT16_MIN, INT16_MAX) - s
        exact[:, n] += over.sum(axis=1)
        evaluated += s.size
        clipped += int(np.count_nonzero(over))
    return exact, evaluated, clipped


def _patches(x: np.ndarray, kernel: tuple[int, int], strides: list[int], pads: list[int], fill: int) -> np.ndarray:
    """(N, C, H, W) -> (N * Ho * Wo, kh * kw * C): K ordered tap by tap, channels innermost (NHWC)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    ho = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    taps = [
        xp[:, :, i : i + strides[0] * ho : strides[0], j : j + strides[1] * wo : strides[1]]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=1).transpose(0, 3, 4, 1, 2).reshape(n * ho * wo, kh * kw * c), (n, ho, wo)  # type: ignore[return-value]


def _dequantized(acc: np.ndarray, a_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = acc.astype(np.float64) * (float(a_scale) * w_scale.astype(np.float64).reshape(1, -1))
    return (y + (0.0 if bias is None else bias.reshape(1, -1))).astype(np.float32)


def _check_int8_weights(w_q: np.ndarray, w_zero: np.ndarray) -> None:
    if w_q.dtype != np.int8 or np.any(w_zero):
        raise ValueError("the u8 x s8 kernel model takes symmetric int8 weights")


Six = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _six(inputs: tuple[np.ndarray, ...]) -> Six:
    """(activation q, scale, zero point, weight q, scale, zero point) of a fused node's inputs."""
    a, b, c, d, e, f = inputs[:6]
    return a, b, c, d, e, f


def _sat_conv(
    found: Saturation, node: str, q: Six, bias: np.ndarray | None, strides: list[int], pads: list[int]
) -> np.ndarray:
    x_q, x_s, x_z, w_q, w_s, w_z = q
    _check_int8_weights(w_q, w_z)
    a, offset = as_unsigned(x_q, x_z)
    cout, _, kh, kw = w_q.shape
    cols, (n, ho, wo) = _patches(a, (kh, kw), strides, pads, offset)
    w = w_q.transpose(0, 2, 3, 1).reshape(cout, -1)  # the patches' K order: tap by tap, channels innermost
    acc, evaluated, clipped = saturating_matmul(cols, w)
    acc -= offset * w.astype(np.int64).sum(axis=1)  # undo the u8 shift exactly, as the kernel does
    found.add(node, evaluated, clipped)
    y = _dequantized(acc, x_s, w_s, bias)
    return y.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2).copy()


def _sat_gemm(found: Saturation, node: str, q: Six, bias: np.ndarray | None, trans_b: int) -> np.ndarray:
    a_q, a_s, a_z, w_q, w_s, w_z = q
    _check_int8_weights(w_q, w_z)
    a, offset = as_unsigned(a_q, a_z)
    w = w_q if trans_b else w_q.T  # (N, K)
    acc, evaluated, clipped = saturating_matmul(a.reshape(len(a), -1), w)
    acc -= offset * w.astype(np.int64).sum(axis=1)
    found.add(node, evaluated, clipped)
    scale = np.broadcast_to(np.asarray(w_s, np.float32).reshape(-1), (w.shape[0],))
    return _dequantized(acc, a_s, scale, bias)


def _ops(found: Saturation) -> list[type]:
    """Reference-evaluator ops for the fused nodes; `_run` takes the node's attributes by name."""
    from onnx.reference.op_run import OpRun

    class SatConv(OpRun):
        op_domain = DOMAIN

        def _run(
            self, *inputs: Any, strides: Any = None, pads: Any = None, dilations: Any = None, group: Any = None
        ) -> Any:
            if (group or 1) != 1 or any(d != 1 for d in (dilations or [1, 1])):
                raise ValueError("the u8 x s8 kernel model covers ungrouped, undilated convolutions")
            bias = inputs[6] if len(inputs) > 6 else None
            return (
                _sat_conv(
                    found, self.onnx_node.name, _six(inputs), bias, list(strides or [1, 1]), list(pads or [0] * 4)
                ),
            )

    class SatGemm(OpRun):
        op_domain = DOMAIN

        def _run(self, *inputs: Any, transB: Any = 0, transA: Any = 0, alpha: Any = 1.0, beta: Any = 1.0) -> Any:
            bias = inputs[6] if len(inputs) > 6 else None
            return (_sat_gemm(found, self.onnx_node.name, _six(inputs), bias, int(transB)),)

    return [SatConv, SatGemm]


def fused(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv/Gemm nodes ONNX Runtime's CPU provider runs as int8 kernels: a DequantizeLinear on the
    activation and one on the weight, each read by this node alone, and the output requantized. A shared DQ
    (the encoder's fc_mu and fc_var read one) leaves the node in float: measured on ONNX Runtime's AVX2 kernels."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2 or not _plain_gemm(node):
            continue
        dq = [producers.get(i) for i in node.input[:2]]
        if any(d is None or d.op_type != "DequantizeLinear" or len(readers[d.output[0]]) != 1 for d in dq):
            continue
        if [r.op_type for r in readers.get(node.output[0], [])] == ["QuantizeLinear"]:
            found.append(node)
    return found


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """A Conv, or a Gemm as the exporter writes it (A not transposed, unit alpha and beta)."""
    from onnx import helper

    defaults = {"transA": 0, "alpha": 1.0, "beta": 1.0}
    return node.op_type != "Gemm" or all(
        helper.get_attribute_value(a) == defaults[a.name] for a in node.attribute if a.name in defaults
    )


def _kernel_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model where each fused Conv/Gemm runs the kernel model, its DQ pairs' inputs as its own."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    producers = {o: n for n in out.graph.node for o in n.output}
    kernels = {n.name for n in fused(out)}
    nodes = []
    for node in out.graph.node:
        if node.name not in kernels:
            nodes.append(node)
            continue
        feeds = [f for i in node.input[:2] for f in _dq_inputs(producers[i], out)]
        skip = ("kernel_shape", "auto_pad")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in skip}
        kind = "SatConv" if node.op_type == "Conv" else "SatGemm"
        inputs = feeds + list(node.input[2:3])
        nodes.append(helper.make_node(kind, inputs, list(node.output), node.name, domain=DOMAIN, **attrs))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for opset in out.opset_import:  # the reference evaluator's Q/DQ start at opset 19 (same int8 semantics)
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


def _dq_inputs(dq: onnx.NodeProto, model: onnx.ModelProto) -> list[str]:
    """A DequantizeLinear's (q, scale, zero point), the zero point made explicit where it was left out."""
    from onnx import numpy_helper

    q, scale, *rest = dq.input
    if rest and rest[0]:
        return [q, scale, rest[0]]
    name = f"{dq.name}_zero_point"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int8), name))
    return [q, scale, name]


def simulate(model: onnx.ModelProto, feed: np.ndarray, batch: int = 64) -> tuple[list[np.ndarray], Saturation]:
    """The outputs an AVX2 (non-VNNI) CPU computes for this Q/DQ graph, and where its pair sums saturated."""
    from onnx.reference import ReferenceEvaluator

    found = Saturation()
    session = ReferenceEvaluator(_kernel_graph(model), new_ops=_ops(found))
    name = model.graph.input[0].name
    parts: list[Any] = [session.run(None, {name: feed[i : i + batch]}) for i in range(0, len(feed), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))], found


def saturation_free(model: onnx.ModelProto) -> bool:
    """Whether no pair sum can leave the int16 range on any input: every quantized weight within +-64."""
    from onnx import numpy_helper

    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if node.op_type in QUANTIZED_OPS and len(node.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            w = numpy_helper.to_array(inits[dq.input[0]])
            if w.dtype == np.int8 and np.abs(w.astype(np.int32)).max(initial=0) > SAFE_WEIGHT:
                return False
    return True
