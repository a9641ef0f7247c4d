"""One registry entry per runtime: how to load an artifact, how to describe it without running it, and
whether it can run here (with the reason when not). Nothing outside a backend branches on its name.

Each backend module provides `load(path, role, device, **options)`, `describe(path, role)`,
`status(device)` and, where it offers runtime-side precisions, `precision_status(device, precision)`; it
imports its own library lazily, so this module needs numpy alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

from vaekit.errors import VaekitError
from vaekit.fsutil import dir_lock
from vaekit.runtimes.artifacts import (
    CHECKPOINT_SUFFIX,
    ENGINE_SUFFIXES,
    NCNN_PARAM_SUFFIX,
    ONNX_SUFFIX,
    PTE_SUFFIX,
    Role,
    provenance,
    resolve,
)
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder


@dataclass(frozen=True)
class Backend:
    name: str  # as Polygraphy names them: pyt, onnxrt, trt, openvino, browser, executorch, ncnn
    label: str  # what reports show (ArtifactInfo.backend): pytorch, onnxruntime, tensorrt, openvino, ...
    module: str  # its file in runtimes/backends/ (a new runtime: one such file and one row here)
    suffixes: tuple[str, ...]  # artifact files it reads
    devices: tuple[str, ...]  # the first is its default
    summary: str
    runtime_precisions: tuple[str, ...] = ()  # precisions it can run an fp32 graph in (a runtime-side hint)
    graph_limits: tuple[tuple[str, str, str], ...] = ()  # (device, graph precision, why it cannot run it)

    def reads(self, path: Path) -> bool:
        return path.name.lower().endswith(self.suffixes)

    @property
    def import_path(self) -> str:
        return f"{__package__}.backends.{self.module}"

    def _impl(self) -> ModuleType:
        return importlib.import_module(self.import_path)

    def check_device(self, device: str) -> str:
        """The device this backend runs on for `device` ("" = its default); an unknown one is one line."""
        if not device:
            return self.devices[0]
        if device.split(":")[0] not in self.devices:
            raise VaekitError(
                f"unknown device {device!r}: the {self.name} backend ({self.summary}) runs on {', '.join(self.devices)}"
            )
        return device

    def load(self, path: Path, role: Role, device: str = "", **options: object) -> Encoder | Decoder:
        device = self.check_device(device)
        if self.graph_limits:
            precision = self.describe(path, role).precision
            missing = self.graph_status(device, precision)
            if missing:
                raise VaekitError(f"{path.name} is a {precision} graph: {missing}")
        loaded: Encoder | Decoder = self._impl().load(path, role, device, **options)
        return loaded

    def describe(self, path: Path, role: Role = "decoder") -> ArtifactInfo:
        info: ArtifactInfo = self._impl().describe(path, role)
        return info

    def status(self, device: str = "") -> str:
        """'' when this backend can run on `device` here, else why not."""
        reason: str = self._impl().status(self.check_device(device))
        return reason

    def graph_status(self, device: str, precision: str) -> str:
        """'' when this backend can run a graph stored in `precision` on `device`, else why not."""
        kind = self.check_device(device).split(":")[0]
        return next((why for d, p, why in self.graph_limits if (d, p) == (kind, precision)), "")

    def precision_status(self, device: str, precision: str) -> str:
        """'' when this backend can run an fp32 graph in `precision` on `device` here, else why not."""
        if precision not in self.runtime_precisions:
            return f"the {self.name} backend takes precision from the graph"
        reason: str = self._impl().precision_status(self.check_device(device), precision)
        return reason


BF16_ELSEWHERE = "run it with --runtime openvino, or build a TensorRT engine from it (vaekit build-engine)"
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "pyt",
            "pytorch",
            "pyt",
            (CHECKPOINT_SUFFIX,),
            ("cpu", "cuda"),
            "PyTorch",
            ("bf16",),
        ),
        Backend(
            "onnxrt",
            "onnxruntime",
            "onnxrt",
            (ONNX_SUFFIX,),
            ("cpu", "cuda", "tensorrt"),  # tensorrt: ONNX Runtime's TensorRT execution provider
            "ONNX Runtime",
            graph_limits=(
                ("cpu", "bf16", f"ONNX Runtime's CPU provider has no bfloat16 arithmetic; {BF16_ELSEWHERE}"),
                ("cuda", "bf16", f"ONNX Runtime's CUDA provider lacks bfloat16 kernels (Conv); {BF16_ELSEWHERE}"),
            ),
        ),
        Backend("trt", "tensorrt", "trt", ENGINE_SUFFIXES, ("cuda",), "native TensorRT engines"),
        Backend(
            "openvino",
            "openvino",
            "openvino",
            (ONNX_SUFFIX,),
            ("cpu", "gpu", "npu"),
            "OpenVINO",
            ("bf16", "fp16"),
        ),
        Backend(
            "browser",
            "onnxruntime-web",
            "browser",
            (ONNX_SUFFIX,),
            ("wasm",),
            "ONNX Runtime Web in Chromium",
            graph_limits=(("wasm", "bf16", "ONNX Runtime Web has no bfloat16 kernels"),),
        ),
        Backend("executorch", "executorch", "et", (PTE_SUFFIX,), ("cpu",), "ExecuTorch (XNNPACK) programs"),
        Backend("ncnn", "ncnn", "ncnn_net", (NCNN_PARAM_SUFFIX,), ("cpu",), "ncnn nets"),
    )
}


def backends_for(path: Path) -> list[Backend]:
    """Every backend that reads this artifact, its default first."""
    return [b for b in BACKENDS.values() if b.reads(path)]


def runnable_backend(path: Path, device: str, precision: str) -> Backend | None:
    """The first backend that reads `path` and runs a graph stored in `precision` on `device` here."""
    kind = device.split(":")[0]
    for backend in backends_for(path):
        if kind in backend.devices and not backend.status(device) and not backend.graph_status(device, precision):
            return backend
    return None


def backend_for(path: Path, name: str | None = None) -> Backend:
    """The backend named, or the default one for this artifact's suffix."""
    if name is not None:
        if name not in BACKENDS:
            raise VaekitError(f"unknown runtime {name!r}: use {', '.join(BACKENDS)}")
        backend = BACKENDS[name]
        if not backend.reads(path):
            raise VaekitError(f"the {name} backend reads {', '.join(backend.suffixes)} files, not {path.name}")
        return backend
    found = next(iter(backends_for(path)), None)
    if found is None:
        known = ", ".join(s for b in BACKENDS.values() for s in b.suffixes)
        raise VaekitError(
            f"{path}: unknown artifact type {path.suffix or '(no suffix)'!r}; vaekit reads {known} or a run dir"
        )
    return found


