"""Browser backend: ONNX Runtime Web (wasm) in headless Chromium, driven over the DevTools protocol.

The graph runs in the real page of a web bundle (`web_bundle`), served from 127.0.0.1, through the page's
test hook `window.vaekit.decode` / `.encode`; numbers cross as base64 of the float32 bytes, so parity sees
exactly what the browser computed. Chromium talks over `--remote-debugging-pipe` (fds 3 and 4, one JSON
message per NUL), so nothing beyond the standard library is needed: no Node.js, no websocket package.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import WITH_ARTICLE, Role, onnx_name
from vaekit.runtimes.backends.web_bundle import BundleServer, Files, bundle_files, runtime_files, runtime_status
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

LABEL = "onnxruntime-web"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, no GPU, nothing that reaches the network on its own; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
)
WINDOW = (1280, 1600)  # CSS pixels of a tab: the whole explorer fits one screenshot
TIMEOUT_S = 60.0  # a page load compiles ~27 MB of WebAssembly: seconds on a small machine
INSTALL_HINT = "install Chromium (Debian: apt-get install chromium)"


def find_chromium(executable: str | Path | None = None) -> Path | None:
    if executable is not None:
        path = Path(executable).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    return Path(found) if found else None


def status(device: str) -> str:
    """'' when a headless Chromium and the pinned ONNX Runtime Web files are here, else why not."""
    if find_chromium() is None:
        return f"no Chromium found ({INSTALL_HINT})"
    return runtime_status()


class Chromium:
    """One headless Chromium process, spoken to over the DevTools pipe; each page is a tab of it (`Tab`)."""

    def __init__(self, executable: Path, timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="vaekit-chromium-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # The browser reads fd 3 and writes fd 4: move both ends above them, then dup2 into place in the child.
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)

        def into_place() -> None:
            os.dup2(child[0], 3)
            os.dup2(child[1], 4)

        args = [str(executable), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(3, 4),
                preexec_fn=into_place,  # dup2 only: nothing that could deadlock after fork
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise VaekitError(f"cannot start {executable}: {exc.strerror or exc}") from None
        finally:
            for fd in child:
                os.close(fd)
        self.close = weakref.finalize(self, _shut, self.process, self._write, self._read, self.profile)
        self._buffer = b""
        self._next_id = 0
        self.closing: list[str] = []  # tabs whose pages were dropped: closed before the next command

    def alive(self) -> bool:
        return self.close.alive and self.process.poll() is None

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> dict[str, Any]:
        """Send one command (to a tab's session, if named) and wait for its answer; events are dropped."""
        while self.closing:
            with contextlib.suppress(VaekitError):
                self.call("Target.closeTarget", {"targetId": self.closing.pop()})
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = memoryview(json.dumps(message).encode() + b"\0")
        try:
            while data:
                data = data[os.write(self._write, data) :]
        except OSError as exc:
            raise VaekitError(f"Chromium is gone ({exc.strerror or exc})") from None
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise VaekitError(f"Chromium {method}: {answer['error'].get('message', answer['error'])}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def _receive(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise VaekitError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise VaekitError(f"Chromium exited (code {self.process.poll()}) during {method}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed


_SHARED: dict[Path, Chromium] = {}


def shared_chromium(executable: Path) -> Chromium:
    """One Chromium per executable and process, started on first use: a load opens a tab, not a browser."""
    found = _SHARED.get(executable)
    if found is None or not found.alive():
        found = _SHARED[executable] = Chromium(executable)
    return found


class Tab:
    """One page of a Chromium: navigate, evaluate JavaScript, take a screenshot."""

    def __init__(self, chromium: Chromium) -> None:
        self.chromium, self.timeout = chromium, chromium.timeout
        self.target = chromium.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = chromium.call("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        viewport = {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", viewport)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.chromium.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); a thrown error is one line."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        answer = self.call("Runtime.evaluate", params)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "error")
            raise VaekitError(f"in the browser: {text.splitlines()[0]}")
        return answer.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        """Closed with the next command this Chromium gets: safe from a finalizer, which may run mid-command."""
        self.chromium.closing.append(self.target)


def _shut(process: subprocess.Popen[bytes], write: int, read: int, profile: str) -> None:
    """Kill Chromium and its helpers (one process group: it started a session of its own), then remove the
    profile; a helper dying a moment after its parent may still add a file, hence the second try."""
    for fd in (write, read):
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its profile is thrown away: nothing to shut down gracefully
    process.wait()
    for _ in range(2):
        shutil.rmtree(profile, ignore_errors=True)
        if not os.path.exists(profile):
            break
        time.sleep(0.1)


# JavaScript side of the transfer: float32 bytes <-> base64, in chunks (String.fromCharCode has an arg limit).
_TO_B64 = "(a => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = ''; \
for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768)); return btoa(s); })"
_FROM_B64 = "(s => new Float32Array(Uint8Array.from(atob(s), c => c.charCodeAt(0)).buffer))"


class BrowserPage:
    """A served bundle open in a tab of headless Chromium, waited on until the page's hook is ready."""

    def __init__(self, files: Files, executable: Path, query: str = "backend=wasm") -> None:
        self.server = BundleServer(files).start()
        try:
            self.tab = Tab(shared_chromium(executable))
        except BaseException:
            self.server.stop()
            raise
        self.close = weakref.finalize(self, _release, self.tab, self.server)  # also when a loaded runtime is dropped
        try:
            self.tab.open(f"{self.server.url}index.html?{query}")
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise

    def _wait_until_ready(self) -> None:
        """Until window.vaekit.ready resolves; a page that fails says why on itself, and that is the error."""
        deadline = time.monotonic() + self.tab.timeout
        shown = "document.getElementById('error')?.hidden === false && document.getElementById('error').textContent"
        while not self.tab.evaluate("typeof window.vaekit === 'object'"):
            if (error := self.tab.evaluate(shown)) or time.monotonic() > deadline:
                raise VaekitError(f"the web page did not start: {error or 'no window.vaekit'}")
            time.sleep(0.05)
        try:
            self.tab.evaluate("window.vaekit.ready")
        except VaekitError as exc:
            raise VaekitError(f"the web page did not start: {self.tab.evaluate(shown) or exc}") from None

    def run(self, hook: str, array: np.ndarray) -> list[np.ndarray]:
        """window.vaekit.<hook>(flat float32, n) -> the flat float32 array(s) it resolves to."""
        payload = base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode()
        expression = (
            f"window.vaekit.{hook}({_FROM_B64}('{payload}'), {len(array)})"
            f".then(r => (Array.isArray(r) ? r : [r]).map({_TO_B64}))"
        )
        return [np.frombuffer(base64.b64decode(b), dtype=np.float32) for b in self.tab.evaluate(expression)]


def _release(tab: Tab, server: BundleServer) -> None:
    tab.close()
    server.stop()


def graphs_for(path: Path, role: Role) -> tuple[Path, Path | None]:
    """(decoder, encoder) the page loads: the graph asked for in its role, the fp32 sibling in the other."""
    other = path.parent / onnx_name("encoder" if role == "decoder" else "decoder")
    if role == "decoder":
        return path, other if other.is_file() else None
    if not other.is_file():
        raise VaekitError(f"{path}: the web page needs {other.name} beside an encoder graph")
    return other, path


def _info(path: Path, role: Role, device: str) -> ArtifactInfo:
    from vaekit.runtimes.backends.onnxrt import load_info

    info = load_info(path)
    if info.role != role:
        raise VaekitError(f"{path} is {WITH_ARTICLE[info.role]} graph, not {WITH_ARTICLE[role]}")
    return dataclasses.replace(info, backend=LABEL, device=device)


class BrowserRunner:
    def __init__(self, path: Path, role: Role, device: str, executable: str | Path | None, runtime_dir: Path | None):
        self.info = _info(path, role, device)
        chromium = find_chromium(executable)
        if chromium is None:
            raise VaekitError(f"no Chromium at {executable}" if executable else f"no Chromium found ({INSTALL_HINT})")
        decoder, encoder = graphs_for(path, role)
        files = bundle_files(decoder, encoder, runtime_files(runtime_dir))
        self.page = BrowserPage(files, chromium)


class BrowserDecoder(Decoder):
    def __init__(self, runner: BrowserRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        (flat,) = self.runner.page.run("decode", z)
        return flat.reshape(len(z), *self.info.image_shape)

    def close(self) -> None:
        self.runner.page.close()


class BrowserEncoder(Encoder):
    def __init__(self, runner: BrowserRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.page.run("encode", images)
        return mu.reshape(len(images), -1), log_var.reshape(len(images), -1)

    def close(self) -> None:
        self.runner.page.close()


def load(
    path: Path, role: Role, device: str, executable: str | Path | None = None, runtime_dir: Path | None = None
) -> Encoder | Decoder:
    """executable: the Chromium to drive (default: the first on PATH); runtime_dir: ONNX Runtime Web's files
    from a folder instead of the cached registry tarball."""
    runner = BrowserRunner(path, role, device, executable, runtime_dir)
    return BrowserDecoder(runner) if role == "decoder" else BrowserEncoder(runner)


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    """The graph's own metadata (role: only a checkpoint holds both halves; a graph describes its own)."""
    from vaekit.runtimes.backends.onnxrt import load_info

    return dataclasses.replace(load_info(path), backend=LABEL, device="wasm")
