"""The CPU this process runs on, read once from /proc/cpuinfo: its model and the vector ISA flags that decide
which kernels a runtime uses (int8 dot products, bf16 units). Backends, export and bench all ask here."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
)


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    found: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            found.setdefault(key.strip(), value.strip())
    return found


def cpu_flags() -> set[str]:
    info = cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def isa_flags() -> str:
    """The vector ISA flags that decide which kernels a runtime can use here."""
    return " ".join(f for f in ISA_FLAGS if f in cpu_flags()) or "unknown"


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or "unknown"
