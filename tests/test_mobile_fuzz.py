"""Hostile mobile artifacts: ExecuTorch programs and ncnn nets whose bytes are mutated and whose sidecar is
rewritten to vouch for them (what a hostile file would carry), loaded through the backends. Their parsers are
C++, so every case runs in one worker process: a result or a one-line VaekitError per case, and the worker
must never die by a signal (ncnn segfaults on most malformed params when its load errors are ignored)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaekit.export.mobile.sidecar import write_sidecar
from vaekit.runtimes.artifacts import ncnn_bin, read_sidecar

pytest.importorskip("executorch", reason="ExecuTorch is in the mobile extra: pip install 'vaekit[mobile]'")
pytest.importorskip("ncnn", reason="ncnn is in the mobile extra: pip install 'vaekit[mobile]'")
CASES = {"ncnn-param": 150, "ncnn-bin": 40, "pte": 40}  # inputs per target in every run
WORKER = """
import sys, numpy as np
from pathlib import Path
from vaekit.errors import VaekitError
from vaekit.runtimes.registry import load_decoder
for case in sys.argv[1:]:
    print("start", case, flush=True)
    try:
        decoder = load_decoder(Path(case))
        decoder.decode(np.zeros((2, decoder.info.latent_dim), np.float32))
        print("result", case, flush=True)
    except VaekitError as exc:
        text = str(exc)
        print("error" if "\\n" not in text else "MULTILINE", case, text[:200].replace("\\n", " "), flush=True)
"""
TOKENS = ["0", "1", "-1", "999", "1000000", "x", "=", "0=99999999", "6=1", "Convolution", "Input", "out0", "in0"]


@pytest.fixture(scope="module")
def seeds(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("mobile_seed")
    assert export_artifacts(conv_run, out, max_batch=4, executorch=True, ncnn=True).passed
    return out


def _case(seeds: Path, root: Path, name: str, edit: dict[str, bytes]) -> Path:
    """A copy of the seed artifact with files replaced and its sidecar rewritten to match them."""
    case = root / f"case{len(list(root.iterdir()))}"
    case.mkdir()
    param = seeds / name
    files = [param, *([ncnn_bin(param)] if name.endswith(".param") else [])]
    for file in files:
        (case / file.name).write_bytes(edit.get(file.name, file.read_bytes()))
    sidecar = read_sidecar(param)
    assert sidecar is not None
    extra = {k: v for k, v in sidecar.items() if k not in ("format", "graph_metadata", "files")}
    write_sidecar(case / name, sidecar["graph_metadata"], **extra)
    return case / name


def _param_edit(text: str, data: st.DataObject) -> str:
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        how = data.draw(st.sampled_from(["value", "token", "drop", "dup", "swap", "cut"]))
        tokens = lines[i].split()
        params = [j for j, t in enumerate(tokens) if "=" in t and "," not in t]
        if how == "value" and params:  # a plausible number where it does the most harm: shapes and counts
            j = data.draw(st.sampled_from(params))
            tokens[j] = f"{tokens[j].split('=')[0]}={data.draw(st.sampled_from([0, 1, 2, 3, 4, 9, 16, 64, 1024]))}"
            lines[i] = " ".join(tokens)
        elif how == "token" and tokens:
            tokens[data.draw(st.integers(0, len(tokens) - 1))] = data.draw(st.sampled_from(TOKENS))
            lines[i] = " ".join(tokens)
        elif how == "drop" and len(lines) > 1:
            del lines[i]
        elif how == "dup":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


def _bytes_edit(blob: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "grow", "flip", "random"]))
    if how == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1))]
    if how == "grow":
        return blob + data.draw(st.binary(min_size=1, max_size=64))
    if how == "flip":
        out = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, min(len(out), 4096) - 1))  # the structure, not only the weights
            out[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    return data.draw(st.binary(min_size=0, max_size=256))


def _cases(seeds: Path, root: Path, target: str) -> list[Path]:
    made: list[Path] = []

    @settings(
        max_examples=CASES[target],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        if target == "ncnn-param":
            text = (seeds / "decoder.ncnn.param").read_text()
            made.append(
                _case(seeds, root, "decoder.ncnn.param", {"decoder.ncnn.param": _param_edit(text, data).encode()})
            )
        elif target == "ncnn-bin":
            blob = (seeds / "decoder.ncnn.bin").read_bytes()
            made.append(_case(seeds, root, "decoder.ncnn.param", {"decoder.ncnn.bin": _bytes_edit(blob, data)}))
        else:
            blob = (seeds / "decoder.pte").read_bytes()
            made.append(_case(seeds, root, "decoder.pte", {"decoder.pte": _bytes_edit(blob, data)}))

    draw()
    return made


@pytest.mark.parametrize("target", list(CASES))
def test_a_hostile_mobile_file_gets_a_result_or_one_line_and_never_a_crash(
    seeds: Path, tmp_path: Path, target: str
) -> None:
    cases = _cases(seeds, tmp_path, target)
    done = subprocess.run([sys.executable, "-c", WORKER, *map(str, cases)], capture_output=True, text=True, timeout=600)
    lines = done.stdout.splitlines()
    started = [line.split()[1] for line in lines if line.startswith("start")]
    assert done.returncode == 0, f"worker died ({done.returncode}) on {started[-1] if started else '?'}"
    outcomes = [line.split()[0] for line in lines if not line.startswith("start")]
    assert len(outcomes) == len(cases) and "MULTILINE" not in outcomes, done.stdout[-2000:]
    counts = {k: outcomes.count(k) for k in ("result", "error")}
    assert counts["error"] > 0  # the mutations reach the checks: not every case is a no-op
    print(json.dumps({"target": target, "cases": len(cases), **counts}))  # the counts the README quotes (-s)
    shutil.rmtree(tmp_path, ignore_errors=True)
