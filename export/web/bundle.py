"""Publish an artifact directory's web bundle: `web/` with the page, the graphs and ONNX Runtime Web.

The files are assembled by `vaekit.runtimes.backends.web_bundle` (the browser backend runs the same set); this step
owns writing them: into a temp folder beside `web/`, then one rename, so a failed fetch, a hash mismatch
or a full disk leaves the previous bundle (or none), never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes, check_output_dir, ran_out
from vaekit.runtimes.artifacts import WEB_DIR, Role, artifact_dir_of, cpu_graph_name, onnx_name, web_graph_name
from vaekit.runtimes.backends.web_bundle import PAGE_FOLDER, Files, bundle_files, runtime_files

PAGE_DIR = Path(__file__).with_name(PAGE_FOLDER)  # package data: index.html, app.js, style.css


def build_bundle(artifact_dir: Path, runtime_dir: Path | None = None) -> Path:
    """Write `artifact_dir/web/` (replacing an older bundle) and return it.

    runtime_dir: a folder holding ONNX Runtime Web's files; default: the pinned npm tarball, verified and
    cached (only the first build needs the network).
    """
    artifact_dir = artifact_dir_of(Path(artifact_dir))
    check_runtime_dir(artifact_dir, runtime_dir)
    runtime = runtime_files(runtime_dir)
    files = bundle_files(graph_for_the_web(artifact_dir, "decoder"), _encoder(artifact_dir), runtime, PAGE_DIR)
    return publish(files, artifact_dir / WEB_DIR)


def check_runtime_dir(artifact_dir: Path, runtime_dir: Path | None) -> None:
    """Refuse a runtime folder that is, holds or lies inside the web/ a build replaces (export drops it first)."""
    if runtime_dir is not None:
        check_output_dir(Path(artifact_dir) / WEB_DIR, [runtime_dir])


def graph_for_the_web(artifact_dir: Path, role: Role) -> Path:
    """The fastest fp32 graph in ONNX Runtime Web the export wrote: web graph, else CPU graph, else portable.

    ONNX Runtime Web's wasm backend is ONNX Runtime's CPU provider compiled to WebAssembly without its
    blocked kernels: of the exact rewrites export proves by parity, only the Gemm + upsample fold pays off
    fully there (`rewrite_for_wasm`); the CPU graph's phase convolutions cost back part of it (an export
    from before the web graph existed still has the CPU graph, which beats the portable one in wasm).
    """
    found = (artifact_dir / name(role) for name in (web_graph_name, cpu_graph_name, onnx_name))
    return next((p for p in found if p.is_file()), artifact_dir / onnx_name(role))


def _encoder(artifact_dir: Path) -> Path | None:
    graph = graph_for_the_web(artifact_dir, "encoder")
    return graph if graph.is_file() else None


def publish(files: Files, target: Path) -> Path:
    """Write every file into a temp folder beside `target`, then swap it in."""
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as exc:
        raise VaekitError(f"cannot write {target}: {ran_out(exc)}") from None
    try:
        for name, content in files.items():
            atomic_write_bytes(staging / name, content if isinstance(content, bytes) else content.read_bytes())
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; a bundle is for serving
        _swap(staging, target)
    except OSError as exc:
        raise VaekitError(f"cannot write {target}: {ran_out(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the swap succeeded
    return target


def _swap(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; an older bundle is moved aside first and removed after."""
    old = target.with_name(f".{target.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.rename(old, target)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)
