"""Small fixtures: tiny models trained for seconds, tiny datasets written to tmp dirs."""

from __future__ import annotations

import gzip
import shutil
import signal
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaekit.config import LossConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data import ImageData, load_data, to_float

# A suite started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so would every child it
# starts: the Ctrl-C tests would test nothing. Python's own handler, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _cuda_missing() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return "" if torch.cuda.is_available() else "no CUDA GPU here (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip with the reason where there is no CUDA GPU (this is every CI run)."""
    missing = _cuda_missing()
    if missing:
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"gpu test: {missing}"))


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def blob_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """n 28x28 uint8 images of a filled disc at a random place and radius: cheap, learnable 'digits'."""
    yy, xx = np.mgrid[:28, :28]
    cx, cy, r = rng.uniform(8, 20, n), rng.uniform(8, 20, n), rng.uniform(3, 7, n)
    img = ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2 < r[:, None, None] ** 2) * 255
    return img.astype(np.uint8)


def write_blob_mnist(root: Path, n_train: int, n_test: int, seed: int) -> Path:
    """A fake MNIST in the standard IDX files (train gzipped, test raw)."""
    rng = np.random.default_rng(seed)
    write_idx(root / "train-images-idx3-ubyte.gz", blob_images(rng, n_train))
    write_idx(root / "t10k-images-idx3-ubyte", blob_images(rng, n_test), gz=False)
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_mnist(tmp_path_factory.mktemp("mnist"), 96, 24, seed=0)


@pytest.fixture(scope="session")
def digits16() -> ImageData:
    """The embedded digits at 16x16, cut down so a few epochs take about a second."""
    d = load_data("digits", 16)
    return ImageData(train=d.train[:256], test=d.test[:64])


def tiny_config(arch: str = "conv", epochs: int = 2) -> RunConfig:
    model = (
        ModelConfig(arch="conv", image_size=16, latent_dim=4, hidden_dims=(8, 16))
        if arch == "conv"
        else ModelConfig(arch="mlp", image_size=16, latent_dim=4, hidden_dims=(32,))
    )
    return RunConfig(model=model, loss=LossConfig(), train=TrainConfig(epochs=epochs, batch_size=32))


@pytest.fixture(scope="session")
def conv_run(tmp_path_factory: pytest.TempPathFactory, digits16: ImageData) -> Path:
    from vaekit.train import train

    out = tmp_path_factory.mktemp("conv_run")
    train(tiny_config("conv"), out, data=digits16, device_name="cpu")
    return out


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, digits16: ImageData) -> Path:
    from vaekit.train import train

    out = tmp_path_factory.mktemp("mlp_run")
    train(tiny_config("mlp"), out, data=digits16, device_name="cpu")
    return out


@pytest.fixture(scope="session")
def conv_art(tmp_path_factory: pytest.TempPathFactory, conv_run: Path) -> Path:
    """encoder.onnx / decoder.onnx / manifest of the tiny conv run, max batch 8."""
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("conv_art")
    export_artifacts(conv_run, out, max_batch=8)
    return out


@pytest.fixture(scope="session")
def mlp_art(tmp_path_factory: pytest.TempPathFactory, mlp_run: Path) -> Path:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("mlp_art")
    export_artifacts(mlp_run, out, max_batch=8)
    return out


@pytest.fixture(scope="session")
def int8_art(
    tmp_path_factory: pytest.TempPathFactory, conv_art: Path, digits16: ImageData
) -> tuple[Path, dict[str, Any]]:
    """The tiny conv run's fp32 graphs plus their int8 graphs, calibrated on its training images."""
    from vaekit.export.precisions.int8 import quantize_int8
    from vaekit.runtimes.artifacts import load_inputs

    out = tmp_path_factory.mktemp("int8_art")
    for name in ("encoder.onnx", "decoder.onnx", "parity_inputs.npz", "manifest.json"):
        shutil.copy(conv_art / name, out / name)
    _, z = load_inputs(out)
    images = to_float(digits16.train, (0.0, 1.0))
    reports = {
        role: quantize_int8(out / f"{role}.onnx", out / f"{role}.int8.onnx", images, z)
        for role in ("encoder", "decoder")
    }
    return out, reports
