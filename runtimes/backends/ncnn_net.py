"""ncnn backend: an `.ncnn.param` + `.ncnn.bin` net run through ncnn's Python binding (`ncnn.Net`), torch-free,
as on a phone or an ARM board; its sidecar `<name>.ncnn.param.json` carries vaekit's metadata.

ncnn has no batch axis: a batch runs image by image, one extractor each. ncnn computes in fp16 storage and
arithmetic by default wherever the CPU has the instructions (F16C on x86 included), so an fp32 net is run
with every reduced-precision option off, and an fp16 net with them on: the artifact computes what it says.
Its C++ parser trusts the file, so a net is loaded only after both halves match the sidecar's sha256.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import WITH_ARTICLE, Role, checked_sidecar, ncnn_bin, sidecar_metadata
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

LABEL = "ncnn"
INSTALL = "pip install 'vaekit[ncnn]' (a device) or 'vaekit[mobile]' (export)"
REDUCED = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed")
BLOBS = {"encoder": ("in0", ("out0", "out1")), "decoder": ("in0", ("out0",))}  # what pnnx names them


def status(device: str) -> str:
    if importlib.util.find_spec("ncnn") is None:
        return f"ncnn not installed ({INSTALL})"
    return ""


def _info(path: Path, sidecar: dict[str, Any]) -> ArtifactInfo:
    return metadata_to_info(sidecar["graph_metadata"], backend=LABEL, device="cpu", path=str(path))


class NcnnRunner:
    """One loaded net; each image gets its own extractor (they are cheap and hold that image's blobs)."""

    def __init__(self, path: Path, role: Role, threads: int | None) -> None:
        self.info = _info(path, checked_sidecar(path))
        if self.info.role != role:
            raise VaekitError(f"{path} is {WITH_ARTICLE[self.info.role]} net, not {WITH_ARTICLE[role]}")
        try:
            import ncnn
        except ImportError:
            raise VaekitError(f"ncnn is not installed: {INSTALL}") from None
        self.ncnn, self.net = ncnn, ncnn.Net()
        for option in REDUCED:
            if hasattr(self.net.opt, option):
                setattr(self.net.opt, option, self.info.precision == "fp16")
        if threads:
            self.net.opt.num_threads = threads
        # load_param/load_model return non-zero on a file they cannot parse
        if self.net.load_param(str(path)) != 0 or self.net.load_model(str(ncnn_bin(path))) != 0:
            raise VaekitError(f"ncnn cannot load {path.name} and {ncnn_bin(path).name}: re-export")
        self.input, self.outputs = BLOBS[role]

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for item in array:
            extractor = self.net.create_extractor()
            extractor.input(self.input, self.ncnn.Mat(np.ascontiguousarray(item)))
            for name, found in zip(self.outputs, results, strict=True):
                code, mat = extractor.extract(name)
                if code != 0:
                    raise VaekitError(f"ncnn failed to run {Path(self.info.path).name}: no blob {name} (code {code})")
                found.append(np.array(mat))
        return [np.stack(found).astype(np.float32, copy=False) for found in results]


class NcnnEncoder(Encoder):
    def __init__(self, runner: NcnnRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu.reshape(len(images), -1), log_var.reshape(len(images), -1)


class NcnnDecoder(Decoder):
    def __init__(self, runner: NcnnRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0].reshape(len(z), *self.info.image_shape)


def load(path: Path, role: Role, device: str, threads: int | None = None) -> Encoder | Decoder:
    """threads: ncnn's worker threads (default: every core)."""
    runner = NcnnRunner(path, role, threads)
    return NcnnEncoder(runner) if role == "encoder" else NcnnDecoder(runner)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    return _info(path, sidecar_metadata(path))
