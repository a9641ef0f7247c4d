"""The entry point: the shared app with every group of commands registered on it, in the order --help shows."""

from __future__ import annotations

import importlib

from vaekit.cli.app import app

COMMAND_MODULES = ("learn", "deploy", "engines", "bench", "web")  # importing each registers its commands on `app`
for _module in COMMAND_MODULES:
    importlib.import_module(f"vaekit.cli.{_module}")


def main() -> None:
    app()
