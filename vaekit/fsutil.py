"""Atomic file writes and the run-directory lock: nothing a user already has is ever half-written."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vaekit.errors import VaekitError

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_SUFFIX = ".tmp"
LOCK_FILE = ".lock"
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it (POSIX rename is atomic).

    A crash at any point leaves either the old file or the new one under `path`, never a mix; at worst
    a hidden `.<name>.<random>.tmp` stays behind, which `remove_stale_temps` clears.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise VaekitError(f"cannot write {path}: {ran_out(exc)}") from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise VaekitError(f"cannot write {path}: {ran_out(exc, len(data))}") from None
    _fsync_dir(path.parent)


def ran_out(exc: OSError, nbytes: int | None = None) -> str:
    """The OS's words for a failed write, plus which limit ran out when it was the disk or a size limit."""
    words = exc.strerror or str(exc)
    size = f" for {nbytes:,} bytes" if nbytes else ""
    if exc.errno == errno.ENOSPC:
        return f"{words} (the disk is full{size})"
    if exc.errno == errno.EDQUOT:
        return f"{words} (the disk quota is used up{size})"
    if exc.errno == errno.EFBIG:
        return f"{words} (over this process's file-size limit, ulimit -f{size})"
    return words


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM until the block is done, then deliver it: files that belong together (a
    checkpoint's two files and the metrics of its epoch) are never split by it. Only the main thread gets
    signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for signum in dict.fromkeys(caught):
        signal.raise_signal(signum)  # to the handler it had before: KeyboardInterrupt, or the default action


def check_output_dir(out: Path, inputs: list[Path]) -> None:
    """Refuse an output directory that is, contains or lies inside a directory the command reads from:
    writing there would mix outputs into inputs (and publishing could delete files the input holds)."""
    target = Path(out).expanduser().resolve()
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if target == src or src in target.parents or target in src.parents:
            raise VaekitError(f"the output {out} overlaps the input {source}: write to a directory of its own")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stale_temps(directory: Path) -> list[Path]:
    """Temp files `atomic_write_bytes` left in `directory` when a process died before its rename."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file())


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete leftover temp files; only call this while holding `run_lock(directory)`."""
    removed = stale_temps(directory)
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def refuse_to_replace(out: Path, what: str, alternative: str = "") -> VaekitError:
    """The one way `train` and `export` say that --out already holds their output."""
    return VaekitError(f"{out} already holds {what}: pass --overwrite to replace it{alternative}")


@contextlib.contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory/.lock` so two processes never write one run.

    flock is tied to the open file: the kernel releases it when the holder exits, even on SIGKILL, so
    a crashed run never leaves a stale lock behind (the pid in the file is only for the message). If
    nothing but the lock is in the directory at the end, the lock file this call created goes again, and
    so does a directory it created: a command that failed before writing anything (bad --data) leaves no
    empty run folder behind.
    """
    lock_path = directory / LOCK_FILE
    created = not directory.exists()
    new_lock = not lock_path.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")  # noqa: SIM115 (closed in the finally below)
    except OSError as exc:
        raise VaekitError(f"cannot write to {directory}: {ran_out(exc)}") from None
    try:
        _take(f, directory)
        yield
    finally:
        if new_lock:
            _remove_if_only_lock(directory, lock_path, created)
        f.close()  # closing drops the lock


def _take(f: IO[str], directory: Path) -> None:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        raise VaekitError(
            f"{directory} is in use by another vaekit process (pid {owner}): wait for it to finish or stop it"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}")
        f.flush()
    except OSError as exc:
        raise VaekitError(f"cannot write to {directory}: {ran_out(exc)}") from None


@contextlib.contextmanager
def dir_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """flock on the directory itself, waiting for it: readers (shared) check an artifact against the manifest
    and load it while no export publishes into the directory (exclusive), so a reader never pairs one
    export's manifest with another's graph. A directory that cannot be opened is used without the lock."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _remove_if_only_lock(directory: Path, lock_path: Path, created: bool) -> None:
    """Called while the lock is still held, so no other process is writing there."""
    with contextlib.suppress(OSError):
        if [p.name for p in directory.iterdir()] == [LOCK_FILE]:
            lock_path.unlink()
            if created:
                directory.rmdir()


class Captured:
    """What C++ code printed to fd 1 and 2 inside `captured_output()`: shown only when it explains a failure."""

    def __init__(self) -> None:
        self.text = ""

    def last_line(self) -> str:
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Redirect fd 1 and 2 to a temporary file (C++ libraries print there, past sys.stdout), then restore them."""
    import sys

    captured = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+", errors="replace") as log:
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)
            captured.text = log.read()
