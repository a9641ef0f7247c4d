"""Faults from outside: a file-size limit or a full disk in the middle of train, export and bench, two
commands on one directory at once, and SIGINT / SIGTERM at several moments. Each must end in one line
and a non-zero exit, with what was there before unchanged and nothing half-written left looking finished."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vaekit.fsutil import LOCK_FILE, dir_lock, stale_temps
from vaekit.runtimes.artifacts import FASTEST, MANIFEST, read_manifest
from vaekit.runtimes.measuring.fastest import manifest_digest, record
from vaekit.runtimes.registry import open_decoder

WAIT_S = 120
EXPORT = ["export", "--max-batch", "8"]
BENCH = ["bench", "--runtimes", "onnxruntime", "--graphs", "decoder", "--batch-sizes", "1", "--warmup", "1"]
BENCH += ["--min-runs", "2", "--min-seconds", "0"]
PROGRESS = re.compile(r"\d+/\d+ \S+ (decoder|encoder) ")


def digest(root: Path) -> dict[str, str]:
    """Every file under root (but the lock) by its sha256: what 'unchanged' means below."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def leftovers(parent: Path) -> list[str]:
    """Staging directories, temp files and rejected exports a failed command must not leave behind."""
    found = [p.name for p in parent.iterdir() if ".staging-" in p.name or p.name.endswith("-rejected")]
    return found + [str(p) for d in parent.rglob("*") if d.is_dir() for p in stale_temps(d)]


def vaekit(args: list[str], limit: int | None = None, **popen: object) -> subprocess.Popen[str]:
    """The CLI in a child process, optionally under RLIMIT_FSIZE (Python ignores SIGXFSZ, so an oversized
    write fails with EFBIG instead of killing the process)."""

    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "vaekit", *args]
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cap, **popen
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """The exit code and stderr's lines, less bench's progress lines ("1/2 onnxruntime decoder fp32") and its
    notice that other processes loaded the machine (a statement about the timings, not about the fault)."""
    _, err = proc.communicate(timeout=WAIT_S)
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    return proc.returncode, [line for line in lines if not line.startswith("warning other processes used")]


def assert_one_line(code: int, lines: list[str], pattern: str) -> None:
    assert code != 0 and len(lines) == 1, (code, lines)
    assert "Traceback" not in lines[0] and re.search(pattern, lines[0]), lines[0]


def manifest_holds(art: Path) -> None:
    """Every file the manifest lists is there with its hash: one export, not a mix of two."""
    manifest = read_manifest(art)
    assert manifest is not None
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((art / name).read_bytes()).hexdigest() == entry["sha256"], name


@pytest.fixture
def existing(tmp_path: Path, conv_art: Path) -> Path:
    """A published export in its own parent folder, so staging and -rejected folders land beside it."""
    return Path(shutil.copytree(conv_art, tmp_path / "exports" / "art"))


# --- the disk ----------------------------------------------------------------------------------------


def test_a_file_size_limit_at_the_checkpoint_keeps_the_previous_one(tmp_path: Path, conv_run: Path) -> None:
    run = Path(shutil.copytree(conv_run, tmp_path / "run"))
    before = digest(run)
    limit = (run / "trainer.safetensors").stat().st_size // 2  # config and metrics fit, the checkpoint does not
    code, lines = finish(vaekit(["train", "--out", str(run), "--resume", "--epochs", "3"], limit))
    assert_one_line(code, lines, r"cannot write .*trainer\.safetensors: File too large \(over .*ulimit -f")
    after = digest(run)
    assert after.pop("config.json") and before.pop("config.json")  # rewritten at the start: --epochs 3
    assert after == before  # the epoch-2 checkpoint, its metrics and pictures, byte for byte
    assert stale_temps(run) == []


def _largest_files(art: Path, n: int) -> list[int]:
    return sorted({p.stat().st_size for p in art.iterdir() if p.is_file()}, reverse=True)[:n]


@pytest.mark.parametrize("which", [0, 1, 2])  # just below the largest, 2nd and 3rd largest file: other steps fail
def test_a_file_size_limit_during_export_keeps_the_previous_export(existing: Path, conv_run: Path, which: int) -> None:
    before = digest(existing)
    limit = _largest_files(existing, 3)[which] - 1
    args = [*EXPORT, "--checkpoint", str(conv_run), "--out", str(existing), "--overwrite"]
    code, lines = finish(vaekit(args, limit))
    assert_one_line(code, lines, r"File too large")
    assert digest(existing) == before
    assert leftovers(existing.parent) == []


def _mount_tmpfs(target: Path, size: int) -> str:
    mount = shutil.which("mount")
    if mount is None:
        return "no mount binary"
    result = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
    return "" if result.returncode == 0 else f"mount -t tmpfs refused here: {result.stderr.decode().strip()}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A tmpfs of a given size (root only: CI runs as root; elsewhere the tests skip with the reason)."""
    mounted: list[Path] = []

    def make(size: int) -> Path:
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        why = _mount_tmpfs(target, size)
        if why:
            pytest.skip(why)
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)


