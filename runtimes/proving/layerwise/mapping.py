"""Which PyTorch module each ONNX node came from, read from the dynamo exporter's node metadata.

torch.onnx (dynamo) stamps every node with `pkg.torch.onnx.name_scopes`, the repr of a list: the module
path of every enclosing `nn.Module` from the root ("" first, full dotted paths), then the FX node's name,
e.g. ['', 'model.decoder', 'model.decoder.1', '_native_batch_norm_legit_no_training']. Its `namespace` and
`pkg.torch.onnx.class_hierarchy` say the same with classes. A BatchNorm folded into a convolution by the
optimizer keeps the BatchNorm's scope: that node produces the BatchNorm's output. Nodes without metadata
(the CPU rewrites, the quantizer's Q/DQ pairs, the fp16 converter's Casts) are placed by rule: a node
whose output tensor the fp32 graph names belongs to that tensor's layer; a Q/DQ or Cast belongs to the
layer whose output it converts; anything else to the layer it feeds. A layer's output is the last tensor
it writes in graph order, i.e. the value the next layer reads (after its own Q/DQ or Cast).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

SCOPES = "pkg.torch.onnx.name_scopes"
WRAPPER = "model."  # export/onnx.py's EncoderGraph/DecoderGraph hold the VAE as `self.model`
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})
# Ops that only move values: never the node a layer is named by while it has one that computes.
DATA_MOVEMENT = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "DepthToSpace", "SpaceToDepth", "Concat", "Identity"}
)
WEIGHT_NAME = re.compile(r"^model\.(.+)\.(?:weight|bias)")  # the exporter names initializers by parameter


@dataclass(frozen=True)
class Unit:
    """One comparable layer of a graph."""

    key: str  # what the reference is looked up by: a module path ("decoder.1") or a graph output ("image")
    module: str  # what reports show: the module path, or "output image" for an op outside any module
    tensor: str  # the tensor the next layer reads
    onnx_node: str  # the node that computes it (the layer's last node that is not a conversion or a reshape)
    op_type: str
    inputs: tuple[str, ...]  # keys of the layers it reads; empty: it reads only the graph input
    fused: tuple[str, ...] = ()  # other modules whose weights its nodes carry (a BatchNorm's Conv)
    output: str = ""  # the graph output it writes, if any


def scope_of(node: onnx.NodeProto) -> str | None:
    """The module path a node was exported from ("" for an op outside any module); None without metadata."""
    props = {p.key: p.value for p in node.metadata_props}
    if SCOPES not in props:
        return None
    try:
        scopes = ast.literal_eval(props[SCOPES])
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2:
        return None  # the exporter found no module stack for this node
    path = str(scopes[-2])
    return path.removeprefix(WRAPPER) if path.startswith(WRAPPER) else path


def has_module_metadata(model: onnx.ModelProto) -> bool:
    return any(scope_of(n) is not None for n in model.graph.node)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.outputs = [o.name for o in model.graph.output]
        self.initializers = {t.name for t in model.graph.initializer}
        self.producer = {t: i for i, n in enumerate(self.nodes) for t in n.output if t}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for t in n.input:
                self.consumers[t].append(i)

    def written_output(self, i: int) -> str | None:
        """The graph output node i writes, directly or through conversions."""
        stack = list(self.nodes[i].output)
        while stack:
            t = stack.pop()
            if t in self.outputs:
                return t
            stack += [
                o for c in self.consumers[t] if self.nodes[c].op_type in CONVERSIONS for o in self.nodes[c].output
            ]
        return None

    def fed_layer(self, i: int, keys: dict[int, str | None]) -> str | None:
        """The layer node i feeds: its first consumer past any conversions."""
        stack = list(self.nodes[i].output)
        while stack:
            for c in self.consumers[stack.pop(0)]:
                if self.nodes[c].op_type in CONVERSIONS and c not in keys:
                    stack += list(self.nodes[c].output)
                elif c in keys:
                    return keys[c]
        return None


def map_nodes(model: onnx.ModelProto, names: dict[str, str] | None = None) -> dict[int, str | None]:
    """Node index -> layer key (None: an op outside any layer, such as the encoder's flatten).

    names: tensor -> key of the fp32 graph this one was made from, for nodes that lost their metadata.
    """
    g = _Graph(model)
    keys: dict[int, str | None] = {}
    for i, node in enumerate(g.nodes):
        scope = scope_of(node)
        if scope is not None:
            keys[i] = scope or g.written_output(i)
        elif names and (hit := next((names[t] for t in node.output if t in names), None)):
            keys[i] = hit
    for i in reversed(range(len(g.nodes))):  # consumers come later in graph order: they are placed first
        if i not in keys and g.nodes[i].op_type not in CONVERSIONS:
            keys[i] = g.written_output(i) or g.fed_layer(i, keys)
    for i, node in enumerate(g.nodes):
        if i not in keys:
            src = g.producer.get(node.input[0]) if node.input else None
            keys[i] = keys.get(src) if src is not None else g.fed_layer(i, keys)
    return keys


def tensor_keys(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor -> layer key for every tensor a layer writes: the name source for a graph made from this one."""
    nodes = list(model.graph.node)
    return {t: key for i, key in map_nodes(model).items() if key for t in nodes[i].output}


def _layer_inputs(g: _Graph, keys: dict[int, str | None], key: str, members: list[int]) -> tuple[str, ...]:
    found: list[str] = []
    seen: set[int] = set()
    stack = [t for i in members for t in g.nodes[i].input if t and t not in g.initializers]
    while stack:
        src = g.producer.get(stack.pop())
        if src is None or src in seen:
            continue
        seen.add(src)
        owner = keys.get(src)
        if owner is None:
            stack += [t for t in g.nodes[src].input if t and t not in g.initializers]
        elif owner != key and owner not in found:
            found.append(owner)
    return tuple(found)


def _named_node(g: _Graph, members: list[int]) -> onnx.NodeProto:
    computing = [i for i in members if g.nodes[i].op_type not in CONVERSIONS | DATA_MOVEMENT | {"Constant"}]
    return g.nodes[(computing or members)[-1]]


def units(model: onnx.ModelProto, names: dict[str, str] | None = None) -> list[Unit]:
    """The layers of a graph in the order their outputs are computed (empty: no node carries module metadata
    and there is no fp32 graph to name its tensors)."""
    if not has_module_metadata(model) and not names:
        return []
    g = _Graph(model)
    keys = map_nodes(model, names)
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in sorted(keys.items()):
        if key:
            members[key].append(i)
    found = []
    for key, idx in sorted(members.items(), key=lambda kv: kv[1][-1]):
        tensor = g.nodes[idx[-1]].output[0]
        node = _named_node(g, idx)
        weights = {
            m.group(1) for i in idx for t in g.nodes[i].input if (m := WEIGHT_NAME.match(t)) and t in g.initializers
        }
        found.append(
            Unit(
                key=key,
                module=f"output {key}" if key in g.outputs and not any(scope_of(g.nodes[i]) for i in idx) else key,
                tensor=tensor,
                onnx_node=node.name,
                op_type=node.op_type,
                inputs=_layer_inputs(g, keys, key, idx),
                fused=tuple(sorted(weights - {key})),
                output=tensor if tensor in g.outputs else "",
            )
        )
    return found


def output_units(model: onnx.ModelProto) -> list[Unit]:
    """One unit per graph output, for a graph whose layers cannot be named (not exported by vaekit)."""
    g = _Graph(model)
    found = []
    for name in g.outputs:
        src = g.producer.get(name)
        node = g.nodes[src] if src is not None else None
        op = node.op_type if node is not None else ""
        found.append(Unit(name, f"output {name}", name, node.name if node else "", op, (), (), name))
    return found


def follow_qdq(model: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """Tensor -> the tensor its readers see in a Q/DQ graph: through QuantizeLinear -> DequantizeLinear pairs."""
    g = _Graph(model)

    def dequantized(t: str) -> str | None:
        q = next((c for c in g.consumers[t] if g.nodes[c].op_type == "QuantizeLinear"), None)
        if q is None:
            return None
        dq = next((c for c in g.consumers[g.nodes[q].output[0]] if g.nodes[c].op_type == "DequantizeLinear"), None)
        return None if dq is None else g.nodes[dq].output[0]

    found = {}
    for tensor in tensors:
        seen = tensor
        while (nxt := dequantized(seen)) is not None:
            seen = nxt
        found[tensor] = seen
    return found


def node_units(model: onnx.ModelProto) -> list[Unit]:
    """Every computing node as its own unit, keyed by node name: the precision budget's granularity
    (fp16 block lists and int8 exclusion lists name nodes)."""
    g = _Graph(model)
    keys: dict[int, str | None] = {
        i: (None if n.op_type in CONVERSIONS or n.op_type == "Constant" else n.name) for i, n in enumerate(g.nodes)
    }
    found = []
    for i, key in keys.items():
        if key is None:
            continue
        node = g.nodes[i]
        tensor = node.output[0]
        found.append(
            Unit(
                key,
                key,
                tensor,
                key,
                node.op_type,
                _layer_inputs(g, keys, key, [i]),
                (),
                tensor if tensor in g.outputs else "",
            )
        )
    return found
