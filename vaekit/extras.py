"""Which optional packages each command needs, and the extra that brings them: one table, checked when a
command starts, so a partial install ends in one line naming what to install instead of a traceback."""

from __future__ import annotations

import importlib.util

from vaekit.errors import VaekitError

# extra -> the packages it installs, as (import name, distribution name): `pip install 'vaekit[EXTRA]'`.
# Mirrors [project.optional-dependencies] in pyproject.toml; tests/test_extras.py keeps the two in step.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("torch", "torch"),
        ("safetensors", "safetensors"),
        ("onnxscript", "onnxscript"),
        ("sklearn", "scikit-learn"),
    ),
    "cpu": (("onnxruntime", "onnxruntime"),),
    "gpu": (("onnxruntime", "onnxruntime-gpu"),),
    "trt": (("tensorrt", "tensorrt"), ("onnxruntime", "onnxruntime-gpu"), ("cuda", "cuda-python")),
    "openvino": (("openvino", "openvino"),),
    "mobile": (("executorch", "executorch"), ("torchao", "torchao"), ("ncnn", "ncnn"), ("pnnx", "pnnx")),
    "ncnn": (("ncnn", "ncnn"),),
}
# command -> the modules it cannot start without. Every command of the CLI has a row (even an empty one).
NEEDS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "safetensors"),
    "eval": ("torch", "safetensors"),
    "download": (),
    "export": ("torch", "safetensors", "onnxscript", "onnxruntime"),  # onnxscript: torch's ONNX exporter
    "parity": (),
    "generate": (),
    "reconstruct": (),
    "info": (),
    "doctor": (),
    "view": (),  # --build without --runtime-dir fetches ONNX Runtime Web from the npm registry, no package
    # tensorrt is checked by the trt backend after the request's own checks, so usage errors come first
    "build-engine": ("onnxruntime",),  # onnxruntime profiles an fp16 conversion
    "bench": ("onnxruntime",),  # the GEMM ceiling probe runs on ONNX Runtime
}
RUNTIMES = ("onnxruntime", "openvino", "tensorrt", "torch", "safetensors", "executorch", "ncnn")  # what loads artifacts
# command -> modules it uses only when asked (a data source, a runtime, a flag): the backend's status() or the
# data loader says so in one line at that point; `vaekit doctor` lists the ones missing here.
MAY_USE: dict[str, tuple[str, ...]] = {
    "train": ("sklearn",),  # --data digits
    "eval": ("sklearn",),
    "export": ("sklearn", "tensorrt", "cuda", "executorch", "torchao", "ncnn", "pnnx"),  # --trt, --executorch, --ncnn
    "parity": RUNTIMES,  # per artifact; --checkpoint
    "generate": RUNTIMES,
    "reconstruct": (*RUNTIMES, "sklearn"),
    "build-engine": ("tensorrt", "cuda"),  # cuda: device buffers where torch is absent
    "bench": ("openvino", "tensorrt", "torch", "safetensors", "executorch", "ncnn"),
}


def extra_of(module: str) -> str:
    """The extra that brings `module`: the first one listing it (onnxruntime -> cpu; gpu/trt bring it too)."""
    return next(extra for extra, packages in EXTRAS.items() if any(m == module for m, _ in packages))


def package_of(module: str) -> str:
    """The distribution a user installs for `module` (sklearn -> scikit-learn)."""
    return next(package for m, package in EXTRAS[extra_of(module)] if m == module)


def install_hint(*modules: str) -> str:
    """`pip install 'vaekit[a,b]'` for the extras that bring these modules: the one hint every message gives."""
    extras = dict.fromkeys(extra_of(m) for m in modules)
    return f"pip install 'vaekit[{','.join(extras)}]'"


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that do not import here (found without importing them: torch takes seconds)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(command: str) -> None:
    """Stop a command in one line when a package it cannot start without is missing."""
    gaps = missing(NEEDS.get(command, ()))
    if gaps:
        names = ", ".join(package_of(m) for m in gaps)
        verb = "is" if len(gaps) == 1 else "are"
        raise VaekitError(f"`vaekit {command}` needs {names}, which {verb} not installed: {install_hint(*gaps)}")


def _listed(modules: list[str]) -> str:
    return ", ".join(f"{package_of(m)} (vaekit[{extra_of(m)}])" for m in modules)


def report() -> dict[str, str]:
    """command -> 'ok', or what is missing (needed, then used when asked): what `vaekit doctor` shows."""
    found = {}
    for command, needs in NEEDS.items():
        gaps, optional = missing(needs), missing(MAY_USE.get(command, ()))
        line = f"missing {_listed(gaps)}" if gaps else "ok"
        found[command] = line + (f"; optional, not installed: {_listed(optional)}" if optional else "")
    return found
