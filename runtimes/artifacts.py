"""What an artifact directory holds, named once: file names, roles, precisions, tensor names, and the
readers of its manifest, provenance and parity inputs.

Everything that reads or writes an export directory takes its names from here; the run directory's
names (the checkpoint format) come from `vaekit.config`, which core writes.
"""

from __future__ import annotations

import json
import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vaekit.config import CONFIG_FILE, MODEL_FILE
from vaekit.errors import VaekitError
from vaekit.fsutil import dir_lock, sha256_file

Role = Literal["encoder", "decoder"]
ROLES: tuple[Role, ...] = ("encoder", "decoder")
WITH_ARTICLE = {"encoder": "an encoder", "decoder": "a decoder"}  # for messages that name a role
# Precision -> the suffix its graphs carry ("decoder.fp16.onnx"); fp32 is the portable graph itself.
PRECISION_SUFFIX = {"fp32": "", "fp16": ".fp16", "bf16": ".bf16", "int8": ".int8"}
PRECISIONS = tuple(PRECISION_SUFFIX)
# Tensor names of the two graphs: the ONNX exporter writes them, every backend feeds and reads them.
INPUT_NAME: dict[str, str] = {"encoder": "image", "decoder": "z"}
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {"encoder": ("mu", "log_var"), "decoder": ("image",)}

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".plan", ".engine")
CHECKPOINT_SUFFIX = ".safetensors"
MANIFEST = "manifest.json"
PARITY_JSON = "parity.json"
PARITY_PNG = "parity.png"
PARITY_INPUTS = "parity_inputs.npz"
GOLDEN_OUTPUTS = "golden_outputs.npz"  # the PyTorch fp32 model's outputs for the parity inputs
FASTEST = "fastest.json"  # the fastest verified runtime per graph and batch, as measured by `vaekit bench`
WEB_DIR = "web"  # the browser bundle's folder in an artifact directory
CPU_SUFFIX = ".cpu"  # decoder.cpu.onnx: the fp32 graph with the exact CPU rewrites applied, for plain ONNX Runtime
WEB_SUFFIX = ".web"  # decoder.web.onnx: the fp32 graph with the exact rewrites that pay off in ONNX Runtime Web
SIDECAR_SUFFIX = ".json"  # decoder.plan -> decoder.plan.json, decoder.pte -> decoder.pte.json
PTE_SUFFIX = ".pte"  # an ExecuTorch program lowered to XNNPACK
NCNN_PARAM_SUFFIX, NCNN_BIN_SUFFIX = ".ncnn.param", ".ncnn.bin"  # an ncnn net: layers (text) and weights
MOBILE_PRECISIONS = {"executorch": ("fp32", "int8"), "ncnn": ("fp32", "fp16")}  # what each writes
TIMING_CACHE = "tensorrt.timing.cache"  # beside the plans; shared by the encoder and decoder builds
# What `vaekit export` publishes: an older export's files of these kinds that the new one did not write go.
PUBLISHED = (
    "*" + ONNX_SUFFIX,
    "*.plan",
    "*.plan" + SIDECAR_SUFFIX,
    "*" + PTE_SUFFIX,
    "*" + PTE_SUFFIX + SIDECAR_SUFFIX,
    "*" + NCNN_PARAM_SUFFIX,
    "*" + NCNN_BIN_SUFFIX,
    "*" + NCNN_PARAM_SUFFIX + SIDECAR_SUFFIX,
    MANIFEST,
    PARITY_JSON,
    PARITY_PNG,
    PARITY_INPUTS,
    GOLDEN_OUTPUTS,
    FASTEST,
)
RUN_CONFIG, RUN_WEIGHTS = CONFIG_FILE, MODEL_FILE


def onnx_name(role: str, precision: str = "fp32") -> str:
    return f"{role}{PRECISION_SUFFIX[precision]}{ONNX_SUFFIX}"


def cpu_graph_name(role: str) -> str:
    return f"{role}{CPU_SUFFIX}{ONNX_SUFFIX}"


def web_graph_name(role: str) -> str:
    return f"{role}{WEB_SUFFIX}{ONNX_SUFFIX}"


def plan_name(role: str) -> str:
    return f"{role}{ENGINE_SUFFIXES[0]}"


def pte_name(role: str, precision: str = "fp32") -> str:
    return f"{role}{PRECISION_SUFFIX[precision]}{PTE_SUFFIX}"


def ncnn_name(role: str, precision: str = "fp32") -> str:
    """The .param file; its weights are ncnn_bin(the param's path)."""
    return f"{role}{PRECISION_SUFFIX[precision]}{NCNN_PARAM_SUFFIX}"


