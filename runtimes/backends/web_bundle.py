"""What a browser needs to run a vaekit graph: ONNX Runtime Web's files, the page, a description of the
model for the page, and a static server that serves those files and nothing else.

The runtime comes from the npm registry as one pinned tarball whose sha512 must equal the registry's
`integrity` field before a byte of it is used; the verified tarball is cached, so only the first build
needs the network and no build needs Node.js. A folder the user names (an unpacked `onnxruntime-web`
package, or its `dist/`) replaces the fetch.

Why this lives in runtimes/: the browser backend builds the same file set in memory to run a graph, and
runtimes must not import export/. `vaekit.export.web.bundle` publishes it as `web/` in an artifact directory.
The page's own files are package data of `vaekit.export.web` (folder `export/web/explorer/`), located here
without importing that package.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
import io
import json
import os
import posixpath
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.data import to_float
from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes, sha256_file
from vaekit.runtimes.artifacts import INPUT_NAME, OUTPUT_NAMES, PARITY_INPUTS, WEB_DIR, load_inputs
from vaekit.runtimes.base import in_batches

ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.30.0"
# `npm view onnxruntime-web@1.30.0 dist.integrity`: the registry's hash of the tarball, in SRI form.
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
NPM_REGISTRY = "https://registry.npmjs.org"
FETCH_TIMEOUT_S = 120.0
# Two builds, each an entry module, the helper it imports and the WebAssembly binary (SIMD; threads when the
# page is cross-origin isolated). The page imports one: the plain wasm build, about twice as fast on the CPU
# as the WebGPU build's asyncify binary, unless the browser has a WebGPU adapter.
RUNTIME_BUILDS = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
RUNTIME_FILES = tuple(name for build in RUNTIME_BUILDS.values() for name in build)
PAGE_FILES = ("index.html", "app.js", "style.css")
MODEL_JSON = "model.json"  # what the page reads: shapes, value range, per-dimension KL, file names
BUNDLE_FORMAT = 1
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
}
# Cross-origin isolation: without these two headers a page gets no SharedArrayBuffer, so no wasm threads.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
Files = dict[str, "bytes | Path"]  # name in the bundle -> its content, or the file that holds it


# --- the runtime ------------------------------------------------------------------------------------------


def tarball_url(registry: str = NPM_REGISTRY) -> str:
    return f"{registry}/{ORT_WEB_PACKAGE}/-/{ORT_WEB_PACKAGE}-{ORT_WEB_VERSION}.tgz"


def cache_dir() -> Path:
    """Where the verified tarball is kept: $XDG_CACHE_HOME/vaekit, else ~/.cache/vaekit."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "vaekit"


def cached_tarball(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{ORT_WEB_PACKAGE}-{ORT_WEB_VERSION}.tgz"


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _verified(data: bytes, integrity: str) -> bool:
    return hmac.compare_digest(integrity_of(data), integrity)


def fetch_tarball(url: str | None = None, integrity: str = ORT_WEB_INTEGRITY, cache: Path | None = None) -> bytes:
    """The pinned tarball: from the cache when it still verifies, else from the registry, verified, then cached."""
    target = cached_tarball(cache)
    if target.is_file():
        data = target.read_bytes()
        if _verified(data, integrity):
            return data
        target.unlink()  # damaged or replaced: fetch it again rather than trust it
    url = url or tarball_url()
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise VaekitError(
            f"cannot fetch {ORT_WEB_PACKAGE} {ORT_WEB_VERSION} from {url}: {reason} "
            "(offline? name a folder holding its dist/ files: --runtime-dir)"
        ) from None
    if not _verified(data, integrity):
        got = integrity_of(data)
        raise VaekitError(f"{url}: integrity mismatch (expected {integrity[:22]}..., got {got[:22]}...): refused")
    atomic_write_bytes(target, data)
    return data


def extract_runtime(data: bytes) -> dict[str, bytes]:
    """Only the files the page loads, read from the tarball's package/dist/ (nothing is written to disk)."""
    wanted = {f"package/dist/{name}": name for name in RUNTIME_FILES}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile() and (f := tar.extractfile(member)) is not None:
                    found[wanted[member.name]] = f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VaekitError(f"the {ORT_WEB_PACKAGE} tarball cannot be read: {exc}") from None
    missing = [name for name in RUNTIME_FILES if name not in found]
    if missing:
        raise VaekitError(f"the {ORT_WEB_PACKAGE} {ORT_WEB_VERSION} tarball lacks {', '.join(missing)}")
    return found


def runtime_from_dir(folder: Path) -> dict[str, bytes]:
    """The runtime files from a folder the user names: the files themselves, an unpacked package, or dist/."""
    folder = Path(folder).expanduser()
    for candidate in (folder, folder / "dist", folder / "package" / "dist"):
        if all((candidate / name).is_file() for name in RUNTIME_FILES):
            return {name: (candidate / name).read_bytes() for name in RUNTIME_FILES}
    if not folder.is_dir():
        raise VaekitError(f"runtime folder {folder} not found")
    raise VaekitError(f"{folder} does not hold {ORT_WEB_PACKAGE} {ORT_WEB_VERSION}'s {', '.join(RUNTIME_FILES)}")


# (cached tarball, size, mtime) -> its runtime files: a process verifies and unpacks one tarball once.
_VERIFIED: dict[tuple[str, int, int], dict[str, bytes]] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_size, st.st_mtime_ns)


