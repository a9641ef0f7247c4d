"""Fuzz every parser of an untrusted file: valid files mutated (bit flips, byte sets, truncation, splices, JSON
value swaps, lying headers) and random bytes. A result or a one-line VaekitError are the only allowed outcomes;
any other exception is a finding.

    python benchmarks/fuzz.py --seconds 60                 # each target for a minute; prints a table
    python benchmarks/fuzz.py --examples 5000 --targets idx,image --save /tmp/findings

How inputs are made (mutations, valid seed files, structured edits) and the long run live here; what is fuzzed
(the targets) and what was found (reproducers, xfail marks) live in tests/test_fuzz.py, which runs every target
for a bounded, derandomized number of inputs in the test suite.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vaekit.config import ModelConfig, RunConfig, TrainConfig

if TYPE_CHECKING:
    from tests.test_fuzz import Target

Files = dict[str, Any]  # file name -> bytes written into a fresh directory (other values go to `run` as they are)
META = {
    "role": "decoder", "latent_dim": "4", "image_shape": "[1, 2, 2]", "value_range": "[0.0, 1.0]", "max_batch": "8",
    "likelihood": "bernoulli", "precision": "fp32", "checkpoint_sha256": "0" * 64,
}  # fmt: skip
# JSON texts a swap puts in place of a value: wrong types, edges of number parsing, paths, deep nesting.
HOSTILE_JSON = (
    "null", "true", "0", "-1", "2147483648", "18446744073709551616", "1e999", "-1e999", "NaN", "Infinity", "-0.0",
    '""', '"\\u0000"', '"../../../etc/passwd"', '"/etc/passwd"', '"~no_such_user/x"', "[]", "{}", "[1e999, 1, 1]",
    "[-1, -1, -1]", "[0, 0, 0]", '"[1, 2, 2]"', '"1e999"', '"-5"', '{"max": [1e999]}', "[[8, 4]]", "9" * 5000,
    "[" * 50_000 + "]" * 50_000, '{"a": ' * 5000 + "1" + "}" * 5000,
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
BATCH = 200  # inputs per hypothesis run in the long mode (each run draws fresh randomness)


# --- mutations ----------------------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """The seed with 1-6 byte-level edits, or (one time in eight) random bytes of about its size."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.binary(max_size=2 * len(seed) + 16))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "delete", "splice")))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, 0x01)) | st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "splice":  # a chunk of the file copied elsewhere in it
            start = draw(st.integers(0, max(len(data) - 1, 0)))
            data[at:at] = data[start : start + draw(st.integers(1, 256))]
    return bytes(data)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += _paths(child, (*path, key))
    return found


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    return functools.reduce(lambda node, key: node[key], path, doc)


@st.composite
def json_swapped(draw: st.DrawFn, seed: Any) -> str:
    """The seed's JSON with one value swapped for a hostile one, or one key dropped."""
    doc = json.loads(json.dumps(seed))
    path = draw(st.sampled_from(_paths(doc)))
    if path and isinstance(parent := _get(doc, path[:-1]), dict) and draw(st.booleans()):
        del parent[path[-1]]
        return json.dumps(doc)
    hostile = st.sampled_from(HOSTILE_JSON)
    # the value itself, or a string holding it: metadata fields are strings that are parsed again (image_shape)
    replacement = draw(hostile | hostile.map(json.dumps) | JSON_VALUES.map(json.dumps))
    if not path:
        return replacement
    token = "\x00swap\x00"
    _get(doc, path[:-1])[path[-1]] = token
    return json.dumps(doc).replace(json.dumps(token), replacement)


def json_file(seed: Any) -> st.SearchStrategy[bytes]:
    """JSON-aware swaps, byte-level edits of the valid file, or both."""
    swapped = json_swapped(seed).map(str.encode)
    return swapped | mutated(json.dumps(seed, indent=2).encode()) | swapped.flatmap(mutated)


