"""Layerwise parity: the first layer of an artifact that computes something other than the reference.

Layers are PyTorch modules, found in the graph by the exporter's node metadata (`mapping`); the
candidate's tensors come from its runtime (`capture`), the reference's from PyTorch forward hooks
(`pyt.capture_modules`) or, without a checkpoint, from the fp32 ONNX graph beside the artifact (ONNX
Runtime CPU, the graph as stored). How a layer is judged is stated once, in `judge`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

import numpy as np

from vaekit.data import to_float
from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import INPUT_NAME, NCNN_PARAM_SUFFIX, ROLES, Role, load_inputs, onnx_name
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.proving.layerwise.capture import Tensors, capture_for, graph_source, run_marked
from vaekit.runtimes.proving.layerwise.judge import (
    GROWTH_FACTOR,
    NOISE_FRACTION,
    LayerResult,
    compare,
    first_divergence,
    groups_for,
)
from vaekit.runtimes.proving.layerwise.mapping import output_units, scope_of, tensor_keys, units
from vaekit.runtimes.registry import Backend, backend_for, runnable_backend

if TYPE_CHECKING:
    import onnx

NEEDS_EXPORT = (
    "layer mapping needs a vaekit export: {name} carries no torch.onnx node metadata; compared graph outputs only"
)
Reference: TypeAlias = Path | str | Encoder | Decoder | None  # or a PyTorch VAE in memory
TABLE_COLUMNS = ("layer", "op", "onnx node", "max abs", "p99 abs", "cosine", "growth", "tolerance", "")


@dataclass
class LayerwiseReport:
    COLUMNS: ClassVar[tuple[str, ...]] = TABLE_COLUMNS  # the header of rows()
    graph: Role
    artifact: str
    runtime: str
    reference: str
    precision: str
    batch: int
    layers: list[LayerResult] = field(default_factory=list)
    first_divergence: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and any(layer.metrics for layer in self.layers)

    def summary(self) -> str:
        """One line: the first divergence, or that every layer is within tolerance."""
        fd = self.first_divergence
        if fd is not None:
            fused = f", with {'+'.join(fd['fused'])} fused" if fd["fused"] else ""
            where = f"{fd['graph']} layer {fd['module']} ({fd['op_type']} {fd['onnx_node']}{fused})"
            return f"first divergence: {where}: {fd['detail']}"
        compared = [layer for layer in self.layers if layer.metrics]
        if not compared:
            return f"layerwise {self.graph}: nothing compared ({'; '.join(self.notes) or 'no layers'})"
        worst = max(compared, key=lambda layer: layer.metrics["rel"])
        return (
            f"layerwise {self.graph}: {len(compared)} layer{'s' * (len(compared) > 1)} compared, all within the "
            f"{self.precision} tolerance; "
            f"largest relative error at {worst.module}: max abs {worst.metrics['max_abs']:.3g}"
        )

    def rows(self) -> list[tuple[str, ...]]:
        """The terminal table, a row per layer under COLUMNS; the last cell: what is wrong, or why not compared."""
        fd = self.first_divergence or {}
        found: list[tuple[str, ...]] = []
        for layer in self.layers:
            m, tol = layer.metrics, layer.tolerance
            limit = f"{tol['max_abs']:.2g}" if tol.get("max_abs") else f"cos {tol.get('min_cosine') or '-'}"
            first = (layer.module, layer.onnx_node) == (fd.get("module"), fd.get("onnx_node"))
            mark = "<- first divergence" if first else ""
            cells = (f"{m['max_abs']:.3g}", f"{m['p99_abs']:.3g}", f"{m['min_cosine']:.6f}") if m else ("-", "-", "-")
            growth = "-" if layer.growth is None else f"{layer.growth:.3g}x"
            status = "NaN/Inf" if layer.nonfinite else mark or layer.note
            found.append((layer.module, layer.op_type, layer.onnx_node, *cells, growth, limit if m else "-", status))
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "graph": self.graph,
            "artifact": self.artifact,
            "runtime": self.runtime,
            "reference": self.reference,
            "precision": self.precision,
            "batch": self.batch,
            "first_divergence": self.first_divergence,
            "layers": [asdict(layer) for layer in self.layers],
            "notes": self.notes,
            "rules": {
                "growth_factor": GROWTH_FACTOR,
                "noise_fraction": NOISE_FRACTION,
                "max_abs": "row x max(1, max|ref|)",
            },
        }


def role_of(model: onnx.ModelProto) -> Role:
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = [i.name for i in model.graph.input]
    role = meta.get("role") or next((r for r in ROLES if [INPUT_NAME[r]] == inputs), None)
    if role not in ROLES:
        raise VaekitError(f"cannot tell whether the graph is an encoder or a decoder (inputs {inputs})")
    return cast(Role, role)


def _onnx_reference(fp32: Path, role: Role, x: np.ndarray) -> Tensors:
    """The fp32 graph's tensor for each of its layers, keyed like PyTorch's (module path, output name)."""
    from vaekit.runtimes.proving.layerwise.capture import ort_session, runnable_model

    model, _ = runnable_model(fp32, "cpu", rewrite=False)
    found = units(model) or output_units(model)
    got = run_marked(model, [u.tensor for u in found], x, ort_session(fp32, "cpu", None))
    return {
        **{u.key: got[u.tensor] for u in found if u.tensor in got},
        **{o.name: got[o.name] for o in model.graph.output},
    }


def _reference(reference: Reference, path: Path, role: Role, x: np.ndarray) -> tuple[Tensors, str]:
    from vaekit.runtimes.backends import pyt

    if isinstance(reference, Path | str):
        return pyt.capture_checkpoint(Path(reference), role, x), f"pytorch {Path(reference).name} (fp32, cpu)"
    if reference is not None:
        return pyt.capture_modules(reference, role, x), "pytorch (in memory, fp32)"
    fp32 = path.parent / onnx_name(role)
    if not fp32.is_file():
        raise VaekitError(f"layerwise needs a reference: pass the checkpoint (no {fp32.name} beside {path.name})")
    return _onnx_reference(fp32, role, x), f"{fp32.name} on onnxruntime-cpu (as stored)"


def compare_layers(
    artifact: Path,
    reference: Reference = None,
    inputs: np.ndarray | None = None,
    device: str = "cpu",
    runtime: str | None = None,
    **options: Any,
) -> LayerwiseReport:
    """Compare every layer of `artifact` run on `runtime`/`device` against the reference, and name the first
    layer that diverges.

    reference: a checkpoint (run directory or weights), a PyTorch Encoder/Decoder or model already in memory,
    or None for the fp32 ONNX graph beside the artifact. inputs: images (encoder) or latents (decoder),
    float32; default the parity inputs stored beside the artifact, up to its max batch. options: the
    backend's own (threads, rewrite for onnxrt).
    """
    from vaekit.runtimes.backends.onnxrt import read_graph

    artifact = Path(artifact)
    backend = backend_for(artifact, runtime)
    device = backend.check_device(device)
    if artifact.name.endswith(NCNN_PARAM_SUFFIX):
        return _compare_ncnn(artifact, reference, inputs, backend, device, options)
    source = graph_source(artifact)
    model = read_graph(source)  # one line for a missing, corrupt or unsafe file
    role = role_of(model)
    try:
        info = backend.describe(artifact)
        precision, value_range, max_batch = info.precision, info.value_range, info.max_batch
    except VaekitError:  # a graph not exported by vaekit
        precision, value_range, max_batch = "fp32", None, 1 << 16
    if runtime is None and backend.graph_limits:  # a bf16 graph: the first backend that runs it here
        backend = runnable_backend(artifact, device, precision) or backend
    precision = options.get("precision") or precision  # a runtime-side precision (OpenVINO's hint) is judged as such
    x = _inputs(artifact, role, inputs, value_range, max_batch)
    notes: list[str] = []
    sibling = source.parent / onnx_name(role)
    names = None
    if sibling.is_file() and sibling != source and any(scope_of(n) is None for n in model.graph.node):
        names = tensor_keys(read_graph(sibling))  # names for the nodes made after export
    found = units(model, names)
    if not found:
        notes.append(NEEDS_EXPORT.format(name=source.name))
        found = output_units(model)
    ref, ref_label = _reference(reference, source, role, x)
    capture, why = capture_for(backend)
    if capture is None:
        notes.append(f"{why}; compared graph outputs only")
        found = [u for u in found if u.output] if found else output_units(model)
        got = _outputs_via_interface(backend, artifact, role, device, x, options)
    else:
        got = capture(artifact, device, [u.tensor for u in found], x, **options)
    results = compare(found, ref, got, groups_for(precision, device, role, x), value_range)
    return LayerwiseReport(
        graph=role,
        artifact=artifact.name,
        runtime=f"{backend.label}-{device}-{precision}",
        reference=ref_label,
        precision=precision,
        batch=len(x),
        layers=results,
        first_divergence=first_divergence(role, results),
        notes=notes,
    )


def _compare_ncnn(
    artifact: Path, reference: Reference, inputs: np.ndarray | None, backend: Backend, device: str, options: Any
) -> LayerwiseReport:
    """An ncnn net, blob by blob (ncnn exposes every one), against the reference's modules matched by shape."""
    from vaekit.runtimes.proving.layerwise.ncnn_units import ncnn_units

    info = backend.describe(artifact)
    x = _inputs(artifact, info.role, inputs, info.value_range, info.max_batch)
    ref, ref_label = _reference(reference, artifact, info.role, x)
    found, notes = ncnn_units(artifact, info, ref)
    capture, _ = capture_for(backend)
    assert capture is not None  # the ncnn backend defines capture_tensors
    got = capture(artifact, device, [u.tensor for u in found], x, **options)
    results = compare(found, ref, got, groups_for(info.precision, device, info.role, x), info.value_range)
    return LayerwiseReport(
        graph=info.role,
        artifact=artifact.name,
        runtime=f"{backend.label}-{device}-{info.precision}",
        reference=ref_label,
        precision=info.precision,
        batch=len(x),
        layers=results,
        first_divergence=first_divergence(info.role, results),
        notes=notes,
    )


def _inputs(
    artifact: Path, role: Role, inputs: np.ndarray | None, value_range: tuple[float, float] | None, max_batch: int
) -> np.ndarray:
    if inputs is None:
        if value_range is None:
            raise VaekitError(f"{artifact.name} is not a vaekit artifact: pass the inputs to compare on")
        images, z = load_inputs(artifact.parent)
        inputs = to_float(images, value_range) if role == "encoder" else z
    x = np.ascontiguousarray(inputs[:max_batch], dtype=np.float32)
    if not len(x) or not np.isfinite(x).all():
        raise VaekitError("layerwise inputs must be a non-empty batch of finite float32 values")
    return x


def _outputs_via_interface(
    backend: Backend, artifact: Path, role: Role, device: str, x: np.ndarray, options: dict[str, Any]
) -> Tensors:
    runner = backend.load(artifact, role, device, **options)
    if isinstance(runner, Encoder):
        mu, log_var = runner.encode(x)
        return {"mu": mu, "log_var": log_var}
    return {"image": runner.decode(x)}