def runtime_files(runtime_dir: Path | None = None, cache: Path | None = None) -> dict[str, bytes]:
    """ONNX Runtime Web's files for a bundle: from `runtime_dir`, or the verified (cached) registry tarball."""
    if runtime_dir is not None:
        return runtime_from_dir(runtime_dir)
    tarball = cached_tarball(cache)
    files = _VERIFIED.get(_stat_key(tarball))
    if files is None:
        files = extract_runtime(fetch_tarball(cache=cache))
        _VERIFIED[_stat_key(tarball)] = files
    return dict(files)


def runtime_status(cache: Path | None = None) -> str:
    """'' when a bundle can be built here without the network, else why not."""
    if cached_tarball(cache).is_file():
        return ""
    return (
        f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION} is not in {cache or cache_dir()} "
        "(`vaekit export --web` fetches it once, online)"
    )


# --- the model and the page -------------------------------------------------------------------------------

PAGE_FOLDER = "explorer"  # the latent-space explorer page, a folder of the vaekit.export.web package


def page_dir() -> Path:
    """export/web/explorer/: the page's static files, package data of vaekit.export.web (found, not imported)."""
    spec = importlib.util.find_spec("vaekit.export.web")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise VaekitError("vaekit.export is not installed: the web page's files are missing")
    return Path(locations[0]) / PAGE_FOLDER


def latent_kl(encoder: Path, images_u8: np.ndarray, value_range: tuple[float, float]) -> list[float]:
    """Mean KL(q(z|x) || N(0, I)) per latent dimension over the saved parity images: which dimensions carry
    information, so the page puts sliders on those first."""
    from vaekit.runtimes.registry import load_encoder

    enc = load_encoder(encoder, "cpu", runtime="onnxrt")
    mu, log_var = in_batches(enc.encode, to_float(images_u8, value_range), enc.info.max_batch)
    kl = 0.5 * (mu.astype(np.float64) ** 2 + np.exp(log_var) - 1.0 - log_var)  # (N, D)
    return [float(v) for v in kl.mean(axis=0)]


def model_description(decoder: Path, encoder: Path | None) -> dict[str, Any]:
    """The page's model.json: shapes, value range, batch limit, tensor names, dimensions ordered by KL."""
    from vaekit.runtimes.registry import describe

    info = describe(decoder)
    kl: list[float] | None = None
    if encoder is not None and (encoder.parent / PARITY_INPUTS).is_file():
        kl = latent_kl(encoder, load_inputs(encoder.parent)[0], info.value_range)
    order = sorted(range(info.latent_dim), key=lambda i: -kl[i]) if kl else list(range(info.latent_dim))
    roles = {"decoder": decoder, **({"encoder": encoder} if encoder is not None else {})}
    return {
        "format": BUNDLE_FORMAT,
        "latent_dim": info.latent_dim,
        "image_shape": list(info.image_shape),
        "value_range": list(info.value_range),
        "likelihood": info.likelihood,
        "max_batch": info.max_batch,
        "kl": kl,
        "dims_by_kl": order,
        "graphs": {role: path.name for role, path in roles.items()},
        "inputs": {role: INPUT_NAME[role] for role in roles},
        "outputs": {role: list(OUTPUT_NAMES[role]) for role in roles},
        "sha256": {path.name: sha256_file(path) for path in roles.values()},
        "runtime": {
            "package": ORT_WEB_PACKAGE,
            "version": ORT_WEB_VERSION,
            "entries": {provider: build[0] for provider, build in RUNTIME_BUILDS.items()},
        },
    }