# --- valid files to start from, and structured edits of them ----------------------------------------------------


@functools.cache
def onnx_seed() -> bytes:
    """A tiny decoder graph carrying vaekit's metadata: z (N, 4) -> image (N, 1, 2, 2)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 2, 2], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["image"])]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 2, 2])
    model = helper.make_model(helper.make_graph(nodes, "decoder", [z], [image], [w, shape]))
    helper.set_model_props(model, META)
    return bytes(model.SerializeToString())


@st.composite
def onnx_edited(draw: st.DrawFn) -> bytes:
    """The seed graph with a metadata value, its inputs or an external-data reference edited as protobuf."""
    import onnx

    model = onnx.load_from_string(onnx_seed())
    what = draw(st.sampled_from(("metadata", "drop-input", "input-dims", "external")))
    if what == "metadata":
        props = {p.key: p.value for p in model.metadata_props}
        props[draw(st.sampled_from(sorted(props)))] = draw(st.sampled_from(HOSTILE_JSON) | st.text(max_size=30))
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
    elif what == "drop-input":
        del model.graph.input[:]
    elif what == "input-dims":
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = draw(st.integers(0, 2**62))
    else:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        location = draw(st.sampled_from(("w.bin", "../w.bin", "/etc/passwd", "a\x00b", "", "~/x")) | st.text())
        tensor.external_data.add(key="location", value=location)
    return bytes(model.SerializeToString())


PARITY = {"images": np.zeros((2, 1, 2, 2), np.uint8), "z": np.zeros((2, 4), np.float32)}
GOLDEN = {"mu": PARITY["z"], "log_var": PARITY["z"], "image": np.zeros((2, 1, 2, 2), np.float32)}
DTYPES = ("u1", "f4", "f8", "i8", "?", "c8", "f2", "U3", "V4", "O")


@st.composite
def npz_built(draw: st.DrawFn, keys: tuple[str, ...]) -> bytes:
    """An npz of arrays of any small shape and dtype, any zip method, maybe a lying .npy shape or zip header."""
    names = draw(st.lists(st.sampled_from((*keys, "other")), min_size=1, max_size=4, unique=True))
    shapes = st.lists(st.integers(0, 3), max_size=5)
    arrays = {name: np.zeros(draw(shapes), dtype=draw(st.sampled_from(DTYPES))) for name in names}
    lie = draw(st.sampled_from(("", "(1000000000000,)", "(4611686018427387904,)", "(-1,)", "(65536, 65536)", "()")))
    return npz_file(arrays, draw(st.sampled_from(ZIP_METHODS)), draw(st.sampled_from(ZIP_EDITS)), lie)


ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
ZIP_EDITS = ("none", "encrypted", "method-99", "damaged")


def npz_file(arrays: dict[str, np.ndarray], method: int = 0, edit: str = "none", lie: str = "") -> bytes:
    """An npz with valid CRCs whose claims may be false: every .npy header's shape swapped for `lie` (same header
    length), every member marked encrypted or compressed by a method zipfile lacks, or its stream damaged."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=True)
            archive.writestr(f"{name}.npy", lie_about_shape(member.getvalue(), lie) if lie else member.getvalue())
    out = bytearray(buf.getvalue())
    for magic, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(magic)
        while at >= 0 and edit in ("encrypted", "method-99"):
            if edit == "encrypted":
                out[at + flags] |= 1
            else:
                out[at + flags + 2 : at + flags + 4] = struct.pack("<H", 99)
            at = out.find(magic, at + 4)
    if edit == "damaged":  # the first member's compressed stream, past its headers
        out[60:90] = bytes(b ^ 0x5A for b in out[60:90])
    return bytes(out)


