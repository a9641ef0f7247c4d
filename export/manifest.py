"""manifest.json: what an export directory holds, where it came from, and whether it passed parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.fsutil import atomic_write_text, sha256_file
from vaekit.runtimes.artifacts import MANIFEST, read_manifest
from vaekit.runtimes.cpu import cpu_model, int8_class, isa_flags
from vaekit.runtimes.measuring.machine import package_versions

HASHED = (".onnx", ".plan", ".pte", ".param", ".bin", ".json", ".npz")  # artifact kinds the manifest vouches for


def _entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(
    out_dir: Path, info: dict[str, Any], parity: dict[str, Any] | None, skip: set[str] | None = None
) -> Path:
    """Hash every artifact file in out_dir (but those in skip, which are not published) and write the manifest
    atomically, with the CPU that proved them: an int8 or bf16 result holds for a CPU class, not every CPU."""
    files = {
        p.name: _entry(p)
        for p in sorted(out_dir.iterdir())
        if p.is_file() and p.suffix in HASHED and p.name != MANIFEST and p.name not in (skip or set())
    }
    machine = {"cpu": cpu_model(), "isa_flags": isa_flags(), "int8_class": int8_class()}
    manifest = {
        "format": 1,
        **info,
        "versions": package_versions(),
        "proved_on": machine,
        "files": files,
        "parity": parity,
    }
    path = out_dir / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def add_files(directory: Path, paths: list[Path]) -> bool:
    """List files made after export (an engine built on the device) in the manifest beside them, so they are
    trusted like exported ones; False when the directory has no manifest."""
    manifest = read_manifest(directory)
    if manifest is None:
        return False
    files: dict[str, Any] = manifest.setdefault("files", {})
    for path in paths:
        files[path.name] = _entry(path)
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return True
