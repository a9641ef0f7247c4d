"""The import rules of DESIGN.md, read from the source at every depth (imports inside functions too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the import package it is installed as (pyproject.toml's package-dir mapping)
PACKAGES = {"vaekit": "vaekit", "export": "vaekit.export", "runtimes": "vaekit.runtimes"}
TORCH_CORE = {"vaekit.model", "vaekit.train", "vaekit.evaluate", "vaekit.checkpoint"}
TORCH_BACKEND = "vaekit.runtimes.backends.pyt"
# The rooms of runtimes/, lowest first: a room imports its own modules and those of rooms below it. The top
# (the interface, artifact names, the CPU, the registry, generate) is the floor every room stands on.
RUNTIME_ROOMS = ("top", "backends", "proving", "measuring")
ONE_PLACE = ("decoder.onnx", "manifest.json", "parity.json", "parity_inputs.npz", "config.json", "model.safetensors")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every vaekit module this file imports, at any depth; `from pkg import mod` counts as pkg.mod."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = sources()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m == "vaekit" or m.startswith("vaekit.")}


def part(module: str) -> str:
    if module == "vaekit.__main__":  # `python -m vaekit` is the command line
        return "cli"
    for prefix in ("vaekit.cli", "vaekit.export", "vaekit.runtimes"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    return "core"


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name) - {name} for name, path in sources().items()}


def test_the_resolver_sees_nested_and_mapped_imports() -> None:
    edges = graph()
    assert "vaekit.runtimes.registry" in edges["vaekit.runtimes.proving.parity"]  # a mapped package
    assert "vaekit.export.precisions.int8" in edges["vaekit.export.pipeline"]  # imported inside a function
    assert "vaekit.export.precisions.bf16" in edges["vaekit.export.tensorrt.engines"]
    assert "vaekit.runtimes.registry" in edges["vaekit.runtimes.measuring.machine"]  # also inside a function


def test_parts_import_only_downwards() -> None:
    allowed = {"core": {"core"}, "runtimes": {"core", "runtimes"}, "export": {"core", "runtimes", "export"}}
    allowed["cli"] = {"core", "runtimes", "export", "cli"}
    wrong = [f"{src} -> {dst}" for src, dsts in graph().items() for dst in dsts if part(dst) not in allowed[part(src)]]
    assert not wrong, wrong


def test_only_the_pytorch_backend_reaches_into_the_torch_core() -> None:
    wrong = [
        f"{src} -> {dst}"
        for src, dsts in graph().items()
        if part(src) == "runtimes" and src != TORCH_BACKEND
        for dst in dsts & TORCH_CORE
    ]
    assert not wrong, wrong


def room(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[2] in RUNTIME_ROOMS else "top"


def test_runtime_rooms_import_only_downwards() -> None:
    edges = graph()
    rank = {name: i for i, name in enumerate(RUNTIME_ROOMS)}
    wrong = [
        f"{src} -> {dst}"
        for src, dsts in edges.items()
        if part(src) == "runtimes"
        for dst in dsts
        if part(dst) == "runtimes" and rank[room(dst)] > rank[room(src)]
    ]
    assert not wrong, wrong
    assert {room(m) for m in edges if part(m) == "runtimes"} == set(RUNTIME_ROOMS)


def test_each_room_says_what_it_is_for() -> None:
    for folder in [p for p in (ROOT / "runtimes").rglob("*") if p.is_dir() and p.name != "__pycache__"]:
        init = folder / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), folder


def test_a_backend_is_one_file_in_the_backends_room() -> None:
    from vaekit.runtimes.registry import BACKENDS

    for backend in BACKENDS.values():
        assert (ROOT / "runtimes" / "backends" / f"{backend.module}.py").is_file(), backend.name
        assert room(backend.import_path) == "backends"


def test_the_public_imports_hold() -> None:
    import vaekit.runtimes as runtimes

    names = ("load_encoder", "load_decoder", "open_encoder", "open_decoder", "describe", "BACKENDS")
    assert all(callable(getattr(runtimes, n)) for n in names[:-1])
    assert set(runtimes.BACKENDS) >= {"pyt", "onnxrt", "openvino", "trt", "browser"}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt in edges and not state.get(nxt):
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(edges):
        if not state.get(start):
            visit(start, [start])
    assert not cycles, cycles


def test_artifact_names_are_written_in_one_place() -> None:
    for literal in ONE_PLACE:
        writers = [
            str(path.relative_to(ROOT))
            for path in sources().values()
            if re.search(rf"[\"']{re.escape(literal)}[\"']", path.read_text())
        ]
        assert len(writers) <= 1, (literal, writers)  # 0: composed there (role + precision suffix)


def test_files_stay_small() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sources().values() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
