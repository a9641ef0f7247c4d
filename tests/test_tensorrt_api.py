"""Every TensorRT name our code uses exists in the real bindings of TensorRT 10.3 (JetPack 6) and 11.4.

The bindings wheels cannot be imported without the GPU libraries, and the published stubs do not parse,
so the names are read from the compiled module itself: pybind11 keeps every class, method, property and
enum value name as a NUL-terminated string (the linker may merge a name into the tail of a longer one,
"DataType" into "nvinfer1::DataType", so a name counts as present when it ends one of those strings),
plus the names the wheel's Python files define (`__version__`, `nptype`). A name that ends a longer one
("num_errors", "get_num_errors") can slip through; a removed name that ends nothing cannot. Properties
we set are checked exactly against the `:ivar` lists of the class docstrings. Wheels are downloaded
once into ~/.cache/vaekit and reused.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import warnings
import zipfile
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_FILES = (
    ROOT / "export" / "tensorrt" / "build.py",
    ROOT / "runtimes" / "backends" / "trt.py",
    ROOT / "runtimes" / "proving" / "layerwise" / "capture.py",
)
WHEELS = {"10.3": "tensorrt-cu12-bindings==10.3.0", "11.4": "tensorrt-cu12-bindings==11.4.0.106"}
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux_2_28_x86_64")  # any host can read an x86-64 module's names
# Variables that hold TensorRT objects in our code; attributes read on them are TensorRT API.
TRT_OBJECTS = {
    "trt",
    "builder",
    "network",
    "parser",
    "parse_error",
    "config",
    "profile",
    "net_input",
    "timing_cache",
    "serialized",
    "runtime",
    "engine",
    "context",
    "inspector",
    "logger",
}
# Weak typing and implicit-batch APIs that TensorRT 11 (or already 10) removed: never ours.
REMOVED = {
    "int8_calibrator",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "EXPLICIT_BATCH",
    "FP16",
    "INT8",
    "BF16",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "build_engine",
    "execute_async_v2",
    "execute_v2",
    "max_workspace_size",
    "get_binding_index",
    "num_bindings",
    "set_binding_shape",
}
PRINTABLE = re.compile(rb"[\x20-\x7e]{3,200}\Z")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vaekit" / "tensorrt-bindings"


def wheel(version: str) -> Path:
    """The bindings wheel for this Python, downloaded once; skips the test when the index cannot be reached."""
    spec = WHEELS[version]
    target = cache_dir() / version
    found = sorted(target.glob("*.whl"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", py]
    command += [arg for p in PLATFORMS for arg in ("--platform", p)]
    command += ["--retries", "1", "--timeout", "20", "--disable-pip-version-check", "-q", "-d", str(target), spec]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"downloading {spec} timed out (package index unreachable?)")
    found = sorted(target.glob("*.whl"))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot download {spec} for Python {py} (package index unreachable?): {last}")
    return found[0]


@cache
def bindings(version: str) -> tuple[frozenset[str], frozenset[str]]:
    """(short strings of the compiled module + names the wheel's Python defines, `:ivar` property names)."""
    tokens: set[str] = set()
    ivars: set[str] = set()
    with zipfile.ZipFile(wheel(version)) as whl:
        for member in whl.namelist():
            if re.search(r"tensorrt[^/]*\.so$", member) or member.endswith(".pyd"):
                data = whl.read(member)
                tokens |= {t.decode() for t in data.split(b"\0") if PRINTABLE.match(t)}
                ivars |= {m.decode() for m in re.findall(rb":ivar (\w+):", data)}
            elif member.endswith(".py"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # their docstrings hold invalid escapes
                    tree = ast.parse(whl.read(member))
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef | ast.ClassDef):
                        tokens.add(node.name)
                    elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
                        tokens.add(node.id if isinstance(node, ast.Name) else node.attr)
    assert len(tokens) > 1000, f"{version}: only {len(tokens)} names read; the wheel layout changed"
    return frozenset(tokens), frozenset(ivars)


def available(name: str, tokens: frozenset[str]) -> bool:
    return name in tokens or any(t.endswith(name) for t in tokens)


def _chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """trt.A.B -> ('trt', ['A', 'B']); config.get_timing_cache().serialize -> ('config', [...]); self.x.y -> ..."""
    names: list[str] = []
    current: ast.AST = node
    while True:
        if isinstance(current, ast.Attribute):
            names.append(current.attr)
            current = current.value
        elif isinstance(current, ast.Call):
            current = current.func
        elif isinstance(current, ast.Subscript):
            current = current.value
        else:
            break
    return (current.id if isinstance(current, ast.Name) else None), names[::-1]


def used_names(source: str) -> dict[str, int]:
    """TensorRT attribute names a module reads -> first line; methods our subclasses of trt classes override."""
    tree = ast.parse(source)
    own: set[str] = set()  # attributes our subclasses of TensorRT classes set on themselves
    used: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            _chain(b)[0] == "trt" for b in node.bases if isinstance(b, ast.Attribute)
        ):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    used.setdefault(item.name, item.lineno)  # a callback TensorRT calls by this name
            own |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root, names = _chain(node)
        if root == "self" and names and names[0] in TRT_OBJECTS:
            names = names[1:]
        elif root not in TRT_OBJECTS:
            continue
        for name in names:
            if name not in own:
                used.setdefault(name, node.lineno)
    return used


