"""Exact graph rewrites for ONNX Runtime's CPU provider (applied in memory; the file is never changed).

ONNX Runtime's CPU ConvTranspose runs one small GEMM + col2im per image and has no int8 kernel, while its
Conv kernels are batched, NCHWc-blocked in fp32 and VNNI-backed in int8. So the decoder's first Gemm and
2x2 upsample fold into one Gemm, and stride-2 upsamples become phase convolutions + DepthToSpace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

# Output parity of a stride-2, k3, pad-1, output-padding-1 ConvTranspose -> ((input offset, kernel tap), ...):
# even outputs see one tap of one input pixel, odd outputs two taps of two neighbours.
PHASE_TAPS = {0: ((0, 1),), 1: ((0, 2), (1, 0))}
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "Softplus"})


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Just enough graph surgery for the rewrites below: weights by name, consumers, splice, prune."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}

    def float_weight(self, name: str) -> np.ndarray | None:
        w = self.weights.get(name)
        return w if w is not None and w.dtype == np.float32 else None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def only_consumer(self, tensor: str, op_types: frozenset[str] | set[str]) -> onnx.NodeProto | None:
        found = self.consumers(tensor)
        if len(found) == 1 and found[0].op_type in op_types and tensor not in self.outputs:
            return found[0]
        return None

    def add(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.weights[name] = value
        return name

    def splice(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        """Replace the nodes `old` (matched by output name: protobuf hands out copies) with `new` in place."""
        gone = {o.output[0] for o in old}
        nodes = list(self.graph.node)
        at = next(i for i, n in enumerate(nodes) if n.output[0] == old[0].output[0])
        kept = [n for n in nodes[:at] if n.output[0] not in gone]
        kept += new + [n for n in nodes[at:] if n.output[0] not in gone]
        del self.graph.node[:]
        self.graph.node.extend(kept)

    def prune(self) -> None:
        used = {i for n in self.graph.node for i in n.input}
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.value_info[:]  # stale shapes; ORT and the checker infer them again


def conv_transpose_numpy(x: np.ndarray, w: np.ndarray, stride: int, pads: list[int], out_pad: list[int]) -> np.ndarray:
    """Reference ConvTranspose (group 1, dilation 1) in x's dtype: x (N, Cin, H, W), w (Cin, Cout, kh, kw)."""
    n, _, h, wd = x.shape
    _, cout, kh, kw = w.shape
    full = np.zeros((n, cout, (h - 1) * stride + kh + out_pad[0], (wd - 1) * stride + kw + out_pad[1]), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            tap = np.tensordot(x, w[:, :, ky, kx], axes=([1], [0])).transpose(0, 3, 1, 2)  # BLAS, not einsum
            full[:, :, ky : ky + (h - 1) * stride + 1 : stride, kx : kx + (wd - 1) * stride + 1 : stride] += tap
    oh, ow = full.shape[2] - pads[0] - pads[2], full.shape[3] - pads[1] - pads[3]
    return full[:, :, pads[0] : pads[0] + oh, pads[1] : pads[1] + ow]


def _fold_linear_upsample(g: _Graph) -> list[str]:
    """Gemm -> Reshape -> ConvTranspose with nothing between is one linear map: one Gemm, when that is less work.

    The decoder's first upsampling of a 2x2 map costs 9x the MACs of the Gemm that feeds it; composed,
    both become latent_dim x (C*H*W) multiply-adds.
    """
    from onnx import helper

    done = []
    for gemm in [n for n in g.graph.node if n.op_type == "Gemm"]:
        a = _attrs(gemm)
        wg = g.float_weight(gemm.input[1]) if len(gemm.input) > 1 else None
        reshape = g.only_consumer(gemm.output[0], {"Reshape"})
        ct = g.only_consumer(reshape.output[0], {"ConvTranspose"}) if reshape is not None else None
        if (
            wg is None
            or reshape is None
            or ct is None
            or a.get("transA", 0)
            or a.get("alpha", 1.0) != 1
            or a.get("beta", 1.0) != 1
        ):
            continue
        shape, wc = g.weights.get(reshape.input[1]), g.float_weight(ct.input[1])
        ca = _attrs(ct)
        strides = ca.get("strides", [1, 1])
        if (
            shape is None
            or wc is None
            or len(shape) != 4
            or strides[0] != strides[1]
            or ca.get("group", 1) != 1
            or ca.get("dilations", [1, 1]) != [1, 1]
            or "output_shape" in ca
            or ca.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        ):
            continue
        w = wg if a.get("transB", 0) else wg.T  # (out_features, latent)
        k = w.shape[1]
        bg = g.float_weight(gemm.input[2]) if len(gemm.input) > 2 else None
        bc = g.float_weight(ct.input[2]) if len(ct.input) > 2 else None
        chw = tuple(int(d) for d in shape[1:])
        if int(np.prod(chw)) != w.shape[0]:
            continue
        args = (strides[0], list(ca.get("pads", [0, 0, 0, 0])), list(ca.get("output_padding", [0, 0])))
        basis = conv_transpose_numpy(np.ascontiguousarray(w.T).reshape(k, *chw), wc, *args)
        old_macs = w.size + int(np.prod(chw)) * wc.shape[1] * wc.shape[2] * wc.shape[3]
        if k * basis[0].size >= old_macs:
            continue
        bias = np.zeros((1, *basis.shape[1:]), np.float32)
        if bg is not None:
            bias = conv_transpose_numpy(bg.reshape(1, *chw), wc, *args)
        if bc is not None:
            bias = bias + bc.reshape(1, -1, 1, 1)
        name = gemm.name or gemm.output[0]
        w_new = g.add(f"{name}_upsample_w", basis.reshape(k, -1).T.astype(np.float32))
        b_new = g.add(f"{name}_upsample_b", bias.reshape(-1).astype(np.float32))
        s_new = g.add(f"{name}_upsample_shape", np.array([-1, *basis.shape[1:]], dtype=np.int64))
        flat = f"{name}_upsample_out"
        g.splice(
            [gemm, reshape, ct],
            [
                helper.make_node("Gemm", [gemm.input[0], w_new, b_new], [flat], name=f"{name}_upsample", transB=1),
                helper.make_node("Reshape", [flat, s_new], [ct.output[0]], name=f"{name}_upsample_reshape"),
            ],
        )
        done.append(f"{gemm.name} + {ct.name} -> one Gemm ({old_macs} -> {k * basis[0].size} MACs per image)")
    return done


def _is_upsample2(node: onnx.NodeProto) -> bool:
    a = _attrs(node)
    return (
        node.op_type == "ConvTranspose"
        and a.get("strides") == [2, 2]
        and a.get("kernel_shape") == [3, 3]
        and a.get("pads") == [1, 1, 1, 1]
        and a.get("output_padding") == [1, 1]
        and a.get("group", 1) == 1
        and a.get("dilations", [1, 1]) == [1, 1]
    )


def _is_same_conv3(node: onnx.NodeProto) -> bool:
    a = _attrs(node)
    return (
        node.op_type == "Conv"
        and a.get("kernel_shape") == [3, 3]
        and a.get("pads") == [1, 1, 1, 1]
        and a.get("strides", [1, 1]) == [1, 1]
        and a.get("group", 1) == 1
        and a.get("dilations", [1, 1]) == [1, 1]
    )


def phase_weights(w: np.ndarray, a: int, b: int) -> np.ndarray:
    """Conv kernel (Cout, Cin, 1|2, 1|2) computing output phase (row parity a, column parity b)."""
    k = np.zeros((w.shape[1], w.shape[0], len(PHASE_TAPS[a]), len(PHASE_TAPS[b])), np.float32)
    for dy, ky in PHASE_TAPS[a]:
        for dx, kx in PHASE_TAPS[b]:
            k[:, :, dy, dx] = w[:, :, ky, kx].T
    return k


def phases_2x2_weights(w: np.ndarray) -> np.ndarray:
    """One 2x2 kernel (4*Cout, Cin, 2, 2) computing all four phases, in DepthToSpace DCR channel order."""
    k = np.zeros((2, 2, w.shape[1], w.shape[0], 2, 2), np.float32)
    for a in (0, 1):
        for b in (0, 1):
            kp = phase_weights(w, a, b)
            k[a, b, :, :, : kp.shape[2], : kp.shape[3]] = kp
    return k.reshape(4 * w.shape[1], w.shape[0], 2, 2)


def phase_space_conv3(wf: np.ndarray) -> np.ndarray:
    """A same-padded 3x3 conv of the interleaved image as a 3x3 conv of its four phase planes (DCR order).

    Output pixel (2m+a, 2n+b) reads image row 2m+a+t-1 = phase (a+t-1) mod 2 at base row m + (a+t-1)//2.
    """
    cout, c = wf.shape[:2]
    k = np.zeros((2, 2, cout, 2, 2, c, 3, 3), np.float32)
    for a in (0, 1):
        for b in (0, 1):
            for ty in range(3):
                for tx in range(3):
                    ry, rx = a + ty - 1, b + tx - 1
                    k[a, b, :, ry % 2, rx % 2, :, ry // 2 + 1, rx // 2 + 1] += wf[:, :, ty, tx]
    return k.reshape(4 * cout, 4 * c, 3, 3)


def _phase_upsample(g: _Graph, every: bool) -> list[str]:
    """Stride-2 ConvTranspose -> convolutions computing the four output phases, interleaved by DepthToSpace.

    every=False: only an upsampling that feeds the output Conv (through an activation). That conv then runs
    on the phase planes (Cout*4 channels), which removes the largest interleave and keeps the small-Cout conv
    out of full resolution; the middle layers stay ConvTranspose, where the interleave costs more than it saves.
    every=True: all of them, as one 2x2 conv each (every activation then has one consumer, which ONNX Runtime
    needs to fuse symmetric int8 Q/DQ into QLinearConv) — the form quantization starts from.
    """
    from onnx import helper

    done = []
    for ct in [n for n in g.graph.node if _is_upsample2(n)]:
        w = g.float_weight(ct.input[1])
        if w is None:
            continue
        bias = g.float_weight(ct.input[2]) if len(ct.input) > 2 else None
        bias = np.zeros(w.shape[1], np.float32) if bias is None else bias
        act = g.only_consumer(ct.output[0], ELEMENTWISE)
        conv = g.only_consumer(act.output[0], {"Conv"}) if act is not None else None
        wf = g.float_weight(conv.input[1]) if conv is not None and _is_same_conv3(conv) else None
        if wf is None and not every:
            continue
        base = ct.name or ct.output[0]

        def activation(node: onnx.NodeProto, src: str, dst: str) -> onnx.NodeProto:
            return helper.make_node(node.op_type, [src], [dst], name=dst, **_attrs(node))

        new, old = [], [ct] + ([act] if act is not None else [])
        if every:
            raw = f"{base}_phases_raw"
            w2 = g.add(f"{base}_phases_w", phases_2x2_weights(w))
            b2 = g.add(f"{base}_phases_b", np.tile(bias, 4))
            new.append(
                helper.make_node("Conv", [ct.input[0], w2, b2], [raw], name=raw, kernel_shape=[2, 2], pads=[0, 0, 1, 1])
            )
            phases = raw if act is None else f"{base}_phases"
            if act is not None:
                new.append(activation(act, raw, phases))
        else:
            parts = []
            for a in (0, 1):
                for b in (0, 1):
                    tag = f"{base}_p{a}{b}"
                    kp = phase_weights(w, a, b)
                    wp, bp = g.add(f"{tag}_w", kp), g.add(f"{tag}_b", bias.copy())
                    kh, kw = kp.shape[2:]
                    pads = [0, 0, kh - 1, kw - 1]
                    new.append(
                        helper.make_node(
                            "Conv", [ct.input[0], wp, bp], [tag], name=tag, kernel_shape=[kh, kw], pads=pads
                        )
                    )
                    if act is not None:
                        new.append(activation(act, tag, f"{tag}_act"))
                        tag = f"{tag}_act"
                    parts.append(tag)
            phases = f"{base}_phases"
            new.append(helper.make_node("Concat", parts, [phases], name=phases, axis=1))
        interleave, out = phases, (act or ct).output[0]
        if wf is not None and conv is not None:
            bf = g.float_weight(conv.input[2]) if len(conv.input) > 2 else None
            bf = np.zeros(wf.shape[0], np.float32) if bf is None else bf
            wq, bq = g.add(f"{conv.name}_phase_w", phase_space_conv3(wf)), g.add(f"{conv.name}_phase_b", np.tile(bf, 4))
            interleave = f"{conv.name}_phase"
            new.append(
                helper.make_node(
                    "Conv", [phases, wq, bq], [interleave], name=interleave, kernel_shape=[3, 3], pads=[1] * 4
                )
            )
            old.append(conv)
            out = conv.output[0]
            post = g.only_consumer(out, ELEMENTWISE)
            if post is not None:  # the output activation is elementwise: apply it before the interleave
                new.append(activation(post, interleave, f"{interleave}_act"))
                interleave, out = f"{interleave}_act", post.output[0]
                old.append(post)
        new.append(
            helper.make_node("DepthToSpace", [interleave], [out], name=f"{base}_interleave", blocksize=2, mode="DCR")
        )
        g.splice(old, new)
        form = "2x2 conv" if every else "4 phase convs"
        done.append(
            f"{ct.name} -> {form} + DepthToSpace"
            + (f" (with {conv.name} in phase space)" if wf is not None and conv is not None else "")
        )
    return done


def rewrite_for_wasm(model: onnx.ModelProto) -> list[str]:
    """The exact rewrites that pay off in ONNX Runtime Web's wasm build: the Gemm + upsample fold only.

    Compiled to WebAssembly the CPU provider has no NCHWc-blocked kernels, so the phase convolutions, which
    do 4x the multiply-adds of the ConvTranspose they replace, cost more there than they save (the 64x64
    decoder in Chromium: 3.0 ms with the fold alone, 4.2 ms with every CPU rewrite, 5.2 ms with none).
    """
    g = _Graph(model)
    done = _fold_linear_upsample(g)
    if done:
        g.prune()
    return done


def rewrite_for_cpu(model: onnx.ModelProto, every_upsample: bool = False) -> list[str]:
    """Apply the exact CPU rewrites to `model` in place; returns what changed (empty: nothing applied).

    Only float32 weights stored inside the graph are touched, so fp16 and Q/DQ int8 graphs pass unchanged.
    """
    g = _Graph(model)
    done = _fold_linear_upsample(g) + _phase_upsample(g, every_upsample)
    if done:
        g.prune()
    return done
