"""`vaekit view`: serve an artifact directory's web bundle (the latent-space explorer) and open it."""

from __future__ import annotations

import ipaddress
import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vaekit.cli.app import DEPLOY_PANEL, command, note, out_console


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@command(DEPLOY_PANEL)
def view(
    artifacts: Annotated[Path, typer.Argument(help="Artifact directory with a web/ bundle, or the web/ folder.")],
    port: Annotated[int, typer.Option(help="Port to serve on (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to serve on; the default is this machine only.")] = "127.0.0.1",
    no_open: Annotated[bool, typer.Option("--no-open", help="Do not open a browser.")] = False,
    build: Annotated[
        bool, typer.Option("--build", help="Build (or rebuild) the bundle first, as `vaekit export --web` does.")
    ] = False,
    runtime_dir: Annotated[
        Path | None,
        typer.Option(help="With --build: ONNX Runtime Web's files from this folder instead of the npm registry."),
    ] = None,
) -> None:
    """Serve the web bundle (sample grid, latent sliders, interpolation, decode in the browser) until Ctrl-C."""
    from vaekit.runtimes.backends.web_bundle import BundleServer, find_bundle, folder_files, stale

    if build:
        from vaekit.export.web.bundle import build_bundle

        note(f"wrote {build_bundle(artifacts, runtime_dir)}")
    bundle = find_bundle(artifacts)
    if why := stale(bundle):
        note(f"{why}: `vaekit view {artifacts} --build` rebuilds it")
    server = BundleServer(folder_files(bundle), host, port)
    url = server.url
    out_console.print(f"serving [bold]{escape(str(bundle))}[/] at {escape(url)} (Ctrl-C stops)", highlight=False)
    if not _loopback(host):
        note(f"{host} is not this machine only: anyone who can reach it can load the page")
    if not no_open:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        note("stopped")
    finally:
        server.server_close()
