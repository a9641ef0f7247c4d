"""Partial installs: every command, with each package it cannot start without made unimportable, ends in one
line naming the package and the extra that brings it. The real CLI runs in a subprocess where
`sys.modules[name] = None` makes `import name` fail, as on a machine without it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaekit import extras
from vaekit.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = (
    "import sys\n"
    "blocked, args = sys.argv[1], sys.argv[2:]\n"
    "for name in filter(None, blocked.split(',')):\n"
    "    sys.modules[name] = None\n"
    "from vaekit.cli.main import main\n"
    "sys.argv = ['vaekit', *args]\n"
    "main()\n"
)


def vaekit_without(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, ",".join(blocked), *args], capture_output=True, text=True, timeout=120
    )


def command_line(command: str, tmp: Path) -> list[str]:
    """A command line that would get past argument parsing (and fail later, on files that are not there)."""
    return {
        "train": ["train", "--out", str(tmp / "run"), "--epochs", "1"],
        "eval": ["eval", "--checkpoint", str(tmp / "nope")],
        "export": ["export", "--checkpoint", str(tmp / "nope"), "--out", str(tmp / "art")],
        "build-engine": ["build-engine", str(tmp / "decoder.onnx")],
        "bench": ["bench", str(tmp)],
    }[command]


PAIRS = [(command, module) for command, modules in extras.NEEDS.items() for module in modules]


@pytest.mark.parametrize(("command", "module"), PAIRS, ids=[f"{c}-without-{m}" for c, m in PAIRS])
def test_a_missing_package_is_one_line_naming_it_and_its_extra(command: str, module: str, tmp_path: Path) -> None:
    result = vaekit_without((module,), *command_line(command, tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert extras.package_of(module) in lines[0], lines[0]
    assert re.search(rf"pip install 'vaekit\[([\w,]+,)?{extras.extra_of(module)}(,[\w,]+)?\]'", lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_torch_without_safetensors_is_the_issue_case(tmp_path: Path) -> None:
    """The reported case: torch installed, the rest of the train extra not."""
    result = vaekit_without(("safetensors", "onnxscript", "sklearn"), *command_line("train", tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: `vaekit train` needs safetensors, which is not installed: pip install 'vaekit[train]'"
    )


def test_several_missing_extras_are_one_install_line(tmp_path: Path) -> None:
    result = vaekit_without(("safetensors", "onnxruntime"), *command_line("export", tmp_path))
    assert "needs safetensors, onnxruntime, which are not installed: pip install 'vaekit[train,cpu]'" in result.stderr


def test_doctor_lists_per_command_what_is_missing() -> None:
    result = vaekit_without(("safetensors", "tensorrt"), "doctor")
    assert result.returncode == 0, result.stderr
    rows = {m[1]: m[2] for m in re.finditer(r"commands / ([\w-]+)\s*│ (.*?)\s*│", result.stdout)}
    assert set(rows) == set(extras.NEEDS), rows
    assert rows["train"].startswith("missing safetensors (vaekit[train])")
    assert rows["export"].startswith("missing safetensors (vaekit[train])")
    assert "tensorrt (vaekit[trt])" in rows["build-engine"]  # its backend says so after the request's own checks
    assert rows["download"] == "ok"
    assert "tensorrt (vaekit[trt])" in rows["generate"] and rows["generate"].startswith("ok; optional")


def test_report_reads_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras, "missing", lambda modules: [m for m in modules if m == "onnxruntime"])
    report = extras.report()
    assert report["bench"] == "missing onnxruntime (vaekit[cpu])"
    assert report["parity"] == "ok; optional, not installed: onnxruntime (vaekit[cpu])"
    assert report["train"] == "ok"


def test_every_command_has_a_row_and_every_module_an_extra() -> None:
    commands = {info.name or (info.callback.__name__ if info.callback else "") for info in app.registered_commands}
    assert set(extras.NEEDS) == commands
    assert set(extras.MAY_USE) <= commands
    for module in {m for table in (extras.NEEDS, extras.MAY_USE) for ms in table.values() for m in ms}:
        assert extras.extra_of(module) in extras.EXTRAS  # raises StopIteration for a module no extra brings


def test_the_table_mirrors_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in extras.EXTRAS.items():
        names = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0] for spec in declared.get(extra, [])}
        assert {package for _, package in packages} == names, extra
