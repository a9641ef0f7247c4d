"""Writing ONNX graphs: metadata, the full checker, strict shape inference, one self-contained file.

Torch-free, so converters that run on a device (fp16, int8, build-engine) share it with the exporter.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes
from vaekit.runtimes.backends.onnxrt import graph_metadata, read_graph

PROTOBUF_LIMIT = 2**31 - 1  # one serialized proto; beyond it weights would have to go external


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        proto.metadata_props.add(key=key, value=value)


def fp32_source(src: Path, target: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The fp32 vaekit graph a precision graph is made from, and its metadata; anything else is one line."""
    model = read_graph(src)
    meta = graph_metadata(model)
    if meta.get("precision", "fp32") != "fp32":
        raise VaekitError(f"{src.name} is already {meta['precision']}: {target} graphs are made from the fp32 graph")
    if meta.get("role") not in ("encoder", "decoder"):
        raise VaekitError(f"{src} is not a vaekit graph (no role in its metadata)")
    return model, meta


def finalize(proto: onnx.ModelProto, path: Path) -> None:
    """Check fully, infer shapes strictly, and write atomically as one self-contained file."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VaekitError(f"graph {path.name} fails the ONNX checker: {exc}") from None
    data = proto.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise VaekitError(f"{path.name} is {len(data) / 2**30:.1f} GiB: over protobuf's 2 GiB limit for one file")
    atomic_write_bytes(path, data)
