"""The layers of an ncnn net as layerwise units: pnnx names its layers itself (convrelu_0, linear_8), so each is
found in the reference by order and shape instead of by exporter metadata.

The reference's tensors come in execution order, keyed by module path (PyTorch's leaf modules, or the fp32
graph's layers). Consecutive modules of one output shape form a stage (Conv, BatchNorm, LeakyReLU: every
stage of vaekit's models changes the shape), as pnnx fuses them into one ncnn layer; each weighted ncnn layer
is matched to the next stage of its shape and compared with the stage's last module. Layers that write a
graph output are compared with that output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.runtimes.artifacts import ncnn_bin
from vaekit.runtimes.backends.ncnn_net import BLOBS, check_net
from vaekit.runtimes.base import ArtifactInfo
from vaekit.runtimes.proving.layerwise.mapping import Unit


def _stages(ref: dict[str, np.ndarray], outputs: tuple[str, ...]) -> list[list[str]]:
    """Module keys in execution order, consecutive ones of one output shape grouped."""
    stages: list[list[str]] = []
    for key, value in ref.items():
        if key in outputs:
            continue
        if stages and ref[stages[-1][-1]].shape[1:] == value.shape[1:]:
            stages[-1].append(key)
        else:
            stages.append([key])
    return stages


def ncnn_units(path: Path, info: ArtifactInfo, ref: dict[str, np.ndarray]) -> tuple[list[Unit], list[str]]:
    """The units of an ncnn net matched to the reference's modules, and a note for a layer that has no match."""
    names = dict(zip(BLOBS[info.role][1], ("mu", "log_var") if info.role == "encoder" else ("image",), strict=True))
    stages = _stages(ref, tuple(names.values()))
    units: list[Unit] = []
    notes: list[str] = []
    previous: tuple[str, ...] = ()
    for layer in check_net(path, ncnn_bin(path).read_bytes(), info):
        if layer.blob in names:
            units.append(Unit(names[layer.blob], f"output {names[layer.blob]}", layer.blob, layer.name, layer.kind,
                              previous, output=names[layer.blob]))  # fmt: skip
            continue
        if not layer.weighted:
            continue  # Input, Reshape, Split: no arithmetic of their own
        while stages and ref[stages[0][-1]].shape[1:] != layer.shape:
            stages.pop(0)  # a stage pnnx folded away (or one vaekit cannot place): skipped
        if not stages:
            notes.append(f"{layer.name} ({layer.kind}, {layer.shape}): no reference module of that shape")
            break
        stage = stages.pop(0)
        units.append(Unit(stage[-1], stage[-1], layer.blob, layer.name, layer.kind, previous, tuple(stage[:-1])))
        previous = (stage[-1],)
    return units, notes
