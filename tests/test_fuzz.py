"""Fuzzed loaders: what is fuzzed and what was found. Every parser of an untrusted file is a target; each runs
a bounded, derandomized number of inputs here (made by benchmarks/fuzz.py: mutated valid files, structured edits,
random bytes), after the reproducers of its findings. A result or a one-line VaekitError are the only allowed
outcomes. `python benchmarks/fuzz.py --seconds N` runs the same targets for longer and counts the outcomes.

A target whose finding waits for a fix in a file owned elsewhere is xfail(strict, "finding N: ..."): when the patch
from the fuzz report lands, its reason in FINDINGS becomes "" and the mark goes.
"""

from __future__ import annotations

import json
import struct
import tempfile
import types
import typing
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz as make
from benchmarks.fuzz import GOLDEN, META, PARITY, Files, json_file, mutated, npz_file, onnx_seed, run_seed, tiny_config
from vaekit.errors import VaekitError

# --- the parsers, each given a directory holding its files ---------------------------------------------------


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))


def read_config(root: Path, files: Files) -> object:
    """A config that loads is one training can use: every field holds the type it declares."""
    from vaekit.checkpoint import load_config

    cfg = load_config(root)
    for section in (cfg.model, cfg.loss, cfg.train):
        for name, hint in typing.get_type_hints(type(section)).items():
            assert _fits(getattr(section, name), hint), f"config loaded with {name}={getattr(section, name)!r}"
    return cfg


def read_onnx(root: Path, files: Files) -> object:
    from vaekit.runtimes.backends.onnxrt import load_info

    return load_info(root / "decoder.onnx")


def read_metadata(root: Path, files: Files) -> object:
    from vaekit.runtimes.base import metadata_to_info

    return metadata_to_info(files["meta"], backend="onnxruntime", device="cpu", path="decoder.onnx")


def read_plan_sidecar(root: Path, files: Files) -> object:
    from vaekit.runtimes.artifacts import read_sidecar
    from vaekit.runtimes.backends.trt import load_info

    read_sidecar(root / "decoder.plan")
    return load_info(root / "decoder.plan")


def read_manifest(root: Path, files: Files) -> object:
    from vaekit.runtimes import artifacts

    artifacts.read_manifest(root)
    artifacts.manifest_checkpoint(root)
    return artifacts.provenance(root / "decoder.onnx")


def read_parity_inputs(root: Path, files: Files) -> object:
    from vaekit.runtimes.artifacts import load_inputs

    return load_inputs(root)


def read_golden(root: Path, files: Files) -> object:
    from vaekit.runtimes.artifacts import load_golden

    return load_golden(root, PARITY["images"], PARITY["z"])


def read_weights(root: Path, files: Files) -> object:
    from vaekit.checkpoint import load_model

    return load_model(root)


def read_trainer(root: Path, files: Files) -> object:
    from vaekit.checkpoint import load_trainer
    from vaekit.model import build_model

    return load_trainer(root, build_model(tiny_config().model))


def read_fastest(root: Path, files: Files) -> object:
    """The chosen row names an artifact in the directory itself: `--runtime auto` loads it with the trust of the
    manifest beside it, so a name leaving the directory would load a file another manifest vouches for."""
    from vaekit.runtimes.measuring.fastest import choose

    artifact = choose(root, "decoder", 3).get("artifact")  # load_fastest reads entry["artifact"]
    assert isinstance(artifact, str) and "/" not in artifact and artifact not in ("", ".", ".."), artifact
    return artifact


def read_bundle_model(root: Path, files: Files) -> object:
    from vaekit.runtimes.backends.web_bundle import stale

    return stale(root / "web")


def read_idx(root: Path, files: Files) -> object:
    from vaekit.data import read_idx as read

    return read(root / "data.idx")


def read_image(root: Path, files: Files) -> object:
    from vaekit.data import load_image

    return [load_image(root / next(iter(files)), 8, channels) for channels in (1, 3)]


# --- targets --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    parser: str  # what it reads, for the report
    files: Callable[[], st.SearchStrategy[Files]]  # built on first use: seeds need onnx, torch, Pillow
    run: Callable[[Path, Files], object]
    budget: int = 150  # inputs per test-suite run

    def attempt(self, files: Files) -> str:
        """'result' or 'refused' (a one-line VaekitError); any other exception propagates: that is a finding."""
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for name, data in files.items():
                if isinstance(data, bytes):
                    (root / name).parent.mkdir(exist_ok=True)
                    (root / name).write_bytes(data)
            try:
                self.run(root, files)
            except VaekitError as exc:
                assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
                return "refused"
        return "result"


