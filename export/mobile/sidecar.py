"""The JSON beside a mobile artifact: vaekit's graph metadata (a .pte or .param has no room of its own for
it) and the sha256 of every file the runtime reads, so a changed file is refused before a C++ parser sees it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.fsutil import atomic_write_text, sha256_file
from vaekit.runtimes.artifacts import SIDECAR_FORMAT, companions, sidecar_path


def write_sidecar(path: Path, meta: dict[str, str], **extra: Any) -> Path:
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in (path, *companions(path))}
    sidecar = {"format": SIDECAR_FORMAT, "graph_metadata": meta, "files": files, **extra}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return sidecar_path(path)
