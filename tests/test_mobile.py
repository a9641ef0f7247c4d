"""ExecuTorch programs and ncnn nets: exported beside the ONNX graphs, proved by the export's parity gate through
their own Python runtimes, and loaded through the one interface like every artifact."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.data import to_float
from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import load_inputs, ncnn_bin, ncnn_name, pte_name, sidecar_path
from vaekit.runtimes.base import InputError
from vaekit.runtimes.proving.parity import TOLERANCES
from vaekit.runtimes.registry import describe, load_decoder, load_encoder

pytest.importorskip("executorch", reason="ExecuTorch is in the mobile extra: pip install 'vaekit[mobile]'")
pytest.importorskip("ncnn", reason="ncnn is in the mobile extra: pip install 'vaekit[mobile]'")
MOBILE = [pte_name(r, p) for r in ("encoder", "decoder") for p in ("fp32", "int8")]
MOBILE += [ncnn_name(r, p) for r in ("encoder", "decoder") for p in ("fp32", "fp16")]
runner = CliRunner()


@pytest.fixture(scope="module")
def mobile_art(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("mobile_art")
    result = export_artifacts(conv_run, out, max_batch=8, executorch=True, ncnn=True, int8=True, calibration_images=64)
    assert result.passed, result.report.failure()
    return out, result.details


def test_every_mobile_artifact_is_proved_at_each_batch_size_within_its_precisions_tolerance(
    mobile_art: tuple[Path, dict],
) -> None:
    out, _ = mobile_art
    report = json.loads((out / "parity.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for name in MOBILE:
        cases = [c for c in report["cases"] if c["path"] == name]
        precision = describe(out / name, "encoder" if name.startswith("encoder") else "decoder").precision
        outputs = {"mu", "log_var"} if name.startswith("encoder") else {"image", "image_stress"}
        assert {c["output"] for c in cases} == outputs, name
        for case in cases:
            assert case["batch_sizes"] == [1, 7, 8] and case["passed"], (name, case)
            tol = TOLERANCES[(precision, "cpu")][case["output"]]
            if tol.max_abs is not None:
                assert case["metrics"]["max_abs"] <= tol.max_abs
            if tol.min_cosine is not None:
                assert case["metrics"]["min_cosine"] >= tol.min_cosine
        for file in (out / name, sidecar_path(out / name), *([ncnn_bin(out / name)] if "ncnn" in name else [])):
            assert file.name in manifest["files"], file.name  # vouched for, hash and size


def test_programs_are_whole_xnnpack_delegates_and_reduced_precisions_are_real(mobile_art: tuple[Path, dict]) -> None:
    out, details = mobile_art
    assert {r["delegates"] for r in details["executorch"].values()} == {1}
    cases = json.loads((out / "parity.json").read_text())["cases"]
    error = {(c["path"], c["output"]): c["metrics"]["max_abs"] for c in cases}
    for role, output in (("encoder", "mu"), ("decoder", "image")):
        # int8 arithmetic, not an fp32 program relabelled: its error is far above fp32 rounding
        assert error[(pte_name(role, "int8"), output)] > 100 * error[(pte_name(role), output)]
        assert error[(ncnn_name(role, "fp16"), output)] > 100 * error[(ncnn_name(role), output)]
        fp16, fp32 = ncnn_bin(out / ncnn_name(role, "fp16")), ncnn_bin(out / ncnn_name(role))
        assert fp16.stat().st_size < 0.6 * fp32.stat().st_size  # fp16 weights, not fp32 ones relabelled
        assert details["ncnn"]["fp16_headroom"][role] >= 16


@pytest.mark.parametrize("name", ["decoder.pte", "decoder.ncnn.param", "decoder.fp16.ncnn.param"])
def test_every_image_of_a_batch_comes_back_and_matches_its_own_single_run(
    mobile_art: tuple[Path, dict], name: str
) -> None:
    out, _ = mobile_art
    _, z = load_inputs(out)
    decoder = load_decoder(out / name)
    reference = load_decoder(out / "decoder.onnx")
    batch = decoder.decode(z[:8])
    assert batch.shape == (8, *decoder.info.image_shape)
    limit = 1e-4 if decoder.info.precision == "fp32" else 2e-2
    for i in range(8):  # not the first image repeated, not a batch cut short
        assert np.abs(batch[i] - decoder.decode(z[i : i + 1])[0]).max() <= limit
        assert np.abs(batch[i] - reference.decode(z[i : i + 1])[0]).max() <= limit
    assert np.abs(batch[0] - batch[1]).max() > 10 * limit


@pytest.mark.parametrize("name", ["encoder.pte", "encoder.int8.pte", "encoder.ncnn.param"])
def test_encoders_take_batches_1_to_max_and_refuse_beyond(mobile_art: tuple[Path, dict], name: str) -> None:
    out, _ = mobile_art
    images = to_float(load_inputs(out)[0], (0.0, 1.0))
    encoder = load_encoder(out / name)
    for n in range(1, 9):
        mu, log_var = encoder.encode(images[:n])
        assert mu.shape == log_var.shape == (n, encoder.info.latent_dim) and np.isfinite(mu).all()
    with pytest.raises(InputError, match=r"outside this artifact's range 1\.\.8"):
        encoder.encode(images[:1].repeat(9, axis=0))


def test_generate_info_and_bench_take_mobile_artifacts(mobile_art: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = mobile_art
    for engine in ("decoder.pte", "decoder.int8.pte", "decoder.ncnn.param"):
        png = tmp_path / f"{engine}.png"
        result = runner.invoke(app, ["generate", "--engine", str(out / engine), "--n", "8", "--out", str(png)])
        assert result.exit_code == 0, result.output
        assert "sha256 matches manifest.json" in result.output and png.stat().st_size > 100
    result = runner.invoke(app, ["info", str(out / "encoder.fp16.ncnn.param")])
    assert result.exit_code == 0 and "ncnn" in result.output and "fp16" in result.output
    args = [
        "bench",
        str(out),
        "--batch-sizes",
        "1,8",
        "--runtimes",
        "executorch,ncnn",
        "--min-runs",
        "3",
        "--threads",
        "1",
    ]
    args += ["--min-seconds", "0", "--max-seconds", "1", "--json", str(tmp_path / "b.json"), "--record"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    measured = {(r["runtime"], r["precision"], r["graph"], r["batch"]) for r in rows if r["p50_ms"]}
    for runtime, precision in (("executorch", "fp32"), ("executorch", "int8"), ("ncnn", "fp32"), ("ncnn", "fp16")):
        for graph in ("encoder", "decoder"):
            assert {(runtime, precision, graph, 1), (runtime, precision, graph, 8)} <= measured
    assert all(r["parity"] == "pass" for r in rows if r["p50_ms"])
    png = tmp_path / "auto.png"  # --runtime auto loads the mobile artifact bench found fastest
    result = runner.invoke(app, ["generate", "--engine", str(out), "--runtime", "auto", "--n", "8", "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert re.search(r"--runtime auto: (executorch|ncnn) \w+ on decoder\.[\w.]*(pte|ncnn\.param)", result.output)
    (out / "fastest.json").unlink()  # the other tests read this export as exported


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("decoder.pte", "truncate"),
        ("decoder.pte", "flip"),
        ("decoder.ncnn.param", "flip"),
        ("decoder.ncnn.bin", "truncate"),
        ("decoder.ncnn.bin", "grow"),
        ("decoder.pte.json", "delete"),
    ],
)
def test_a_damaged_mobile_file_is_refused_before_its_runtime_parses_it(
    mobile_art: tuple[Path, dict], tmp_path: Path, name: str, damage: str
) -> None:
    out, _ = mobile_art
    copy = tmp_path / "art"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    target = copy / name
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    elif damage == "grow":
        target.write_bytes(data + b"\0" * 64)
    else:
        target.unlink()
    engine = copy / ("decoder.pte" if "pte" in name else "decoder.ncnn.param")
    with pytest.raises(VaekitError, match=r"does not match the size and sha256|no decoder\.pte\.json"):
        load_decoder(engine)  # the library path: the sidecar's hashes, before any C++
    result = subprocess.run(
        [sys.executable, "-m", "vaekit", "generate", "--engine", str(engine), "--out", str(tmp_path / "g.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(result.returncode, result.stderr, "error:")
    assert result.returncode == 1 and not (tmp_path / "g.png").exists()


def test_the_mlp_architecture_lowers_whole_too(mlp_run: Path, tmp_path: Path) -> None:
    from vaekit.checkpoint import load_run
    from vaekit.export.mobile.pte import export_pte

    run = load_run(mlp_run)
    z = np.random.default_rng(0).standard_normal((8, run.cfg.model.latent_dim)).astype(np.float32)
    done = export_pte(run, tmp_path, 8, None, z)
    assert {r["delegates"] for r in done.values()} == {1}
    decoded = load_decoder(tmp_path / "decoder.pte").decode(z)
    reference = load_decoder(mlp_run).decode(z)
    assert np.abs(decoded - reference).max() <= 1e-4


def test_layerwise_walks_an_ncnn_net_and_names_the_layer_whose_weights_were_changed(
    mobile_art: tuple[Path, dict], conv_run: Path, tmp_path: Path
) -> None:
    from vaekit.export.mobile.sidecar import write_sidecar
    from vaekit.runtimes.artifacts import read_sidecar
    from vaekit.runtimes.proving.layerwise import compare_layers

    out, _ = mobile_art
    clean = compare_layers(out / "decoder.ncnn.param", conv_run)
    compared = [layer for layer in clean.layers if layer.metrics]
    assert clean.passed and len(compared) >= 4 and compared[-1].module == "output image"
    assert all(layer.metrics["max_abs"] < 1e-4 for layer in compared)  # fp32 nets: every blob, not just outputs
    subprocess.run(["cp", "-r", str(out), str(tmp_path / "art")], check=True)
    param = tmp_path / "art" / "decoder.ncnn.param"
    second = clean.layers[1]  # scale the second weighted layer's weights by 1.01 (its bias untouched)
    weights = np.frombuffer(ncnn_bin(param).read_bytes(), np.uint8).copy()
    offset = 0  # the .bin: per weighted layer a 4-byte flag, its weights, then its bias (fp32 net)
    for tokens in (line.split() for line in param.read_text().splitlines()[2:]):
        keys = {"InnerProduct": ("2", "1")}.get(tokens[0], ("6", "5"))  # weight count, bias flag
        params = dict(t.split("=", 1) for t in tokens if "=" in t and not t.startswith("-"))
        if tokens[0] not in ("Convolution", "Deconvolution", "InnerProduct"):
            continue
        count, bias = int(params[keys[0]]), 4 * int(params["0"]) * int(params.get(keys[1], "0"))
        if tokens[1] == second.onnx_node:
            weights[offset + 4 : offset + 4 + 4 * count].view(np.float32)[:] *= 1.01
        offset += 4 + 4 * count + bias
    assert offset == len(weights)
    ncnn_bin(param).write_bytes(weights.tobytes())
    sidecar = read_sidecar(param)
    assert sidecar is not None
    write_sidecar(param, sidecar["graph_metadata"], blobs=sidecar["blobs"])
    broken = compare_layers(param, conv_run)
    assert not broken.passed and broken.first_divergence is not None
    assert broken.first_divergence["module"] == second.module  # not the first layer, not only the output