def _in(name: str, strategy: st.SearchStrategy[bytes], **beside: bytes) -> st.SearchStrategy[Files]:
    return strategy.map(lambda data: {name: data, **beside})


def _run_files(name: str) -> st.SearchStrategy[Files]:
    seed = run_seed()
    return _in(name, mutated(seed[name]) | make.safetensors_edited(name), **{"config.json": seed["config.json"]})


def _npz_files(name: str, arrays: dict[str, np.ndarray]) -> st.SearchStrategy[Files]:
    built = make.npz_built(tuple(arrays))
    return _in(name, mutated(npz_file(arrays)) | built | built.flatmap(mutated))


def _images() -> st.SearchStrategy[Files]:
    return st.sampled_from(make.image_seeds()).flatmap(lambda seed: _in(f"image.{seed[0]}", mutated(seed[1])))


METADATA_SWAPS = st.builds(
    lambda key, value: {"meta": {**META, key: value}},
    st.sampled_from(sorted(META)),
    st.sampled_from(make.HOSTILE_JSON) | st.text(max_size=30) | make.JSON_VALUES,  # a sidecar's: any JSON value
)
PLAN = {"decoder.plan": b"plan"}


def _fastest_seed() -> dict[str, Any]:
    from vaekit.runtimes.cpu import cpu_model

    rows = [{"graph": "decoder", "runtime": "onnxruntime", "precision": "fp32", "batch": b, "artifact": "decoder.onnx",
             "p50_ms": 0.1, "parity": "passed"} for b in (1, 8)]  # fmt: skip
    return {"format": 1, "machine": {"cpu": cpu_model(), "threads": 2}, "date": "2026-01-01", "best": rows}


def _bundle_seed() -> dict[str, Any]:
    import hashlib

    return {"format": 1, "sha256": {"decoder.onnx": hashlib.sha256(onnx_seed()).hexdigest()}, "latent_dim": 4}


# fmt: off
TARGETS = {t.name: t for t in (
    Target("onnx-graph", "onnxrt.read_graph + load_info",
           lambda: _in("decoder.onnx", mutated(onnx_seed()) | make.onnx_edited()), read_onnx),
    Target("onnx-metadata", "base.metadata_to_info", lambda: METADATA_SWAPS, read_metadata),
    Target("plan-sidecar", "artifacts.read_sidecar + trt.load_info",
           lambda: _in("decoder.plan.json", json_file(make.sidecar_seed()), **PLAN), read_plan_sidecar),
    Target("manifest", "artifacts.read_manifest, manifest_checkpoint, provenance",
           lambda: _in("manifest.json", json_file(make.manifest_seed()), **{"decoder.onnx": onnx_seed()}),
           read_manifest),
    Target("parity-inputs", "artifacts.load_inputs", lambda: _npz_files("parity_inputs.npz", PARITY),
           read_parity_inputs),
    Target("golden-outputs", "artifacts.load_golden", lambda: _npz_files("golden_outputs.npz", GOLDEN), read_golden),
    Target("safetensors", "checkpoint.load_model", lambda: _run_files("model.safetensors"), read_weights, 100),
    Target("trainer", "checkpoint.load_trainer", lambda: _run_files("trainer.safetensors"), read_trainer, 100),
    Target("config", "checkpoint.load_config -> RunConfig.from_json",
           lambda: _in("config.json", json_file(json.loads(run_seed()["config.json"]))), read_config),
    Target("fastest", "fastest.choose (fastest.json)",
           lambda: _in("fastest.json", json_file(_fastest_seed())), read_fastest),
    Target("web-model-json", "web_bundle.stale (web/model.json)", lambda: _in(
        "web/model.json", json_file(_bundle_seed()), **{"decoder.onnx": onnx_seed()}), read_bundle_model),
    Target("idx", "data.read_idx", lambda: _in(
        "data.idx", mutated(make.idx_seed(False)) | mutated(make.idx_seed(True)) | make.idx_built()), read_idx),
    Target("image", "data.load_image", _images, read_image),
)}
# fmt: on


