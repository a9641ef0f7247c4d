"""The OpenVINO backend: the same graphs, judged by the same tolerance table, precision stated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import load_inputs
from vaekit.runtimes.base import ArtifactInfo
from vaekit.runtimes.proving.parity import judge, metrics, tolerance_for
from vaekit.runtimes.registry import BACKENDS, load_decoder, load_encoder

OPENVINO = BACKENDS["openvino"]
MISSING = OPENVINO.status("cpu")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"OpenVINO: {MISSING}")


def _judged(info: ArtifactInfo, ref: np.ndarray, got: np.ndarray, output: str) -> list[str]:
    return judge(metrics(ref, got, (0.0, 1.0) if output == "image" else None), tolerance_for(info, output))


def test_fp32_graph_runs_in_fp32_and_matches_pytorch(conv_run: Path, conv_art: Path) -> None:
    _, z = load_inputs(conv_art)
    decoder = load_decoder(conv_art / "decoder.onnx", "cpu", runtime="openvino")
    assert decoder.info.backend == "openvino" and decoder.info.precision == "fp32"
    assert "f32" in decoder.info.extra["inference_precision"]  # asked for explicitly: the CPU's default may be bf16
    got = decoder.decode(z)
    ref = load_decoder(conv_run).decode(z)
    assert float(np.abs(got - ref).max()) < 1e-4
    assert _judged(decoder.info, ref, got, "image") == []


def test_encoder_threads_option_and_batches(conv_run: Path, conv_art: Path) -> None:
    images_u8, _ = load_inputs(conv_art)
    images = images_u8.astype(np.float32) / 255
    encoder = load_encoder(conv_art / "encoder.onnx", "cpu", runtime="openvino", threads=1)
    mu, log_var = encoder.encode(images[:3])
    ref_mu, ref_log_var = load_encoder(conv_run).encode(images[:3])
    assert mu.shape == (3, encoder.info.latent_dim)
    assert float(np.abs(mu - ref_mu).max()) < 1e-4 and float(np.abs(log_var - ref_log_var).max()) < 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_runtime_precision_is_stated_and_judged_by_its_own_row(conv_run: Path, conv_art: Path, precision: str) -> None:
    reason = OPENVINO.precision_status("cpu", precision)
    if reason:
        pytest.skip(reason)
    _, z = load_inputs(conv_art)
    decoder = load_decoder(conv_art / "decoder.onnx", "cpu", runtime="openvino", precision=precision)
    assert decoder.info.precision == precision
    got, ref = decoder.decode(z), load_decoder(conv_run).decode(z)
    assert float(np.abs(got - ref).max()) > 0  # it really computed in a narrower type
    assert _judged(decoder.info, ref[3:], got[3:], "image") == []  # rows 0-2 are the |z| = 4 stress corners


def test_precision_of_a_reduced_graph_comes_from_the_graph(tmp_path: Path, conv_art: Path) -> None:
    fake = tmp_path / "decoder.onnx"
    fake.write_bytes((conv_art / "decoder.onnx").read_bytes())
    with pytest.raises(VaekitError, match="bf16"):
        load_decoder(fake, "cpu", runtime="openvino", precision="int8")


def test_unknown_device_and_missing_device_are_one_line(conv_art: Path) -> None:
    with pytest.raises(VaekitError, match="unknown device 'cuda'"):
        load_decoder(conv_art / "decoder.onnx", "cuda", runtime="openvino")
    assert "OpenVINO sees no GPU" in OPENVINO.status("gpu") or OPENVINO.status("gpu") == ""


def test_without_openvino_the_backend_says_which_extra(conv_art: Path) -> None:
    code = (
        "import sys\nsys.modules['openvino'] = None\n"
        "from vaekit.runtimes.registry import BACKENDS, load_decoder\n"
        "print(BACKENDS['openvino'].status('cpu'))\n"
        "try:\n    load_decoder(sys.argv[1], 'cpu', runtime='openvino')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(conv_art / "decoder.onnx")], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "openvino not installed (pip install 'vaekit[openvino]')", out.stderr
    assert lines[1].startswith("VaekitError") and "vaekit[openvino]" in lines[1]


def test_layerwise_marks_openvino_tensors_and_names_a_broken_layer(
    conv_run: Path, conv_art: Path, tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    from vaekit.runtimes.proving.layerwise import compare_layers

    report = compare_layers(conv_art / "decoder.onnx", conv_run, runtime="openvino")
    compared = [layer for layer in report.layers if layer.metrics]
    assert report.passed and len(compared) > 2 and not report.notes  # intermediate layers, not outputs only
    model = onnx.load(str(conv_art / "decoder.onnx"))
    weight = next(t for t in model.graph.initializer if t.name.startswith("model.final_layer.3"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(tmp_path / "decoder.onnx"))
    _, z = load_inputs(conv_art)
    broken = compare_layers(tmp_path / "decoder.onnx", conv_run, inputs=z, runtime="openvino")
    assert broken.first_divergence is not None and broken.first_divergence["module"] == "final_layer.3"