# a new export needs about its own size free until it is published: each share runs out at another artifact
@pytest.mark.parametrize("free_share", [0.1, 0.4, 0.7])
def test_a_full_disk_during_export_keeps_the_previous_export(
    small_disk: Callable[[int], Path], conv_art: Path, conv_run: Path, free_share: float
) -> None:
    total = sum(p.stat().st_size for p in conv_art.iterdir() if p.is_file())
    disk = small_disk(int(total * (1 + free_share)) + (64 << 10))
    art = Path(shutil.copytree(conv_art, disk / "art"))
    before = digest(art)
    args = [*EXPORT, "--checkpoint", str(conv_run), "--out", str(art), "--overwrite"]
    code, lines = finish(vaekit(args))
    assert_one_line(code, lines, r"No space left on device \(the disk is full")
    assert digest(art) == before
    assert leftovers(disk) == []


def test_a_file_size_limit_at_the_end_of_bench_records_nothing(existing: Path, tmp_path: Path) -> None:
    before = digest(existing)
    args = [*BENCH, str(existing), "--record", "--json", str(tmp_path / "bench.json")]
    code, lines = finish(vaekit(args, limit=256))  # the report is longer than 256 bytes
    assert_one_line(code, lines, r"bench\.json: File too large")
    assert digest(existing) == before and not (existing / FASTEST).exists()
    assert not (tmp_path / "bench.json").exists() and stale_temps(tmp_path) == []


# --- two at once -------------------------------------------------------------------------------------


def test_two_exports_into_one_directory_one_wins_the_other_refuses(tmp_path: Path, conv_run: Path) -> None:
    out = tmp_path / "exports" / "art"
    procs = [vaekit([*EXPORT, "--checkpoint", str(conv_run), "--out", str(out)]) for _ in range(2)]
    results = sorted((finish(p) for p in procs), key=lambda r: r[0])
    assert results[0][0] == 0, results[0]
    assert_one_line(*results[1], r"in use by another vaekit process|already holds an export")
    manifest_holds(out)
    assert leftovers(out.parent) == []


def test_a_reader_waits_while_an_export_publishes(conv_art: Path) -> None:
    loaded: list[object] = []
    with dir_lock(conv_art, exclusive=True):  # what publish holds while it renames files into place
        reader = threading.Thread(target=lambda: loaded.append(open_decoder(conv_art / "decoder.onnx")))
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and loaded == []  # waiting, not reading a half-published directory
    reader.join(timeout=WAIT_S)
    assert len(loaded) == 1


def test_bench_does_not_record_for_an_export_that_replaced_the_one_it_measured(existing: Path) -> None:
    from vaekit.runtimes.measuring.bench import BenchSettings, run_bench

    measured_on = manifest_digest(existing)
    report = run_bench(
        existing,
        BenchSettings([1], ["onnxruntime"], ["decoder"], warmup=0, min_runs=1, min_seconds=0.0, max_seconds=0.1),
    )
    (existing / MANIFEST).write_text((existing / MANIFEST).read_text().replace("{", '{"again": 1, ', 1))
    with pytest.raises(Exception, match=r"exported again while bench measured it: nothing recorded"):
        record(existing, report, measured_on)
    assert not (existing / FASTEST).exists()
    assert record(existing, report, manifest_digest(existing)).is_file()


def test_two_trainings_of_one_run_directory(tmp_path: Path, conv_run: Path) -> None:
    run = Path(shutil.copytree(conv_run, tmp_path / "run"))
    args = ["train", "--out", str(run), "--resume", "--epochs", "100000"]
    first = vaekit(args)
    try:
        lock = run / LOCK_FILE
        _wait_until(lambda: lock.exists() and lock.read_text().startswith(f"{first.pid} "), first, "the lock")
        assert_one_line(*finish(vaekit(args)), rf"in use by another vaekit process \(pid {first.pid}")
    finally:
        first.kill()
        first.wait()


# --- signals -----------------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.communicate()[1]!r}"
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s"
        time.sleep(0.01)


def _staged(parent: Path, name: str) -> Callable[[], bool]:
    return lambda: any((d / name).exists() for d in parent.glob(".*.staging-*") if d.is_dir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["staging", "encoder.onnx"])
def test_a_signal_during_export_keeps_the_previous_export(
    existing: Path, conv_run: Path, signum: int, moment: str
) -> None:
    before = digest(existing)
    proc = vaekit([*EXPORT, "--checkpoint", str(conv_run), "--out", str(existing), "--overwrite"])
    try:
        staged = (lambda: any(existing.parent.glob(".*.staging-*"))) if moment == "staging" else None
        _wait_until(staged or _staged(existing.parent, moment), proc, f"the export's {moment}")
        proc.send_signal(signum)
        code, lines = finish(proc)
    finally:
        proc.kill()
    assert code == 128 + signum and len(lines) == 1 and "interrupted" in lines[0], (code, lines)
    assert digest(existing) == before
    assert leftovers(existing.parent) == []


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see bench's measuring child")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_bench_records_nothing(existing: Path, signum: int) -> None:
    before = digest(existing)
    proc = vaekit([*BENCH, str(existing), "--record", "--min-seconds", "60", "--max-seconds", "60"])
    try:
        _wait_until(lambda: bool(_children(proc.pid)), proc, "bench's measuring child")
        time.sleep(0.5)
        proc.send_signal(signum)
        code, lines = finish(proc)
    finally:
        proc.kill()
    assert code == 128 + signum and len(lines) == 1 and "interrupted" in lines[0], (code, lines)
    assert digest(existing) == before and not (existing / FASTEST).exists()
