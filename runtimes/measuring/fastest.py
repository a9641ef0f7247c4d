"""The runtime chosen by measurement (`bench.pick_best`: per graph and batch size, the fastest runtime,
precision and artifact whose parity against the golden outputs passed). `vaekit bench --record` keeps it
in the artifact directory with the machine it was measured on; `--runtime auto` loads it. A row whose
parity failed or was not run is never chosen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_text, dir_lock, sha256_file
from vaekit.runtimes.artifacts import FASTEST, MANIFEST, Role
from vaekit.runtimes.base import Decoder, Encoder
from vaekit.runtimes.cpu import cpu_model
from vaekit.runtimes.measuring.bench import PEERS, BenchReport, load_peer


def manifest_digest(artifact_dir: Path) -> str:
    """The sha256 of the manifest: which export a measurement was made on ('' when there is none)."""
    path = artifact_dir / MANIFEST
    return sha256_file(path) if path.is_file() else ""


def record(artifact_dir: Path, report: BenchReport, measured_on: str) -> Path:
    """Keep the choice beside the artifacts, with the machine and threads it holds for; refused when the
    directory now holds another export than the one measured (`measured_on`: its manifest_digest)."""
    machine = {"cpu": report.machine["cpu"]["model"], "threads": report.machine["threads"]}
    data = {"format": 1, "machine": machine, "date": report.machine["date"], "best": report.best}
    path = artifact_dir / FASTEST
    with dir_lock(artifact_dir, exclusive=True):  # no export publishes between the check and the write
        if manifest_digest(artifact_dir) != measured_on:
            raise VaekitError(
                f"{artifact_dir} was exported again while bench measured it: nothing recorded; "
                f"run vaekit bench {artifact_dir} --record again"
            )
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def _read(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / FASTEST
    how = f"measure it first: vaekit bench {artifact_dir} --record"
    if not path.is_file():
        raise VaekitError(f"--runtime auto: {artifact_dir} was never benchmarked on this machine; {how}")
    try:
        data = json.loads(path.read_text())
        entries = [e for e in data["best"] if _usable(e)]
        measured_on = str(data.get("machine", {}).get("cpu", ""))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise VaekitError(f"{path} is not a vaekit measurement ({exc}); {how}") from None
    if measured_on != cpu_model():
        raise VaekitError(f"--runtime auto: {path} was measured on {measured_on!r}, not this CPU; {how}")
    return {"best": entries}


def _usable(entry: Any) -> bool:
    """A row `choose` may pick: names as strings, an int batch, and an artifact that is a file of the directory
    itself (loaded with the trust of the manifest beside it, so never one another manifest vouches for)."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("graph", "runtime", "artifact")):
        return False
    artifact, batch = entry["artifact"], entry.get("batch")
    plain = "/" not in artifact and "\x00" not in artifact and artifact not in ("", ".", "..")
    return plain and isinstance(batch, int) and not isinstance(batch, bool)


def choose(artifact_dir: Path, graph: Role, batch: int) -> dict[str, Any]:
    """The recorded winner for this graph at the smallest measured batch >= `batch` (else the largest)."""
    entries = [e for e in _read(artifact_dir)["best"] if e.get("graph") == graph and e.get("runtime") in PEERS]
    if not entries:
        raise VaekitError(f"--runtime auto: no verified {graph} runtime recorded in {artifact_dir / FASTEST}")
    entries.sort(key=lambda e: int(e.get("batch", 0)))
    return next((e for e in entries if int(e["batch"]) >= batch), entries[-1])


def load_fastest(artifact_dir: Path, graph: Role, batch: int) -> tuple[Encoder | Decoder, str]:
    """Load what `choose` picked; returns it with a line saying what it is and why."""
    entry = choose(artifact_dir, graph, batch)
    peer = PEERS[entry["runtime"]]
    if peer.artifacts == "checkpoint":
        raise VaekitError("--runtime auto picked a PyTorch peer: pass the run directory to use it")
    path = artifact_dir / str(entry["artifact"])
    loaded = load_peer(peer, path, graph, artifact_dir, None)
    measured = f"{entry.get('p50_ms')} ms at batch {entry['batch']}, parity {entry.get('parity')}"
    return loaded, f"--runtime auto: {entry['runtime']} {entry.get('precision')} on {path.name} ({measured})"