def ncnn_bin(param: Path) -> Path:
    return param.with_name(param.name.removesuffix(NCNN_PARAM_SUFFIX) + NCNN_BIN_SUFFIX)


def companions(path: Path) -> list[Path]:
    """Files an artifact loads beside itself, which the manifest vouches for with it (an ncnn net's weights)."""
    return [ncnn_bin(path)] if path.name.endswith(NCNN_PARAM_SUFFIX) else []


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file()


def is_artifact_dir(path: Path) -> bool:
    return any((path / onnx_name(role)).is_file() for role in ROLES)


def resolve(path: Path, role: str) -> Path:
    """A run directory -> its weights; an artifact directory -> its fp32 <role>.onnx; a file -> itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        if is_run_dir(path):
            return path / RUN_WEIGHTS
        candidate = path / onnx_name(role)
        if candidate.is_file():
            return candidate
        raise VaekitError(f"{path} holds neither a run ({RUN_CONFIG}) nor {candidate.name}")
    if not path.exists():
        raise VaekitError(f"{path} not found")
    return path


def artifact_dir_of(path: Path) -> Path:
    """The export directory a command that reads a whole export (parity, bench) was given, or one line why not."""
    path = Path(path).expanduser()
    if not path.is_dir():
        why = "" if path.exists() else " (not found)"
        raise VaekitError(f"{path} is not an artifact directory{why}")
    if is_run_dir(path) and not is_artifact_dir(path):
        raise VaekitError(f"{path} is a run directory, not an artifact directory: export it first (vaekit export)")
    decoder = path / onnx_name("decoder")
    if not decoder.is_file():
        raise VaekitError(f"{decoder} not found: {path} is not an artifact directory")
    return path


def artifact_files(artifact_dir: Path) -> list[tuple[Role, Path]]:
    """(role, path) of every ONNX graph, TensorRT engine, ExecuTorch program and ncnn net in an export directory."""
    found: list[tuple[Role, Path]] = []
    for role in ROLES:
        found += [(role, artifact_dir / onnx_name(role, p)) for p in PRECISIONS]
        found.append((role, artifact_dir / cpu_graph_name(role)))
        found.append((role, artifact_dir / web_graph_name(role)))
        found.append((role, artifact_dir / plan_name(role)))
        found += [(role, artifact_dir / pte_name(role, p)) for p in MOBILE_PRECISIONS["executorch"]]
        found += [(role, artifact_dir / ncnn_name(role, p)) for p in MOBILE_PRECISIONS["ncnn"]]
    return [(role, path) for role, path in found if path.is_file()]


def read_manifest(artifact_dir: Path) -> dict[str, Any] | None:
    path = artifact_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, or a 5000-digit int
        return None
    return data if isinstance(data, dict) else None


def manifest_checkpoint(artifact_dir: Path) -> Path | None:
    """The checkpoint the manifest says these artifacts came from, when it is still there."""
    named = (read_manifest(artifact_dir) or {}).get("checkpoint")
    try:
        found = Path(named).expanduser() if isinstance(named, str) and named else None
        return found if found is not None and found.exists() else None
    except (RuntimeError, OSError):  # "~user" of no user here; a name the file system refuses (too long)
        return None


def provenance(path: Path, trust: bool = False) -> str:
    """Check an artifact against the manifest beside it; returns a line saying where it came from.

    A TensorRT engine is executable code: a file whose hash differs from the manifest's is refused unless
    the user says --trust; one with no manifest entry loads with a warning that its origin is unverified.
    """
    manifest = read_manifest(path.parent)
    files = (manifest or {}).get("files")
    entry = files.get(path.name) if isinstance(files, dict) else None
    if manifest is None or not isinstance(entry, dict):
        where = f"no {MANIFEST} beside it" if manifest is None else f"not listed in {MANIFEST}"
        return f"{path.name}: {where}; origin not verified (load only engines you built)"
    for file in (path, *companions(path)):
        listed = files.get(file.name) if isinstance(files, dict) else None
        if not file.is_file() or not isinstance(listed, dict) or sha256_file(file) != listed.get("sha256"):
            if not trust:
                raise VaekitError(
                    f"{file} does not match the sha256 in {MANIFEST} (modified, replaced or missing?); "
                    "--trust to load it"
                )
            return f"{path.name}: sha256 differs from {MANIFEST}, loaded because of --trust"
    return f"{path.name}: sha256 matches {MANIFEST} (exported from {manifest.get('checkpoint', '?')})"


def load_inputs(artifact_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and float32 z saved at export time (no pickle), so parity runs without the dataset."""
    path = artifact_dir / PARITY_INPUTS
    if not path.is_file():
        raise VaekitError(f"{path} not found: re-export, or pass --data")
    images, z = _read_npz(path, ("images", "z"), "vaekit parity input").values()
    if images.dtype != np.uint8 or images.ndim != 4 or z.ndim != 2 or not len(images) or not len(z):
        raise VaekitError(f"{path}: expected uint8 images (N, C, H, W) and z (N, D), N >= 1")
    if z.dtype != np.float32:
        raise VaekitError(f"{path}: z must be float32, got {z.dtype}")
    return images, z


