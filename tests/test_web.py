"""The web bundle: built from an export, its runtime checked against the pinned hash, served from its folder
only, and proven in a real browser (headless Chromium) against PyTorch.

ONNX Runtime Web comes from the user cache (or one fetch per session); offline and uncached, the tests that
need it skip with the reason, as the browser tests do where no Chromium is installed.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.cli.web import view  # importing it registers `vaekit view` even before main lists the module
from vaekit.data import to_float
from vaekit.errors import VaekitError
from vaekit.export.web.bundle import build_bundle, graph_for_the_web, publish
from vaekit.fsutil import LOCK_FILE
from vaekit.runtimes.artifacts import WEB_DIR, load_inputs, onnx_name
from vaekit.runtimes.backends import browser, web_bundle
from vaekit.runtimes.backends.web_bundle import MODEL_JSON, RUNTIME_FILES, BundleServer, folder_files
from vaekit.runtimes.base import Decoder
from vaekit.runtimes.proving.parity import TOLERANCES, judge, metrics
from vaekit.runtimes.registry import load_decoder, load_encoder

runner = CliRunner()
FP32_CPU = TOLERANCES[("fp32", "cpu")]


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX Runtime Web's files in a folder: from the verified cached tarball, fetched once if need be."""
    try:
        files = web_bundle.runtime_files()
    except VaekitError as exc:
        pytest.skip(f"ONNX Runtime Web unavailable (offline and not cached): {exc}")
    folder = tmp_path_factory.mktemp("ort-web")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture()
