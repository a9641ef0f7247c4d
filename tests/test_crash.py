"""Crash safety: SIGKILL mid-epoch then --resume, Ctrl-C then the command it suggests, atomic writes under SIGKILL,
the run lock, the NaN guard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from tests.conftest import write_blob_mnist
from tests.test_cli import assert_one_line_error, run
from vaekit.checkpoint import load_config, load_model, load_trainer
from vaekit.fsutil import remove_stale_temps, stale_temps
from vaekit.train import LOSS_PNG, METRICS_FILE, RECON_PNG, RUN_FILES, SAMPLES_PNG

TIMING = ("seconds", "images_per_s")
MODEL_ARGS = ["--image-size", "32", "--latent-dim", "4", "--hidden-dims", "8,16,16,16", "--batch-size", "32"]
WAIT_S = 90


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 images: an epoch lasts long enough (about 2 s on one core) to be killed in the middle of it."""
    return write_blob_mnist(tmp_path_factory.mktemp("blobs4k"), 4096, 256, seed=2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The killed subprocess runs on one thread; in-process runs must too for bit-identical results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process (if it still runs) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(condition: object, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metrics(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_every_file_parses(run_dir: Path) -> None:
    load_config(run_dir)
    load_model(run_dir)
    load_trainer(run_dir, load_model(run_dir)[0])
    metrics(run_dir)
    for name in (SAMPLES_PNG, RECON_PNG, LOSS_PNG):
        with Image.open(run_dir / name) as img:
            img.load()
    visible = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
    assert visible <= set(RUN_FILES), visible


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, slow_data: Path, one_thread: None
) -> None:
    # a checkpoint every epoch: a SIGKILL, which nothing can catch, then loses only the epoch it hit
    args = ["--data", f"mnist:{slow_data}", *MODEL_ARGS, "--epochs", "2", "--device", "cpu", "--checkpoint-every", "0"]
    crashed, full = tmp_path / "crashed", tmp_path / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "vaekit", "train", *args, "--out", str(crashed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # config.json is written under the lock, before epoch 1: a second process is refused from then on
        wait_for(lambda: (crashed / "config.json").exists(), proc, "the run to start")
        config = (crashed / "config.json").read_bytes()
        for flags in (["--resume"], ["--overwrite", *args]):
            code, _, err = run("train", "--out", str(crashed), *flags)
            assert_one_line_error(code, err, f"in use by another vaekit process (pid {proc.pid}")
        assert (crashed / "config.json").read_bytes() == config

        # loss.png is the last file an epoch writes: once it exists, epoch 2 is running
        wait_for(lambda: (crashed / LOSS_PNG).exists(), proc, "the first checkpoint")
        epoch_s = json.loads((crashed / METRICS_FILE).read_text().splitlines()[0])["seconds"]
        time.sleep(0.25 * epoch_s)
        assert proc.poll() is None, "training finished before it could be killed"
    finally:
        sigkill(proc)
    assert proc.returncode == -signal.SIGKILL

    # killed in epoch 2: what is on disk is the complete epoch-1 state, every file whole
    assert load_trainer(crashed, load_model(crashed)[0]).epoch == 1
    assert [r["epoch"] for r in metrics(crashed)] == [1]
    assert_every_file_parses(crashed)

    code, _, err = run("train", "--out", str(crashed), "--resume")
    assert code == 0, err
    assert stale_temps(crashed) == []
    assert_every_file_parses(crashed)

    code, _, err = run("train", *args, "--out", str(full))
    assert code == 0, err
    assert metrics(crashed) == metrics(full)
    assert [r["epoch"] for r in metrics(full)] == [1, 2]
    a, b = load_file(str(crashed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in b)


# The tiny digits setup: 26 steps an epoch, about a second each on one core, long enough to be interrupted.
TINY_DIGITS = ["--image-size", "16", "--latent-dim", "4", "--hidden-dims", "8,16", "--device", "cpu"]


def start_training(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "vaekit", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen[str], text: str) -> None:
    """Read the child's stdout up to the first line holding text (a watchdog kills a child that hangs)."""
    watchdog = threading.Timer(WAIT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if text in line:
                return
        raise AssertionError(f"training exited ({proc.wait()}) before printing {text!r}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
    finally:
        watchdog.cancel()


def ctrl_c(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[int, list[str]]:
    """SIGINT as a terminal's Ctrl-C sends it (or SIGTERM, as kill and schedulers do); returns the exit
    code and stderr's non-empty lines."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


def train_then_ctrl_c(
    args: list[str], after: str, wait_s: float = 0.0, signum: int = signal.SIGINT
) -> tuple[int, list[str]]:
    """Start `vaekit train`, press Ctrl-C once `after` is printed (and wait_s more), reap it either way."""
    proc = start_training(args)
    try:
        read_until(proc, after)
        time.sleep(wait_s)
        return ctrl_c(proc, signum)
    finally:
        sigkill(proc)


def test_ctrl_c_in_epoch_1_leaves_nothing_and_the_same_command_works(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # batch 4: 405 steps, an epoch of ~1 s on a fast CPU, so 0.3 s after the header is inside it on any machine
    args = [*TINY_DIGITS, "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    code, lines = train_then_ctrl_c(args, "steps ", 0.3)  # the header's last line: epoch 1 starts now
    assert code == 130 and len(lines) == 1, lines
    said = r"interrupted (before epoch 1|in epoch 1 \(batch \d+/405\)): no epoch finished, so nothing was kept in "
    assert re.fullmatch(said + re.escape(f"{out}; run the same command again"), lines[0]), lines[0]
    assert not out.exists()
    code, _, err = run("train", *args)
    assert code == 0, err


@pytest.mark.parametrize(("signum", "code_wanted"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_after_epoch_1_then_the_suggested_command_resumes(tmp_path: Path, signum: int, code_wanted: int) -> None:
    out = tmp_path / "run"
    args = [*TINY_DIGITS, "--epochs", "2", "--out", str(out)]
    # printed once epoch 1 finished, which the default interval has not written yet: the signal writes it
    code, lines = train_then_ctrl_c(args, "epoch 1/2  train loss", signum=signum)
    assert code == code_wanted and len(lines) == 1, lines
    at = r"interrupted (in epoch 2 \(batch \d+/26\)|after epoch 1): epoch 1 is saved in "
    assert re.match(at + re.escape(f"{out}; continue with: "), lines[0]), lines[0]
    command = shlex.split(lines[0].split("continue with: ")[1])
    assert command[:2] == ["vaekit", "train"]
    assert_every_file_parses(out)
    code, stdout, err = run(*command[1:])
    assert code == 0, err
    assert "resuming from epoch 1 of 2" in stdout
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


WRITER = """
import sys
from pathlib import Path
from vaekit.fsutil import atomic_write_bytes
target, size = Path(sys.argv[1]), int(sys.argv[2])
payloads = [bytes([65 + i]) * size for i in range(2)]
atomic_write_bytes(target, payloads[0])
print("ready", flush=True)
i = 0
while True:
    i += 1
    atomic_write_bytes(target, payloads[i % 2])
"""


@pytest.mark.parametrize("delay_ms", [0, 7, 23, 61])
def test_sigkill_during_atomic_writes_leaves_old_or_new_never_a_mix(tmp_path: Path, delay_ms: int) -> None:
    size = 4 << 20
    target = tmp_path / "weights.bin"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n", proc.stderr
        time.sleep(delay_ms / 1000)
    finally:
        sigkill(proc)
    data = target.read_bytes()
    assert len(data) == size and data in (b"A" * size, b"B" * size)
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == [target.name]
    leftovers = stale_temps(tmp_path)  # a write the kill interrupted, hidden and never under the real name
    assert remove_stale_temps(tmp_path) == leftovers
    assert stale_temps(tmp_path) == [] and target.read_bytes() == data


def test_run_lock_is_held_by_another_process(tmp_path: Path) -> None:
    """A process that is not training (here: holding the lock and sleeping) still keeps the run dir."""
    holder = "import sys, time\nfrom pathlib import Path\nfrom vaekit.fsutil import run_lock\n"
    holder += "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        code, _, err = run("train", "--epochs", "1", "--out", str(tmp_path))
        assert_one_line_error(code, err, f"{tmp_path} is in use by another vaekit process (pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the lock with its holder: no stale lock to clean by hand
    assert not (tmp_path / "config.json").exists()


def tiny_args(mnist_dir: Path) -> list[str]:
    return ["--data", f"mnist:{mnist_dir}", *MODEL_ARGS, "--device", "cpu"]


def test_nan_guard_from_the_cli(tmp_path: Path, mnist_dir: Path) -> None:
    # a KL weight past float32's range turns the first loss into inf: nothing is written for epoch 1
    fresh = tmp_path / "fresh"
    code, _, err = run("train", *tiny_args(mnist_dir), "--beta", "1e39", "--epochs", "1", "--out", str(fresh))
    assert_one_line_error(code, err, "loss became inf at epoch 1, batch 0: stopped; no checkpoint was written")
    assert not (fresh / "model.safetensors").exists()

    # the same in epoch 2 of a run: the epoch-1 checkpoint stays byte for byte
    run_dir = tmp_path / "run"
    code, _, err = run("train", *tiny_args(mnist_dir), "--epochs", "1", "--out", str(run_dir))
    assert code == 0, err
    cfg = load_config(run_dir)
    cfg.loss.beta, cfg.train.epochs = 1e39, 2
    (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    before = digest(run_dir)
    for extra in ([], ["--detect-anomaly"]):
        code, _, err = run("train", "--out", str(run_dir), "--resume", *extra)
        assert_one_line_error(
            code, err, "loss became inf at epoch 2, batch 0: stopped; the checkpoint of epoch 1 is kept"
        )
        assert digest(run_dir) == before


def test_detect_anomaly_changes_nothing_but_speed(tmp_path: Path, mnist_dir: Path) -> None:
    plain, checked = tmp_path / "plain", tmp_path / "checked"
    assert run("train", *tiny_args(mnist_dir), "--epochs", "1", "--out", str(plain))[0] == 0
    code, _, err = run("train", *tiny_args(mnist_dir), "--epochs", "1", "--detect-anomaly", "--out", str(checked))
    assert code == 0, err
    assert metrics(plain) == metrics(checked)