def bundle_files(decoder: Path, encoder: Path | None, runtime: dict[str, bytes], page: Path | None = None) -> Files:
    """Every file of a bundle by name: the page, the runtime, model.json and the graphs (by their own names)."""
    page = page or page_dir()
    missing = [name for name in PAGE_FILES if not (page / name).is_file()]
    if missing:
        raise VaekitError(f"the web page's files are missing from {page}: {', '.join(missing)}")
    files: Files = {name: page / name for name in PAGE_FILES}
    files.update(runtime)
    description = model_description(decoder, encoder)
    files[MODEL_JSON] = (json.dumps(description, indent=1) + "\n").encode()
    files[decoder.name] = decoder
    if encoder is not None:
        files[encoder.name] = encoder
    return files


def folder_files(folder: Path) -> Files:
    """The files of a built bundle folder, by their path inside it; links that leave the folder are left out."""
    root = folder.resolve()
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and root in p.resolve().parents
    }


# --- serving ----------------------------------------------------------------------------------------------


class BundleServer(ThreadingHTTPServer):
    """Serves exactly the files of one bundle, with the cross-origin isolation headers wasm threads need."""

    daemon_threads = True

    def __init__(self, files: Files, host: str = "127.0.0.1", port: int = 0) -> None:
        self.files = files
        super().__init__((host, port), _BundleHandler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://{host}:{port}/"

    def start(self) -> BundleServer:
        """Serve from a daemon thread (tests, the browser backend); `vaekit view` calls serve_forever."""
        threading.Thread(target=self.serve_forever, args=(0.05,), name="vaekit-bundle-server", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _BundleHandler(BaseHTTPRequestHandler):
    server: BundleServer

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        raw = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        name = posixpath.normpath("/" + raw).lstrip("/") or PAGE_FILES[0]
        if ".." in raw.split("/") or "\\" in raw or "\0" in raw:
            self.send_error(403, "outside the bundle")
            return
        source = self.server.files.get(name)
        if source is None:
            self.send_error(404, "not in the bundle")
            return
        try:
            data = source if isinstance(source, bytes) else source.read_bytes()
        except OSError:
            self.send_error(404, "not readable")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(posixpath.splitext(name)[1], "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            with contextlib.suppress(ConnectionError):
                self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a page load is a dozen requests, and tests run servers in threads."""


def find_bundle(path: Path) -> Path:
    """A built bundle: `path` itself or its web/ folder; else one line saying how to build one."""
    path = Path(path).expanduser()
    for folder in (path, path / WEB_DIR):
        if (folder / PAGE_FILES[0]).is_file() and (folder / MODEL_JSON).is_file():
            return folder
    if not path.exists():
        raise VaekitError(f"{path} not found")
    raise VaekitError(
        f"{path} has no web bundle: build it with `vaekit view {path} --build` or `vaekit export ... --web`"
    )


def stale(bundle: Path) -> str:
    """'' when the bundle's graphs are those beside it in the artifact directory, else which one changed."""
    try:
        hashes = json.loads((bundle / MODEL_JSON).read_text()).get("sha256", {})
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):  # ValueError: bad JSON
        return f"{bundle / MODEL_JSON} is unreadable"
    if not isinstance(hashes, dict):
        return f"{bundle / MODEL_JSON} is unreadable"
    for name, digest in hashes.items():
        if "/" in name or name in ("", ".", ".."):  # only the graphs beside the bundle, never another file
            continue
        source = bundle.parent / name
        if source.is_file() and sha256_file(source) != digest:
            return f"{bundle} was built from an older {name}"
    return ""