SIDECAR_FORMAT = 1


def read_sidecar(plan: Path) -> dict[str, Any] | None:
    """The JSON beside a TensorRT plan (vaekit metadata, TensorRT version, GPU, profile, hash), if any."""
    path = sidecar_path(plan)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VaekitError(f"{path} is not a vaekit engine sidecar: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or "graph_metadata" not in data:
        raise VaekitError(f"{path} is not a vaekit engine sidecar (format {SIDECAR_FORMAT} expected)")
    if not isinstance(data["graph_metadata"], dict):
        raise VaekitError(f"{path} is not a vaekit engine sidecar: graph_metadata is not an object")
    return data


def sidecar_metadata(path: Path) -> dict[str, Any]:
    """The sidecar of an artifact that keeps vaekit's metadata beside it (.pte, .ncnn.param), or one line why not."""
    sidecar = read_sidecar(path)
    if sidecar is None:
        raise VaekitError(f"{path}: no {sidecar_path(path).name} beside it; vaekit artifacts carry one (re-export)")
    return sidecar


def checked_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of a mobile artifact after checking that every file it lists has the size and sha256 it
    records: a truncated or altered .pte / .param / .bin is refused here, before a C++ parser reads it."""
    sidecar = sidecar_metadata(path)
    files = sidecar.get("files")
    expected = [path.name, *(p.name for p in companions(path))]
    if not isinstance(files, dict) or sorted(files) != sorted(expected):
        raise VaekitError(f"{sidecar_path(path)} does not list {', '.join(expected)}: re-export")
    for name in expected:
        file, entry = path.with_name(name), files[name]
        if not file.is_file():
            raise VaekitError(f"{file} not found: it is half of {path.name}")
        same = isinstance(entry, dict) and file.stat().st_size == entry.get("bytes")
        if not same or sha256_file(file) != entry.get("sha256"):
            raise VaekitError(
                f"{file} does not match the size and sha256 in {sidecar_path(path).name} (truncated or altered?): "
                "re-export"
            )
    return sidecar


GOLDEN_KEYS = ("mu", "log_var", "image")


def load_golden(artifact_dir: Path, images: np.ndarray, z: np.ndarray, trust: bool = False) -> dict[str, np.ndarray]:
    """The stored reference outputs for the parity inputs, checked against the manifest's hash (no pickle)."""
    path = artifact_dir / GOLDEN_OUTPUTS
    if not path.is_file():
        raise VaekitError(
            f"{path} not found: re-export, pass --checkpoint, or --reference-onnx to judge against the fp32 graph"
        )
    with dir_lock(artifact_dir, exclusive=False):  # the file hashed is the file read: no export between
        provenance(path, trust)
        golden = _read_npz(path, GOLDEN_KEYS, "vaekit golden output")
    shapes_ok = (
        golden["mu"].shape == golden["log_var"].shape
        and golden["mu"].ndim == 2
        and len(golden["mu"]) == len(images)
        and golden["image"].ndim == images.ndim
        and golden["image"].shape[0] == len(z)
        and golden["image"].shape[1:] == images.shape[1:]
    )
    if not shapes_ok or any(v.dtype != np.float32 for v in golden.values()):
        raise VaekitError(f"{path} does not match the parity inputs beside it (shapes or dtype differ)")
    return golden


# An export's parity inputs and golden outputs are a few MiB; an .npz declaring more is refused before it inflates.
NPZ_MAX_BYTES = 1 << 30
# Beyond bad zips and arrays: RuntimeError (an encrypted member; NotImplementedError, an unknown compression
# method, is one), lzma.LZMAError (a damaged LZMA member), MemoryError (a header whose shape no memory holds).
NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, RuntimeError, MemoryError, zipfile.BadZipFile, zlib.error,
              lzma.LZMAError)  # fmt: skip


def _read_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The named arrays of an .npz: no pickle, and never more than NPZ_MAX_BYTES inflated (zipfile reads a
    member no further than the size the archive declares for it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
        if declared > NPZ_MAX_BYTES:
            raise VaekitError(
                f"{path} declares {declared} bytes of arrays; a {what} file holds at most {NPZ_MAX_BYTES}"
            )
        with np.load(path, allow_pickle=False) as f:
            return {key: np.asarray(f[key]) for key in keys}
    except NPZ_ERRORS as exc:
        raise VaekitError(f"{path} is not a {what} file: {exc}") from None
