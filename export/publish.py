"""Publishing an export directory: staged files move into `out` one atomic rename each, under the directory's
exclusive lock; what an older export wrote and this one did not goes; failures go to `<out>-rejected/`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vaekit.fsutil import dir_lock
from vaekit.runtimes.artifacts import PUBLISHED, WEB_DIR, companions, sidecar_path


def publish(staging: Path, out: Path) -> None:
    """Move each staged file into out (one atomic rename per file) and drop artifacts of an older export
    that this one did not write (a stale decoder.fp16.onnx would otherwise sit beside a new manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    fresh = {item.name for item in staging.iterdir() if item.is_file()}
    with dir_lock(out, exclusive=True):  # readers loading from `out` finish first; new ones wait for the end
        for pattern in PUBLISHED:
            for old in out.glob(pattern):
                if old.name not in fresh:
                    old.unlink()
        if (out / WEB_DIR).is_dir():  # a browser bundle of the older graphs: `--web` builds a new one
            shutil.rmtree(out / WEB_DIR)
        for item in staging.iterdir():
            if item.is_dir():  # a runtime's cache (ORT TensorRT EP): rebuilt on demand, not an artifact
                shutil.rmtree(item)
            else:
                os.replace(item, out / item.name)
    staging.rmdir()


def set_aside(staging: Path, out: Path, names: list[str]) -> Path:
    """Move the dropped files into `<out>-rejected/` for inspection; the rest of staging is published."""
    rejected = out.with_name(out.name + "-rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    rejected.mkdir()
    for name in names:
        for path in files_of(staging / name):
            if path.is_file():
                os.replace(path, rejected / path.name)
    return rejected


def files_of(artifact: Path) -> list[Path]:
    """An artifact with what travels with it: its sidecar and, for an ncnn net, its weights."""
    return [artifact, sidecar_path(artifact), *companions(artifact)]


def reject(staging: Path, out: Path) -> Path:
    """Keep a failed export for inspection in `<out>-rejected/`, leaving `out` untouched."""
    rejected = out.with_name(out.name + "-rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    staging.rename(rejected)
    return rejected
