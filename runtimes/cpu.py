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


# int8 CPU classes: how a CPU accumulates u8 x s8 products decides what an int8 graph computes there.
INT8_CLASSES = {
    "vnni": "x86 with VNNI or AMX (vpdpbusd / tdpbusd: int32 accumulation)",
    "avx2": "x86 with AVX2 but no VNNI, AVX-512 before VNNI included (vpmaddubsw: int16 pair sums saturate)",
    "arm64": "ARM64 (widening multiplies or sdot/udot: int32 accumulation)",
    "other": "another CPU (SSE-only x86 or unknown): no int8 class vaekit has proved",
}
# What each --int8-target must hold on.
TARGET_CLASSES = {"any": ("vnni", "avx2", "arm64"), "vnni": ("vnni", "arm64")}


def int8_class(flags: set[str] | None = None) -> str:
    """This CPU's int8 class (a key of INT8_CLASSES), from its ISA flags."""
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"}:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    if "asimd" in flags or platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "other"


def int8_class_note(graph: str, target: str | None, here: str | None = None) -> str:
    """What a failed int8 graph says about this CPU: outside the classes it was made for, or inside them."""
    here = here or int8_class()
    what = f"this CPU is {here}: {INT8_CLASSES[here]}"
    if target not in TARGET_CLASSES:
        return f"{graph} predates CPU-class checks and {what}; re-export it with --int8-target any"
    if here not in TARGET_CLASSES[target]:
        made = ", ".join(TARGET_CLASSES[target])
        return f"{graph} was made for {made} CPUs (--int8-target {target}) and {what}; re-export with --int8-target any"
    return f"{graph} was proved for this CPU's class ({here}), so the CPU class does not explain this failure"
