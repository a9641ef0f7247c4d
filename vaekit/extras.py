"""Which optional packages each command needs, and the extra that brings them: one table, checked when a
command starts, so a partial install ends in one line naming what to install instead of a traceback."""

from __future__ import annotations

import importlib.util

from vaekit.errors import VaekitError

# extra -> (import name, package name) it installs; `pip install 'vaekit[EXTRA]'` brings them all.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("torch", "torch"),
        ("safetensors", "safetensors"),
        ("onnxscript", "onnxscript"),
        ("sklearn", "scikit-learn"),
    ),
    "cpu": (("onnxruntime", "onnxruntime"),),
}
# command -> the extras it cannot start without (runtimes a command only may use are checked by their backend).
NEEDS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "eval": ("train",),
    "export": ("train", "cpu"),
    "build-engine": ("cpu",),
    "bench": ("cpu",),
}


def missing_modules(extra: str) -> list[str]:
    """Package names of an extra that do not import here."""
    return [package for module, package in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def require(command: str) -> None:
    """Stop a command in one line when a package of an extra it needs is missing."""
    for extra in NEEDS.get(command, ()):
        missing = missing_modules(extra)
        if missing:
            raise VaekitError(
                f"`vaekit {command}` needs {', '.join(missing)}, which is not installed: pip install 'vaekit[{extra}]'"
            )


def report() -> dict[str, str]:
    """command -> 'ok' or what is missing: what `vaekit doctor` shows."""
    found = {}
    for command, extras in NEEDS.items():
        gaps = [f"{', '.join(m)} (vaekit[{e}])" for e in extras if (m := missing_modules(e))]
        found[command] = "missing " + "; ".join(gaps) if gaps else "ok"
    return found
