from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from vaekit.checkpoint import load_run
from vaekit.data import ImageData, to_float
from vaekit.export.onnx import OPSET, export_onnx
from vaekit.fsutil import sha256_file
from vaekit.runtimes import load_decoder, load_encoder
from vaekit.runtimes.registry import BACKENDS, describe

ORT_DEVICES = [d for d in ("cpu", "cuda") if not BACKENDS["onnxrt"].status(d)]
FP32_ATOL = 1e-4  # the bound for fp32 ONNX Runtime vs PyTorch


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_graph_structure(conv_art: Path, role: str) -> None:
    path = conv_art / f"{role}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert not {o for o in ops if o.startswith("Random")}  # deterministic: sampling happens outside
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(conv_art.glob("*.data"))
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert (inputs, outputs) == ((["image"], ["mu", "log_var"]) if role == "encoder" else (["z"], ["image"]))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch


def test_metadata_read_back(conv_art: Path, conv_run: Path) -> None:
    info = describe(conv_art / "decoder.onnx")
    cfg = json.loads((conv_run / "config.json").read_text())["model"]
    assert info.role == "decoder" and info.latent_dim == cfg["latent_dim"] == 4
    assert info.image_shape == (1, 16, 16) and info.value_range == (0.0, 1.0)
    assert info.precision == "fp32" and info.max_batch == 8
    assert info.source_sha256 == sha256_file(conv_run / "model.safetensors")
    meta = {p.key: p.value for p in onnx.load(str(conv_art / "encoder.onnx")).metadata_props}
    assert {"vaekit_version", "likelihood", "export_time", "checkpoint_sha256", "opset"} <= set(meta)


@pytest.mark.parametrize("device", ORT_DEVICES)
@pytest.mark.parametrize("which", ["conv", "mlp"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fp32_onnx_matches_pytorch(which: str, batch: int, device: str, request: pytest.FixtureRequest) -> None:
    run, art = request.getfixturevalue(f"{which}_run"), request.getfixturevalue(f"{which}_art")
    digits: ImageData = request.getfixturevalue("digits16")
    ref_enc, ref_dec = load_encoder(run), load_decoder(run)
    enc, dec = load_encoder(art / "encoder.onnx", device), load_decoder(art / "decoder.onnx", device)
    images = to_float(digits.test[:batch], (0.0, 1.0))
    z = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32) * 2
    for ref, got in zip(ref_enc.encode(images), enc.encode(images), strict=True):
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, ref, atol=FP32_ATOL, rtol=0)
    np.testing.assert_allclose(dec.decode(z), ref_dec.decode(z), atol=FP32_ATOL, rtol=0)


def test_export_is_reproducible(conv_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = export_onnx(load_run(conv_run), tmp_path / "a", max_batch=4)
    b = export_onnx(load_run(conv_run), tmp_path / "b", max_batch=4)
    for role in ("encoder", "decoder"):
        assert sha256_file(a[role]) == sha256_file(b[role])


def test_max_batch_one(conv_run: Path, tmp_path: Path) -> None:
    paths = export_onnx(load_run(conv_run), tmp_path, max_batch=1)
    dec = load_decoder(paths["decoder"])
    assert dec.info.max_batch == 1
    assert dec.decode(np.zeros((1, 4), np.float32)).shape == (1, 1, 16, 16)


def test_export_cli_replaces_an_older_export(conv_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vaekit.cli.main import app

    out = tmp_path / "art"
    out.mkdir()
    (out / "decoder.fp16.onnx").write_bytes(b"left over from an older export")
    (out / "notes.txt").write_text("the user's own file")
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(conv_run), "--out", str(out), "--max-batch", "4"])
    assert result.exit_code == 0, result.stderr
    assert "parity passed" in result.stdout
    assert not (out / "decoder.fp16.onnx").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert describe(out / "decoder.onnx").max_batch == 4
    assert not list(tmp_path.glob(".art.staging-*"))