# --- findings: the input that showed each, tried before any generated one ------------------------------------

DEEP = "[" * 50_000 + "]" * 50_000  # json's C decoder recurses once per level
HUGE_INT = "9" * 5000  # past Python's 4300-digit limit: int() raises ValueError, not JSONDecodeError


def _graph(edit: Callable[[Any], None]) -> Files:
    import onnx

    model = onnx.load_from_string(onnx_seed())
    edit(model)
    return {"decoder.onnx": model.SerializeToString()}


def _external(model: Any) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = 1  # onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="w\x00.bin")


def _renamed(model: Any) -> None:
    model.graph.input[0].name = "z\nsecond line"
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5


def _npz_findings(name: str, arrays: dict[str, Any]) -> list[Callable[[], Files]]:
    return [
        lambda: {name: make.npz_file(arrays, edit="encrypted")},  # RuntimeError: password required
        lambda: {name: make.npz_file(arrays, edit="method-99")},  # NotImplementedError: compression method
        lambda: {name: make.npz_file(arrays, zipfile.ZIP_LZMA, "damaged")},  # lzma.LZMAError: corrupt data
        lambda: {name: make.npz_file(arrays, lie="(1000000000000,)")},  # MemoryError: 3.6 TiB asked for
    ]


def _trainer_metadata(**meta: str) -> Files:
    from safetensors.numpy import load, save

    raw = run_seed()["trainer.safetensors"]
    (n,) = struct.unpack("<Q", raw[:8])
    old = json.loads(raw[8 : 8 + n])["__metadata__"]
    return {"config.json": run_seed()["config.json"], "trainer.safetensors": save(load(raw), {**old, **meta})}


def _config(**raw: str) -> Files:
    return {"config.json": make.json_with(json.loads(run_seed()["config.json"]), **raw)}


def _manifest(**raw: str) -> Files:
    return {"manifest.json": make.json_with(make.manifest_seed(), **raw), "decoder.onnx": onnx_seed()}


def _fastest(**raw: str) -> Files:
    return {"fastest.json": make.json_with(_fastest_seed(), **raw)}


def _bundle(**raw: str) -> Files:
    return {"web/model.json": make.json_with(_bundle_seed(), **raw), "decoder.onnx": onnx_seed()}


def _sidecar(**raw: str) -> Files:
    return {"decoder.plan.json": make.json_with(make.sidecar_seed(), **raw), **PLAN}


