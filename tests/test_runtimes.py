from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vaekit.errors import VaekitError
from vaekit.runtimes import InputError, load_decoder, load_encoder
from vaekit.runtimes.registry import BACKENDS


def test_backend_is_chosen_from_the_artifact(conv_run: Path, conv_art: Path) -> None:
    assert load_decoder(conv_run).info.backend == "pytorch"
    assert load_decoder(conv_run / "model.safetensors").info.backend == "pytorch"
    assert load_decoder(conv_art / "decoder.onnx").info.backend == "onnxruntime"
    assert load_encoder(conv_art).info.path.endswith("encoder.onnx")  # an artifact dir means its fp32 graphs


@pytest.mark.parametrize(
    ("name", "device", "message"),
    [
        ("decoder.onnx", "npu", "unknown device"),
        ("parity.json", "cpu", "unknown artifact type"),
        ("nope.onnx", "cpu", "not found"),
        ("encoder.onnx", "cpu", "is an encoder graph, not a decoder"),
    ],
)
def test_loader_errors(conv_art: Path, name: str, device: str, message: str) -> None:
    with pytest.raises(VaekitError, match=message):
        load_decoder(conv_art / name, device)


@pytest.mark.parametrize("device", [d for d in BACKENDS["onnxrt"].devices if BACKENDS["onnxrt"].status(d)])
def test_missing_provider_is_named(conv_art: Path, device: str) -> None:
    with pytest.raises(VaekitError, match=r"ONNX Runtime here has no \w+ExecutionProvider"):
        load_decoder(conv_art / "decoder.onnx", device)


@pytest.mark.parametrize("source", ["run", "onnx"])
def test_input_checks(conv_run: Path, conv_art: Path, source: str) -> None:
    dec = load_decoder(conv_run if source == "run" else conv_art / "decoder.onnx")
    enc = load_encoder(conv_run if source == "run" else conv_art / "encoder.onnx")
    with pytest.raises(InputError, match=r"z must have shape \(N, 4\), got \(2, 5\)"):
        dec.decode(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="float32, got float64"):
        dec.decode(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        dec.decode(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 16, 16\), got \(1, 3, 16, 16\)"):
        enc.encode(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="numpy array"):
        enc.encode([[0.0]])  # type: ignore[arg-type]
    if source == "onnx":
        with pytest.raises(ValueError, match=r"batch 9 is outside this artifact's range 1..8"):
            dec.decode(np.zeros((9, 4), np.float32))


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_broken_onnx_files(conv_art: Path, tmp_path: Path, damage: str) -> None:
    data = (conv_art / "decoder.onnx").read_bytes()
    broken = {"truncated": data[: len(data) // 3], "random": np.random.default_rng(0).bytes(5000), "empty": b""}
    path = tmp_path / "decoder.onnx"
    path.write_bytes(broken[damage])
    with pytest.raises(VaekitError, match="not a valid ONNX file"):
        load_decoder(path)


def _tiny_graph(external_location: str | None = None, metadata: bool = True) -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).tobytes(), raw=True)
    if external_location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=external_location)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], ["image"])],
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    model = helper.make_model(graph)
    if metadata:
        for k, v in {
            "role": "decoder",
            "latent_dim": "4",
            "image_shape": "[1, 2, 2]",
            "value_range": "[0, 1]",
            "max_batch": "4",
        }.items():
            model.metadata_props.add(key=k, value=v)
    return model


def test_graph_without_vaekit_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.onnx"
    onnx.save(_tiny_graph(metadata=False), str(path))
    with pytest.raises(VaekitError, match="not a vaekit artifact"):
        load_decoder(path)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "decoder.onnx"
    onnx.save(_tiny_graph(external_location=location), str(path))
    with pytest.raises(VaekitError, match="points outside the model's folder"):
        load_decoder(path)


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    path = tmp_path / "decoder.onnx"
    onnx.save(
        _tiny_graph(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    dec = load_decoder(path)
    z = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(dec.decode(z).reshape(2, 4), z)  # identity weights
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(path, moved / "decoder.onnx")  # weights left behind
    with pytest.raises(VaekitError):
        load_decoder(moved / "decoder.onnx")