def lie_about_shape(npy: bytes, shape: str) -> bytes:
    """Swap the shape in an .npy header for another, padding so the header keeps its length."""
    start, end = npy.index(b"{"), npy.index(b"\n")
    header = npy[start:end].decode()
    at = header.index("'shape': ")
    lied = header.replace(header[at : header.index(")", at) + 1], f"'shape': {shape}").rstrip()
    return npy if len(lied) > end - start else npy[:start] + lied.ljust(end - start).encode() + npy[end:]


def json_with(seed: dict[str, Any], **raw: str) -> bytes:
    """The seed as JSON with top-level values replaced by raw JSON text (which json.dumps cannot write)."""
    text = json.dumps({**seed, **{key: f"\x00{key}\x00" for key in raw}})
    for key, value in raw.items():
        text = text.replace(json.dumps(f"\x00{key}\x00"), value)
    return text.encode()


def tiny_config() -> RunConfig:
    model = ModelConfig(arch="conv", image_size=16, latent_dim=4, hidden_dims=(8, 16))
    return RunConfig(model=model, train=TrainConfig(epochs=1, batch_size=32))


@functools.cache
def run_seed() -> dict[str, bytes]:
    """config.json, model.safetensors and trainer.safetensors of an untrained tiny conv model."""
    import torch

    from vaekit.checkpoint import save_checkpoint, snapshot
    from vaekit.model import build_model

    model = build_model(tiny_config().model)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), snapshot(model, optimizer, scheduler, 1, 1, [{"epoch": 1}]))
        files = {name: (Path(tmp) / name).read_bytes() for name in ("model.safetensors", "trainer.safetensors")}
    return {"config.json": (tiny_config().to_json() + "\n").encode(), **files}


SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I8", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "X")


@st.composite
def safetensors_edited(draw: st.DrawFn, name: str) -> bytes:
    """The file's JSON header edited (a dtype, shape, offsets or any value) and its length field kept or lying."""
    raw = run_seed()[name]
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    entry = header[draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))]
    choice = draw(st.sampled_from(("dtype", "shape", "data_offsets", "any")))
    if choice == "dtype":
        entry["dtype"] = draw(st.sampled_from(SAFETENSORS_DTYPES))
    elif choice == "shape":
        entry["shape"] = draw(st.lists(st.sampled_from((0, 1, 3, 2**31, 2**62)), max_size=4))
    elif choice == "data_offsets":
        entry["data_offsets"] = draw(st.lists(st.integers(-1, 2**64), min_size=2, max_size=2))
    text = (draw(json_swapped(header)) if choice == "any" else json.dumps(header)).encode()
    length = draw(st.sampled_from((len(text), len(text) + 1, 2**40, 0)))
    return struct.pack("<Q", length) + text + body


@functools.cache
def image_seeds() -> tuple[tuple[str, bytes], ...]:
    """Small pictures in every format a folder dataset reads, several modes."""
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 12, 3), dtype=np.uint8))
    found = []
    for suffix, mode in (("png", "RGB"), ("png", "P"), ("png", "LA"), ("png", "I;16"), ("jpg", "RGB"),
                         ("jpg", "L"), ("gif", "P"), ("bmp", "RGB"), ("tif", "RGB"), ("webp", "RGB")):  # fmt: skip
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, format={"jpg": "JPEG", "tif": "TIFF"}.get(suffix, suffix.upper()))
        found.append((suffix, buf.getvalue()))
    return tuple(found)


def idx_seed(gz: bool) -> bytes:
    raw = b"\x00\x00\x08\x03" + struct.pack(">3I", 3, 4, 4) + bytes(range(48))
    return gzip.compress(raw) if gz else raw


@st.composite
def idx_built(draw: st.DrawFn) -> bytes:
    """A header of any rank and dimensions (up to 2**32 - 1) over a short body, gzipped or not."""
    dims = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 4), max_size=draw(st.sampled_from((3, 40)))))
    raw = b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + draw(st.binary(max_size=64))
    return gzip.compress(raw) if draw(st.booleans()) else raw