def assigned_names(source: str) -> set[str]:
    """Properties our code sets on TensorRT objects (`config.profiling_verbosity = ...`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            root, names = _chain(node)
            if root in TRT_OBJECTS or (root == "self" and names[:1] and names[0] in TRT_OBJECTS and len(names) > 1):
                found.add(names[-1])
    return found


@cache
def our_names() -> dict[str, str]:
    found = {}
    for path in OUR_FILES:
        for name, line in used_names(path.read_text()).items():
            found.setdefault(name, f"{path.relative_to(ROOT)}:{line}")
    return found


def test_the_collector_sees_our_build_and_run_path() -> None:
    core = {"STRONGLY_TYPED", "build_serialized_network", "set_memory_pool_limit", "set_shape", "execute_async_v3"}
    core |= {"set_input_shape", "set_tensor_address", "create_engine_inspector", "deserialize_cuda_engine", "log"}
    assert core <= set(our_names()), sorted(core - set(our_names()))


@pytest.mark.parametrize("version", sorted(WHEELS))
def test_every_tensorrt_name_we_use_exists(version: str) -> None:
    tokens, _ = bindings(version)
    missing = {name: where for name, where in our_names().items() if not available(name, tokens)}
    assert not missing, f"not in TensorRT {version}: {missing}"


@pytest.mark.parametrize("version", sorted(WHEELS))
def test_every_property_we_set_is_documented(version: str) -> None:
    """A property is exact where a method name may hide in a longer one: class docstrings list each `:ivar`."""
    assigned = set().union(*(assigned_names(p.read_text()) for p in OUR_FILES))
    assert assigned, "the collector found no property assignment"
    assert assigned <= bindings(version)[1], sorted(assigned - bindings(version)[1])


def test_we_use_no_removed_api() -> None:
    used = our_names()
    assert not REMOVED & set(used), {n: used[n] for n in REMOVED & set(used)}


def test_version_dependent_names_are_handled() -> None:
    """The engine inspector's context property was renamed: we set whichever this TensorRT has."""
    from vaekit.runtimes.backends.trt import INSPECTOR_CONTEXT

    ivars = {v: bindings(v)[1] for v in WHEELS}
    assert "execution_context" in ivars["11.4"] and "execution_context" not in ivars["10.3"]
    assert "context" in ivars["10.3"]
    for version, names in ivars.items():
        assert set(INSPECTOR_CONTEXT) & names, version


# What a TensorRT 8-era build script does; the check must flag it.
WEAK_TYPING = """
def build(trt, builder, config, context, bindings, stream):
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    config.max_workspace_size = 1 << 30
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = None
    context.execute_async_v2(bindings, stream)
"""


def test_the_check_flags_names_that_do_not_exist() -> None:
    used = used_names(WEAK_TYPING)
    gone_in_11 = {n for n in used if not available(n, bindings("11.4")[0])}
    gone_in_10 = {n for n in used if not available(n, bindings("10.3")[0])}
    assert {"EXPLICIT_BATCH", "platform_has_fast_fp16", "FP16", "int8_calibrator", "max_workspace_size"} <= gone_in_11
    assert {"max_workspace_size", "execute_async_v2"} <= gone_in_10  # removed in 10.0
    assert "int8_calibrator" not in gone_in_10  # deprecated in 10.x, still there on JetPack 6
    assert "STRONGLY_TYPED" in used_names("x = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    # The 11.x property name set on a 10.x inspector ends "create_execution_context", so only the
    # property check catches it.
    renamed = assigned_names("inspector.execution_context = context")
    assert not renamed <= bindings("10.3")[1] and renamed <= bindings("11.4")[1]
