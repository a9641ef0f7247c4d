"""`vaekit doctor`: what this machine can run, so a user knows before trying."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from vaekit import __version__

NOT_INSTALLED = "not installed"
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "asimd")


VERSIONED = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "onnxscript")


def package_versions() -> dict[str, str]:
    """vaekit, Python and the installed packages that decide what an artifact computes."""
    found = {"vaekit": __version__, "python": platform.python_version()}
    found.update({name: v for name in VERSIONED if (v := _version(name)) != NOT_INSTALLED})
    return found


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def cpu_summary() -> dict[str, str]:
    """CPU model and the vector ISA flags that decide which kernels ONNX Runtime and torch can use."""
    model, flags = platform.processor() or "unknown", set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return {
        "model": model,
        "cores": str(os.cpu_count() or 1),
        "isa": " ".join(f for f in ISA_FLAGS if f in flags) or "unknown",
    }


def gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return out.stdout.strip().replace("\n", "; ") or "none"


def _torch_cuda() -> str:
    try:
        import torch
    except Exception as exc:  # a broken or blocked torch install must not stop the report
        return f"torch does not import: {exc}"
    return f"{torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no CUDA"


def machine_report() -> dict[str, object]:
    from vaekit.runtimes.loader import onnx_devices, tensorrt_status

    report: dict[str, object] = {
        "vaekit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_summary(),
        "gpus": gpus(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime-gpu": _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt"),
    }
    if report["torch"] != NOT_INSTALLED:
        report["torch cuda"] = _torch_cuda()
    ort = onnx_devices()
    report["onnxruntime devices"] = {d: (reason or "ok") for d, reason in ort.items()}
    report["tensorrt engines"] = tensorrt_status() or "ok"
    return report