def sidecar_seed() -> dict[str, Any]:
    from vaekit.export.tensorrt.build import make_sidecar

    gpu = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    profile = {"min": [1, 4], "opt": [8, 4], "max": [8, 4]}
    return make_sidecar(
        META, plan=b"plan", precision="fp32", tensorrt_version="10.3.0", gpu=gpu, profile=profile,
        source_onnx="decoder.onnx", source_sha256="0" * 64, layers={"fp32": 2}, build_seconds=1.0,
    )  # fmt: skip


def manifest_seed() -> dict[str, Any]:
    entry = {"sha256": hashlib.sha256(onnx_seed()).hexdigest(), "bytes": len(onnx_seed())}
    return {"format": 1, "checkpoint": "/no/such/run", "files": {"decoder.onnx": entry}, "parity": {"passed": True}}


# --- the long run --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    first: dict[str, tuple[Files, str]] = field(default_factory=dict)  # finding -> its first input and message
    warned: Counter[str] = field(default_factory=Counter)  # warning category -> inputs that raised one

    def record(self, target: Target, files: Files) -> None:
        try:
            with warnings.catch_warnings(record=True) as caught:  # a warning is a line on a user's stderr too
                warnings.simplefilter("always")
                self.outcomes[target.attempt(files)] += 1
            for category in {w.category.__name__ for w in caught}:
                self.warned[category] += 1
        except Exception as exc:  # a finding: named by its type and the project line that raised it
            where = [f for f in traceback.extract_tb(exc.__traceback__) if "/.venv/" not in f.filename]
            key = f"{type(exc).__name__} at {Path(where[-1].filename).name}:{where[-1].lineno}" if where else "?"
            self.outcomes[key] += 1
            self.first.setdefault(key, (files, str(exc).splitlines()[0][:110] if str(exc) else ""))


def fuzz(target: Target, seconds: float, examples: int) -> Tally:
    """Fresh hypothesis runs of BATCH inputs until the time or the input count is spent."""
    tally, stop = Tally(), time.monotonic() + seconds
    strategy = target.files()
    while sum(tally.outcomes.values()) < examples and time.monotonic() < stop:

        @settings(max_examples=BATCH, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(files=strategy)
        def batch(files: Files) -> None:
            if time.monotonic() < stop and sum(tally.outcomes.values()) < examples:
                tally.record(target, files)

        batch()
    return tally


def save(tally: Tally, target: Target, folder: Path) -> None:
    for i, (files, _) in enumerate(tally.first.values(), 1):
        out = folder / f"{target.name}-{i}"
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.test_fuzz
    from tests.test_fuzz import TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per target")
    parser.add_argument("--examples", type=int, default=10**9, help="inputs per target at most")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma list of " + ", ".join(TARGETS))
    parser.add_argument("--save", type=Path, help="write the first input of each finding under this folder")
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if unknown := sorted(set(names) - set(TARGETS)):
        parser.error(f"unknown targets {unknown}")
    found = 0
    print(f"{'target':15} {'tried':>7} {'result':>7} {'refused':>8} {'findings':>8}  parser")
    for name in names:
        target, t0 = TARGETS[name], time.monotonic()
        tally = fuzz(target, args.seconds, args.examples)
        n, findings = sum(tally.outcomes.values()), [k for k in tally.outcomes if k not in ("result", "refused")]
        print(f"{name:15} {n:7d} {tally.outcomes['result']:7d} {tally.outcomes['refused']:8d} {len(findings):8d}  "
              f"{target.parser} ({time.monotonic() - t0:.0f} s)")  # fmt: skip
        for key in findings:
            print(f"    {tally.outcomes[key]:6d} x {key}: {tally.first[key][1]}")
        for category, count in tally.warned.items():
            print(f"    {count:6d} inputs warned: {category}")
        if args.save and findings:
            save(tally, target, args.save)
        found += len(findings)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
