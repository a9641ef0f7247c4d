"""manifest.json: what an export directory holds, where it came from, and whether it passed parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.doctor import package_versions
from vaekit.fsutil import atomic_write_text, sha256_file

MANIFEST = "manifest.json"


def write_manifest(out_dir: Path, info: dict[str, Any], parity: dict[str, Any] | None) -> Path:
    """Hash every artifact file in out_dir and write the manifest atomically."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(out_dir.iterdir())
        if p.is_file() and p.suffix in (".onnx", ".plan", ".json", ".npz") and p.name != MANIFEST
    }
    manifest = {"format": 1, **info, "versions": package_versions(), "files": files, "parity": parity}
    path = out_dir / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def provenance(path: Path, trust: bool = False) -> str:
    """Check an artifact against the manifest beside it; returns a line saying where it came from.

    A TensorRT engine is executable code: a file whose hash differs from the manifest's is refused unless
    the user says --trust; one with no manifest entry loads with a warning that its origin is unverified.
    """
    from vaekit.errors import VaekitError

    manifest = read_manifest(path.parent)
    entry = (manifest or {}).get("files", {}).get(path.name)
    if manifest is None or entry is None:
        where = "no manifest.json beside it" if manifest is None else "not listed in manifest.json"
        return f"{path.name}: {where}; origin not verified (load only engines you built)"
    if sha256_file(path) != entry.get("sha256"):
        if not trust:
            raise VaekitError(
                f"{path} does not match the sha256 in manifest.json (modified or replaced?); --trust to load it"
            )
        return f"{path.name}: sha256 differs from manifest.json, loaded because of --trust"
    return f"{path.name}: sha256 matches manifest.json (exported from {manifest.get('checkpoint', '?')})"
