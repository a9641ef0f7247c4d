"""This machine as the runtimes see it: CPU model, vector ISA and peak, GPUs, package versions, and which
backends can run here. One reading of /proc/cpuinfo serves `doctor`, manifests and `bench`."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from vaekit import __version__
from vaekit.runtimes.cpu import cpu_flags, cpu_model, cpuinfo, int8_class, isa_flags

NOT_INSTALLED = "not installed"
# Packages whose versions decide what an artifact computes (recorded in manifests and bench reports).
VERSIONED = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino", "numpy", "onnxscript")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def package_versions() -> dict[str, str]:
    """vaekit, Python and the installed packages that decide what an artifact computes."""
    found = {"vaekit": __version__, "python": platform.python_version()}
    found.update({name: v for name in VERSIONED if (v := _version(name)) != NOT_INSTALLED})
    return found


def cpu_peak(cores: int) -> dict[str, Any]:
    """fp32 peak = cores x clock x FLOP per cycle of the vector ISA, read from this machine.

    FLOP/cycle per core: two FMA pipes x lanes x 2. AVX-512: 64; AMD Zen 4 (family 25) runs AVX-512 on
    256-bit datapaths, so 32 like AVX2 + FMA; AVX without FMA: 16; SSE / NEON: 8-16. The clock is the
    cpufreq maximum where the OS exposes it, else /proc/cpuinfo's current MHz (often the base clock in a
    VM, while the core may boost higher: then the fraction of peak reads high).
    """
    info, flags = cpuinfo(), cpu_flags()
    vendor, family = info.get("vendor_id", ""), info.get("cpu family", "")
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family == "25"):
        isa, per_cycle = "AVX-512 (2 x 512-bit FMA)", 64
    elif "avx512f" in flags:
        isa, per_cycle = "AVX-512 on 256-bit datapaths (AMD Zen 4: 2 x 256-bit FMA)", 32
    elif "avx2" in flags and "fma" in flags:
        isa, per_cycle = "AVX2 + FMA (2 x 256-bit FMA)", 32
    elif "avx" in flags:
        isa, per_cycle = "AVX (no FMA)", 16
    elif "asimd" in flags:
        isa, per_cycle = "NEON (2 x 128-bit FMA)", 16
    else:
        isa, per_cycle = "SSE or unknown", 8
    clock_ghz, clock_source = 0.0, "unknown"
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        clock_ghz, clock_source = int(max_freq.read_text()) / 1e6, "cpufreq max"
    elif info.get("cpu MHz"):
        clock_ghz, clock_source = float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo MHz (base or current, not boost)"
    per_cycle_by_precision = _low_precision_per_cycle(flags, per_cycle)
    return {
        "model": cpu_model(),
        "cores": cores,
        "clock_ghz": round(clock_ghz, 3),
        "clock_source": clock_source,
        "isa": isa,
        "isa_flags": isa_flags(),
        "int8_dot_product": "VNNI" if int8_class(flags) == "vnni" else "none (int8 runs on multiply-add pairs)",
        "flop_per_cycle": per_cycle,
        "peak_gflops": round(cores * clock_ghz * per_cycle, 1),
        # per precision: (G)FLOP/s or int8 (G)OP/s, from the widest units this CPU reports
        "peaks": {p: round(cores * clock_ghz * n, 1) for p, (n, _) in per_cycle_by_precision.items()},
        "peak_units": {p: unit for p, (_, unit) in per_cycle_by_precision.items()},
    }


def _low_precision_per_cycle(flags: set[str], fp32: int) -> dict[str, tuple[int, str]]:
    """Operations per cycle per core by precision. AMX tiles (Sapphire Rapids and later): 1024 bf16 FLOP and
    2048 int8 OP; without them AVX512-BF16 dot products double fp32's rate, AVX512-FP16 FMAs too, and VNNI
    int8 dot products (4 multiply-adds per 32-bit lane) quadruple it."""
    found = {"fp32": (fp32, "fp32 FMA")}
    if "amx_bf16" in flags:
        found["bf16"] = (1024, "AMX-BF16 tiles")
    elif "avx512_bf16" in flags:
        found["bf16"] = (2 * fp32, "AVX512-BF16 dot products")
    if "avx512fp16" in flags:
        found["fp16"] = (2 * fp32, "AVX512-FP16 FMA")
    if "amx_int8" in flags:
        found["int8"] = (2048, "AMX-INT8 tiles")
    elif {"avx512_vnni", "avx_vnni"} & flags:
        found["int8"] = (4 * fp32, "VNNI dot products")
    return found


def bench_machine(threads: int) -> dict[str, Any]:
    """What a benchmark report states about where it ran."""
    return {
        "cpu": cpu_peak(threads),
        "threads": threads,
        "platform": platform.platform(),
        "versions": package_versions(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return out.stdout.strip().replace("\n", "; ") or "none"


def machine_report() -> dict[str, Any]:
    """`vaekit doctor`: versions, CPU, GPUs and, per backend and device, 'ok' or why not."""
    from vaekit.runtimes.registry import runtime_status

    cpu = {"model": cpu_model(), "cores": os.cpu_count() or 1, "isa": isa_flags(), "int8_class": int8_class()}
    versions = {name: _version(name) for name in VERSIONED}
    runtimes = {
        backend: {device: reason or "ok" for device, reason in devices.items()}
        for backend, devices in runtime_status().items()
    }
    return {
        "vaekit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "gpus": gpus(),
        "versions": versions,
        "runtimes": runtimes,
    }