def art(conv_art: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny conv export (the session fixture stays as exported)."""
    return Path(shutil.copytree(conv_art, tmp_path / "art"))


def test_bundle_from_an_export(art: Path, runtime_dir: Path) -> None:
    web = build_bundle(art, runtime_dir)
    assert web == art / WEB_DIR
    model = json.loads((web / MODEL_JSON).read_text())
    graphs = model["graphs"]
    assert {p.name for p in web.iterdir()} == {*web_bundle.PAGE_FILES, *RUNTIME_FILES, MODEL_JSON, *graphs.values()}
    for role in ("decoder", "encoder"):
        assert graphs[role] == graph_for_the_web(art, role).name  # the web graph where export wrote one
        assert (web / graphs[role]).read_bytes() == (art / graphs[role]).read_bytes()
    assert (model["latent_dim"], model["image_shape"], model["max_batch"]) == (4, [1, 16, 16], 8)
    images, _ = load_inputs(art)
    mu, log_var = load_encoder(art / onnx_name("encoder"), "cpu").encode(to_float(images, (0.0, 1.0)))
    kl = (0.5 * (mu.astype(np.float64) ** 2 + np.exp(log_var) - 1 - log_var)).mean(axis=0)
    np.testing.assert_allclose(model["kl"], kl, rtol=1e-5)
    assert model["dims_by_kl"] == [int(i) for i in np.argsort(-kl, kind="stable")]
    (web / "leftover.txt").write_text("from the old bundle")
    build_bundle(art, runtime_dir)  # a rebuild replaces the whole folder
    assert not (web / "leftover.txt").exists()
    assert sorted(p.name for p in art.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE) == []


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_integrity_check_refuses_a_tampered_tarball(tmp_path: Path) -> None:
    good = _tarball({name: f"fake {name}".encode() for name in RUNTIME_FILES})
    served = tmp_path / "registry.tgz"
    served.write_bytes(good[:-8] + b"tampered")
    cache = tmp_path / "cache"
    pinned = web_bundle.integrity_of(good)
    with pytest.raises(VaekitError, match="integrity mismatch") as info:
        web_bundle.fetch_tarball(served.as_uri(), pinned, cache)
    assert "\n" not in str(info.value) and not cache.exists()  # one line, nothing cached
    served.write_bytes(good)
    assert web_bundle.fetch_tarball(served.as_uri(), pinned, cache) == good
    assert web_bundle.extract_runtime(good)[RUNTIME_FILES[0]] == f"fake {RUNTIME_FILES[0]}".encode()
    cached = web_bundle.cached_tarball(cache)
    cached.write_bytes(b"replaced in the cache")
    served.write_bytes(b"and at the registry")
    with pytest.raises(VaekitError, match="integrity mismatch"):
        web_bundle.fetch_tarball(served.as_uri(), pinned, cache)  # the damaged cache is not trusted either
    assert not cached.exists()
    with pytest.raises(VaekitError, match="cannot fetch"):
        web_bundle.fetch_tarball((tmp_path / "missing.tgz").as_uri(), pinned, cache)


def test_a_failed_build_leaves_the_old_bundle(art: Path, runtime_dir: Path, tmp_path: Path) -> None:
    web = build_bundle(art, runtime_dir)
    before = {p.name: p.read_bytes() for p in web.iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VaekitError, match="does not hold onnxruntime-web"):
        build_bundle(art, empty)
    broken = {**folder_files(web), "z.onnx": tmp_path / "vanished.onnx"}  # fails half way through the copy
    with pytest.raises(VaekitError, match="cannot write"):
        publish(broken, web)
    assert {p.name: p.read_bytes() for p in web.iterdir()} == before
    assert not [p for p in art.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match="not found"):
        build_bundle(tmp_path)  # no decoder.onnx
    result = runner.invoke(app, ["view", str(tmp_path), "--build", "--no-open"])
    assert_one_line_error(result.exit_code, result.stderr, onnx_name("decoder"))
    result = runner.invoke(app, ["view", str(tmp_path), "--no-open"])
    assert_one_line_error(result.exit_code, result.stderr, "--build")


def _get(server: BundleServer, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request("GET", path)  # sent as written: no client-side normalisation of ..
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


@pytest.fixture()
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BundleServer]:
    """`vaekit view`'s function, on port 0 in a thread, over a bundle with a secret file and a link beside it."""
    web = tmp_path / "art" / WEB_DIR
    web.mkdir(parents=True)
    (web / "index.html").write_text("<p>page</p>")
    (web / MODEL_JSON).write_text("{}")
    (tmp_path / "art" / "secret.txt").write_text("SECRET")
    (web / "link.txt").symlink_to(tmp_path / "art" / "secret.txt")
    started: list[BundleServer] = []
    ready = threading.Event()

    class Recorded(BundleServer):
        def serve_forever(self, poll_interval: float = 0.05) -> None:
            started.append(self)
            ready.set()
            super().serve_forever(poll_interval)

    monkeypatch.setattr(web_bundle, "BundleServer", Recorded)
    thread = threading.Thread(target=view, args=(tmp_path / "art",), kwargs={"port": 0, "no_open": True})
    thread.start()
    assert ready.wait(30), "vaekit view did not start serving"
    yield started[0]
    started[0].shutdown()
    thread.join(10)
    assert not thread.is_alive()


def test_the_server_serves_only_the_bundle(served: BundleServer) -> None:
    status, headers, body = _get(served, "/")
    assert (status, body) == (200, b"<p>page</p>")
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"  # wasm threads need isolation
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    for outside in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/a/../../secret.txt"):
        status, _, body = _get(served, outside)
        assert status == 403 and b"SECRET" not in body, outside
    for absent in ("/link.txt", "/secret.txt", "/nothing.js"):
        assert _get(served, absent)[0] == 404, absent


# --- in a real browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(conv_art: Path, runtime_dir: Path) -> Iterator[browser.BrowserDecoder]:
    """The tiny conv decoder on ONNX Runtime Web (wasm) in headless Chromium, through the page's hook."""
    if browser.find_chromium() is None:
        pytest.skip(f"no Chromium: {browser.INSTALL_HINT}")
    decoder = browser.load(conv_art / onnx_name("decoder"), "decoder", "wasm", runtime_dir=runtime_dir)
    assert isinstance(decoder, browser.BrowserDecoder)
    yield decoder
    decoder.close()


def test_browser_decodes_what_pytorch_decodes(page: browser.BrowserDecoder, conv_art: Path, conv_run: Path) -> None:
    assert (page.info.backend, page.info.device) == ("onnxruntime-web", "wasm")
    _, z = load_inputs(conv_art)
    reference = load_decoder(conv_run, "cpu").decode(z)
    for batch in (1, 3, len(z)):  # one page, three batch sizes: the hook splits nothing itself
        got = np.concatenate([page.decode(z[i : i + batch]) for i in range(0, len(z), batch)])
        m = metrics(reference, got, page.info.value_range)
        assert judge(m, FP32_CPU["image"]) == [], (batch, m)


def test_the_bundle_takes_the_fastest_graph_in_wasm_the_export_has(conv_art: Path, tmp_path: Path) -> None:
    """Measured in Chromium: web graph < CPU graph < portable graph (an older export has no web graph)."""
    for name in ("decoder.onnx", "decoder.cpu.onnx", "decoder.web.onnx"):
        shutil.copy(conv_art / name, tmp_path / name)
    for expected in ("decoder.web.onnx", "decoder.cpu.onnx", "decoder.onnx"):
        assert graph_for_the_web(tmp_path, "decoder").name == expected
        (tmp_path / expected).unlink()


def test_browser_decodes_the_web_graph(conv_art: Path, conv_run: Path, runtime_dir: Path) -> None:
    """The graph a bundle ships when export wrote one: its exact rewrite holds in ONNX Runtime Web too."""
    graph = graph_for_the_web(conv_art, "decoder")
    assert graph.name == "decoder.web.onnx"
    if browser.find_chromium() is None:
        pytest.skip("no Chromium")
    decoder = browser.load(graph, "decoder", "wasm", runtime_dir=runtime_dir)
    _, z = load_inputs(conv_art)
    m = metrics(load_decoder(conv_run, "cpu").decode(z), cast(Decoder, decoder).decode(z), (0.0, 1.0))
    assert judge(m, FP32_CPU["image"]) == [], m


def test_browser_encodes_what_pytorch_encodes(page: browser.BrowserDecoder, conv_art: Path, conv_run: Path) -> None:
    images = to_float(load_inputs(conv_art)[0], page.info.value_range)
    mu, log_var = load_encoder(conv_run, "cpu").encode(images)
    got_mu, got_log_var = page.runner.page.run("encode", images)
    for name, ref, got in (("mu", mu, got_mu), ("log_var", log_var, got_log_var)):
        assert judge(metrics(ref, got.reshape(ref.shape)), FP32_CPU[name]) == [], name


def test_the_page_shows_a_grid(page: browser.BrowserDecoder) -> None:
    chrome = page.runner.page.tab
    chrome.evaluate("new Promise(r => { const t = setInterval(() => document.body.dataset.ready && r(), 50); })")
    status = chrome.evaluate("document.getElementById('status').textContent")
    assert status.startswith("wasm") and "ms per image" in status, status
    box = chrome.evaluate(
        "(() => { const r = document.getElementById('grid').getBoundingClientRect(), s = devicePixelRatio;"
        " return [r.left * s, r.top * s, r.right * s, r.bottom * s].map(Math.round); })()"
    )
    with Image.open(io.BytesIO(chrome.screenshot())) as shot:
        grid = np.asarray(shot.convert("L").crop(tuple(box)), dtype=np.float64)
    assert grid.shape[0] > 100 and grid.shape[1] > 100
    assert grid.std() > 5.0, "the sample grid is blank"


def test_a_page_that_cannot_load_says_so(conv_art: Path, runtime_dir: Path) -> None:
    if browser.find_chromium() is None:
        pytest.skip(f"no Chromium: {browser.INSTALL_HINT}")
    files = web_bundle.bundle_files(conv_art / onnx_name("decoder"), None, {})  # no runtime files at all
    with pytest.raises(VaekitError, match="did not start: Error: cannot load ONNX Runtime Web"):
        browser.BrowserPage(files, browser.find_chromium() or Path())


def test_status_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert browser.status("wasm").startswith("no Chromium")
    assert "not in" in web_bundle.runtime_status(tmp_path / "empty-cache")
