"""ExecuTorch backend: a `.pte` program (XNNPACK-delegated) run through `executorch.runtime`, the Python face
of the C++ runtime a phone app links; its sidecar `<name>.pte.json` carries vaekit's metadata.

ExecuTorch's loader is C++, where a malformed program is a crash rather than an exception, so a file is
loaded only after its size and sha256 match the sidecar vaekit wrote beside it (and ExecuTorch verifies the
program's internal consistency as it loads). Its Python runtime imports torch (tensors in and out);
an app on a device loads the same `.pte` with the C++, Java or Swift runtime instead.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.fsutil import captured_output
from vaekit.runtimes.artifacts import WITH_ARTICLE, Role, checked_sidecar, sidecar_metadata
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

LABEL = "executorch"
INSTALL = "pip install 'vaekit[mobile]'"


def status(device: str) -> str:
    if importlib.util.find_spec("executorch") is None:
        return f"executorch not installed ({INSTALL})"
    return ""


@functools.cache
def _executorch() -> tuple[Any, Any]:
    """ExecuTorch's Runtime and its pybindings, imported without the noise their imports make."""
    for name in ("torchao", "torch.utils._pytree"):  # optional CUDA kernels; a deprecation notice on import
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # "this API is experimental": the runtime a phone app links is not
            warnings.simplefilter("ignore")
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
    except ImportError:
        raise VaekitError(f"ExecuTorch is not installed: {INSTALL}") from None
    return Runtime.get(), portable_lib


def _info(path: Path, sidecar: dict[str, Any]) -> ArtifactInfo:
    return metadata_to_info(sidecar["graph_metadata"], backend=LABEL, device="cpu", path=str(path))


class PteRunner:
    """One loaded program and its `forward` method."""

    def __init__(self, path: Path, role: Role) -> None:
        self.info = _info(path, checked_sidecar(path))
        if self.info.role != role:
            raise VaekitError(f"{path} is {WITH_ARTICLE[self.info.role]} program, not {WITH_ARTICLE[role]}")
        try:  # its C++ logs CPU probing to stderr as it loads: shown only when loading fails
            with captured_output() as log:
                self.method = _executorch()[0].load_program(path).load_method("forward")
        except VaekitError:
            raise
        except Exception as exc:  # ExecuTorch raises RuntimeError / ValueError of its own
            why = log.last_line() or str(exc).strip().splitlines()[0]
            raise VaekitError(f"ExecuTorch cannot load {path}: {why}") from None

    def run(self, array: np.ndarray) -> list[np.ndarray]:
        import torch

        try:
            outputs = self.method.execute([torch.from_numpy(array)])
        except Exception as exc:  # its own error types: this input cannot run (its log says why, on stderr)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VaekitError(f"ExecuTorch failed to run {self.info.path}: {first}") from None
        return [o.numpy() for o in outputs]


class PteEncoder(Encoder):
    def __init__(self, runner: PteRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu, log_var


class PteDecoder(Decoder):
    def __init__(self, runner: PteRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0]


_loaded: list[Path] = []  # programs loaded in this process: XNNPACK keeps a pointer to the pool they started with


def _set_threads(threads: int) -> None:
    """XNNPACK's pool is process-wide and sized to every core; the pybindings offer a reset (no public API),
    safe only before any program runs on the old pool (a reset under a loaded program crashed its next run)."""
    portable_lib = _executorch()[1]
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    with captured_output():  # creating the pool logs its CPU probing
        current = portable_lib._threadpool_get_thread_count()
    if reset is None or current == threads:
        return
    if _loaded:
        raise VaekitError(
            f"ExecuTorch's thread pool is process-wide and {_loaded[0].name} already runs on it: "
            f"load programs with {threads} threads in a fresh process"
        )
    with captured_output():  # it logs the reset
        reset(threads)


def load(path: Path, role: Role, device: str, threads: int | None = None) -> Encoder | Decoder:
    """threads: the size of XNNPACK's (process-wide) thread pool, set before the first program loads;
    default: every core."""
    if threads:
        _set_threads(threads)
    runner = PteRunner(path, role)
    _loaded.append(path)
    return PteEncoder(runner) if role == "encoder" else PteDecoder(runner)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    return _info(path, sidecar_metadata(path))