def load_encoder(path: Path | str, device: str = "", runtime: str | None = None, **options: object) -> Encoder:
    """Load the encoder an artifact (file, run dir or artifact dir) holds, on the backend that reads it."""
    resolved = resolve(Path(path), "encoder")
    loaded = backend_for(resolved, runtime).load(resolved, "encoder", device, **options)
    return cast(Encoder, loaded)


def load_decoder(path: Path | str, device: str = "", runtime: str | None = None, **options: object) -> Decoder:
    resolved = resolve(Path(path), "decoder")
    loaded = backend_for(resolved, runtime).load(resolved, "decoder", device, **options)
    return cast(Decoder, loaded)


def describe(path: Path | str, role: Role = "decoder") -> ArtifactInfo:
    """What an artifact is, read from its metadata alone (no session, no engine, no GPU)."""
    resolved = resolve(Path(path), role)
    return backend_for(resolved).describe(resolved, role)


def runtime_status() -> dict[str, dict[str, str]]:
    """backend -> device -> '' when usable here, else the reason: what `doctor` and parity report."""
    return {b.name: {d: b.status(d) for d in b.devices} for b in BACKENDS.values()}


def _open_checked(
    path: Path | str, role: Role, device: str, trust: bool, runtime: str | None
) -> tuple[Encoder | Decoder, str]:
    resolved = resolve(Path(path), role)
    backend = backend_for(resolved, runtime)
    if resolved.suffix.lower() == CHECKPOINT_SUFFIX:
        return backend.load(resolved, role, device), ""
    with dir_lock(resolved.parent, exclusive=False):  # the file checked is the file loaded: no export between
        origin = provenance(resolved, trust)
        return backend.load(resolved, role, device), origin


def open_encoder(
    path: Path | str, device: str = "", trust: bool = False, runtime: str | None = None
) -> tuple[Encoder, str]:
    """Load an encoder after checking it against the manifest beside it (refusing a hash mismatch unless
    trust); returns it with a line saying where it came from ('' for a checkpoint, which has no manifest)."""
    loaded, origin = _open_checked(path, "encoder", device, trust, runtime)
    return cast(Encoder, loaded), origin


def open_decoder(
    path: Path | str, device: str = "", trust: bool = False, runtime: str | None = None
) -> tuple[Decoder, str]:
    loaded, origin = _open_checked(path, "decoder", device, trust, runtime)
    return cast(Decoder, loaded), origin