# target -> (its finding while the fix waits elsewhere, the inputs that showed it). Once fixed, the reason becomes ""
# and the inputs stay, as regression examples. DEEP: json's C decoder recurses once a level; HUGE_INT: past
# Python's 4300-digit limit, int() raises ValueError, not JSONDecodeError.
DEEP, HUGE_INT = "[" * 50_000 + "]" * 50_000, "9" * 5000
FIXED = ""  # every finding below is fixed; its inputs stay as regression examples
# fmt: off
FINDINGS: dict[str, tuple[str, list[Callable[[], Files]]]] = {
    "onnx-graph": (FIXED, [  # finding 1: read_graph/_check_input raise ValueError, IndexError, or a multi-line error
        lambda: _graph(_external),  # ValueError: embedded null byte, from Path.resolve
        lambda: _graph(lambda m: m.graph.ClearField("input")),  # IndexError: graph.input[0]
        lambda: _graph(_renamed)]),  # the input's name, newline and all, inside the error
    "onnx-metadata": (FIXED, [  # finding 2: metadata_to_info raises OverflowError / RecursionError
        lambda: {"meta": {**META, "image_shape": "[1e999, 1, 1]"}},  # int(inf)
        lambda: {"meta": {**META, "value_range": DEEP}}]),
    # finding 3: read_sidecar raises ValueError / RecursionError; trt.load_info OverflowError
    "plan-sidecar": (FIXED, [
        lambda: _sidecar(plan_bytes=HUGE_INT), lambda: _sidecar(gpu=DEEP),
        lambda: _sidecar(profile='{"max": [1e999]}')]),
    # finding 4: read_manifest: ValueError / RecursionError; manifest_checkpoint: RuntimeError / OSError
    "manifest": (FIXED, [
        lambda: _manifest(parity=HUGE_INT), lambda: _manifest(parity=DEEP),
        lambda: _manifest(checkpoint='"~no_such_user/run"'),  # RuntimeError from Path.expanduser
        lambda: _manifest(checkpoint=f'"{"x" * 300}"')]),  # OSError from Path.exists: file name too long
    "parity-inputs": (FIXED,  # finding 5: load_inputs raises RuntimeError, NotImplementedError, LZMAError, MemoryError
                      _npz_findings("parity_inputs.npz", PARITY)),
    "golden-outputs": (FIXED, [  # finding 5: load_golden raises the same, and IndexError on a 0-d image
        *_npz_findings("golden_outputs.npz", GOLDEN),
        lambda: {"golden_outputs.npz": npz_file({**GOLDEN, "image": np.float32(0)})}]),
    "config": (FIXED, [  # finding 6: from_json raises ValueError / RecursionError / TypeError, accepts any kld_weight
        lambda: _config(version=HUGE_INT), lambda: _config(version=DEEP),
        lambda: {"config.json": run_seed()["config.json"].replace(b'"bernoulli"', b"[]")},  # unhashable
        lambda: {"config.json": run_seed()["config.json"].replace(b'"kld_weight": null', b'"kld_weight": "x"')}]),
    "trainer": (FIXED, [  # finding 7: load_trainer raises RecursionError on deeply nested metadata JSON
        lambda: _trainer_metadata(history=DEEP)]),
    # finding 8: fastest.choose raises AttributeError, KeyError, TypeError, ...; artifacts leave the dir
    "fastest": (FIXED, [
        lambda: _fastest(machine="5"),  # AttributeError: int.get
        lambda: _fastest(best='[{"graph": "decoder", "runtime": "onnxruntime", "artifact": "decoder.onnx"}]'),
        lambda: _fastest(best='[{"graph": "decoder", "runtime": ["x"]}]'),  # TypeError: unhashable
        lambda: _fastest(date=DEEP),
        lambda: _fastest(best='[{"graph": "decoder", "runtime": "tensorrt", "precision": "fp16", "batch": 8, '
                              '"artifact": "../../elsewhere/decoder.plan", "p50_ms": 0.1, "parity": "passed"}]')]),
    "web-model-json": (FIXED, [  # finding 9: web_bundle.stale raises AttributeError / RecursionError
        lambda: _bundle(sha256="null"), lambda: _bundle(latent_dim=DEEP)]),
}
# fmt: on


def _params() -> list[Any]:
    params = []
    for name, target in TARGETS.items():
        reason = FINDINGS.get(name, ("", []))[0]
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(target, id=name, marks=marks))
    return params


@pytest.mark.parametrize("target", _params())
def test_a_hostile_file_gets_a_result_or_one_line(target: Target) -> None:
    @settings(
        max_examples=target.budget,
        derandomize=True,  # the same inputs on every run: a CI failure reproduces
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(files=target.files())
    def fuzz(files: Files) -> None:
        target.attempt(files)

    for reproducer in FINDINGS.get(target.name, ("", []))[1]:
        fuzz = example(files=reproducer())(fuzz)
    fuzz()


def test_the_valid_seeds_load() -> None:
    """Every target's unmutated files give a result: the fuzzer starts from files the parser accepts."""
    seeds: dict[str, Files] = {
        "onnx-graph": {"decoder.onnx": onnx_seed()},
        "onnx-metadata": {"meta": META},
        "plan-sidecar": _sidecar(),
        "manifest": _manifest(),
        "parity-inputs": {"parity_inputs.npz": npz_file(PARITY)},
        "golden-outputs": {"golden_outputs.npz": npz_file(GOLDEN)},
        "safetensors": {name: run_seed()[name] for name in ("config.json", "model.safetensors")},
        "trainer": {name: run_seed()[name] for name in ("config.json", "trainer.safetensors")},
        "config": {"config.json": run_seed()["config.json"]},
        "fastest": _fastest(),
        "web-model-json": _bundle(),
        "idx": {"data.idx": make.idx_seed(True)},
        "image": {f"image.{suffix}": data for suffix, data in make.image_seeds()[:1]},
    }
    assert set(seeds) == set(TARGETS)
    for name, files in seeds.items():
        assert TARGETS[name].attempt(files) == "result", name
    for suffix, data in make.image_seeds():
        assert TARGETS["image"].attempt({f"image.{suffix}": data}) == "result", suffix
