"""Layerwise parity: fp32 graphs pass every layer, a broken layer is named at its module and ONNX node, NaN is
found where it appears, int8 shows its per-layer budget, and a foreign graph gets its outputs compared."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from vaekit.data import ImageData, to_float
from vaekit.runtimes.artifacts import load_inputs, onnx_name
from vaekit.runtimes.backends import pyt
from vaekit.runtimes.backends.cpu_rewrites import rewrite_for_cpu
from vaekit.runtimes.backends.pyt import capture_checkpoint
from vaekit.runtimes.proving.layerwise import LayerwiseReport, compare_layers, save_layer_error_png
from vaekit.runtimes.proving.layerwise.budget import costliest, node_budget
from vaekit.runtimes.proving.layerwise.capture import capture_for
from vaekit.runtimes.proving.layerwise.compare import NEEDS_EXPORT
from vaekit.runtimes.proving.layerwise.judge import GROWTH_FACTOR, LayerResult, first_divergence
from vaekit.runtimes.proving.layerwise.mapping import scope_of
from vaekit.runtimes.registry import Backend

PARITY_FILES = ("encoder.onnx", "decoder.onnx", "parity_inputs.npz", "manifest.json")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in PARITY_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def _edit_weight(path: Path, weight: str, edit: Any) -> str:
    """Apply edit to the initializer `weight` in place; returns the name of the node that reads it."""
    model = onnx.load(str(path))
    for i, t in enumerate(model.graph.initializer):
        if t.name == weight:
            w = numpy_helper.to_array(t).copy()
            edit(w)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    onnx.save(model, str(path))
    return next(n.name for n in model.graph.node if weight in n.input)


@pytest.mark.parametrize(("role", "rewrite"), [("encoder", True), ("decoder", True), ("decoder", False)])
def test_fp32_graph_passes_every_layer(conv_art: Path, conv_run: Path, role: str, rewrite: bool) -> None:
    report = compare_layers(conv_art / onnx_name(role), conv_run, rewrite=rewrite)
    assert report.passed, report.summary()
    compared = [layer for layer in report.layers if layer.metrics]
    modules = {layer.module for layer in compared}
    expected = {"encoder.1", "encoder.2", "encoder.5", "fc_mu", "fc_var"} if role == "encoder" else {"decoder.2"}
    assert expected <= modules, modules
    if role == "decoder" and not rewrite:  # the graph as stored: every module boundary is there
        assert {"decoder_input", "decoder.1", "final_layer.1", "final_layer.3", "output image"} <= modules
    assert all(not layer.broken and layer.metrics["max_abs"] < 1e-4 for layer in compared)
    blob = json.dumps(report.to_json(), allow_nan=False)
    assert json.loads(blob)["first_divergence"] is None
    assert "all within the fp32 tolerance" in report.summary()


def test_the_rewritten_graph_folds_layers_it_computes_together(conv_art: Path, conv_run: Path) -> None:
    report = compare_layers(conv_art / "decoder.onnx", conv_run)  # CPU rewrites: Gemm+ConvTranspose, phase convs
    by_module = {layer.module: layer for layer in report.layers}
    assert not by_module["decoder_input"].metrics and "later layer" in by_module["decoder_input"].note
    assert {"decoder_input", "decoder.0"} <= set(by_module["decoder.1"].fused)  # BatchNorm folded, Linear rewritten


def test_a_broken_convolution_is_the_first_divergence(tmp_path: Path, conv_art: Path, conv_run: Path) -> None:
    art = _copy(conv_art, tmp_path / "art")

    def perturb(w: np.ndarray) -> None:
        w[0] += 0.5

    node = _edit_weight(art / "decoder.onnx", "model.final_layer.3.weight", perturb)
    report = compare_layers(art / "decoder.onnx", conv_run, rewrite=False)
    fd = report.first_divergence
    assert fd is not None and not report.passed
    assert (fd["graph"], fd["module"], fd["onnx_node"], fd["op_type"]) == ("decoder", "final_layer.3", node, "Conv")
    assert fd["reason"] == "tolerance" and fd["max_abs"] > 1e-2
    before = [layer for layer in report.layers if layer.module in ("decoder.1", "decoder.2", "final_layer.2")]
    assert len(before) == 3 and all(layer.metrics and not layer.broken for layer in before)
    assert report.summary().startswith(f"first divergence: decoder layer final_layer.3 (Conv {node})")
    rows = report.rows()
    assert all(len(row) == len(LayerwiseReport.COLUMNS) for row in rows)
    assert [row[-1] for row in rows if row[0] == "final_layer.3"] == ["<- first divergence"]
    saved = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert saved["first_divergence"]["onnx_node"] == node and saved["passed"] is False

    png = tmp_path / "layers.png"
    save_layer_error_png(report, png)
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    assert ((pixels == (214, 39, 40)).all(axis=1)).sum() > 100  # the diverging layer's bar is red


def test_a_broken_layer_is_named_by_the_file_node_when_the_runtime_rewrites_it(
    tmp_path: Path, conv_art: Path, conv_run: Path
) -> None:
    art = _copy(conv_art, tmp_path / "art")

    def perturb(w: np.ndarray) -> None:
        w[0, 0] += 0.5

    node = _edit_weight(art / "decoder.onnx", "model.decoder.0.weight", perturb)  # folded with decoder.1 (BN)
    report = compare_layers(art / "decoder.onnx", conv_run)  # rewrite=True: this node runs inside one Gemm
    fd = report.first_divergence
    assert fd is not None
    assert (fd["module"], fd["onnx_node"], fd["op_type"]) == ("decoder.1", node, "ConvTranspose")
    assert "decoder.0" in fd["fused"]


def test_nan_in_a_weight_is_reported_where_it_appears(tmp_path: Path, conv_art: Path, conv_run: Path) -> None:
    art = _copy(conv_art, tmp_path / "art")

    def poison(w: np.ndarray) -> None:
        w[1, 0, 0, 0] = np.nan

    node = _edit_weight(art / "encoder.onnx", "model.encoder.3.weight", poison)
    report = compare_layers(art / "encoder.onnx", conv_run)
    fd = report.first_divergence
    assert fd is not None and fd["reason"] == "nonfinite"
    assert (fd["module"], fd["onnx_node"]) == ("encoder.4", node)
    assert "NaN/Inf appears here" in report.summary()
    first = {layer.module: layer for layer in report.layers}
    assert first["encoder.2"].metrics and first["encoder.2"].nonfinite == 0
    assert first["encoder.4"].nonfinite > 0
    json.dumps(report.to_json(), allow_nan=False)


@pytest.fixture(scope="module")
def int8_decoder(tmp_path_factory: pytest.TempPathFactory, conv_art: Path, digits16: ImageData) -> Path:
    from vaekit.export.precisions.int8 import quantize_int8

    art = _copy(conv_art, tmp_path_factory.mktemp("int8_layerwise"))
    _, z = load_inputs(art)
    quantize_int8(art / "decoder.onnx", art / "decoder.int8.onnx", to_float(digits16.train, (0.0, 1.0)), z)
    return art / "decoder.int8.onnx"


def test_an_int8_graph_shows_its_per_layer_budget(int8_decoder: Path, conv_run: Path) -> None:
    int8 = onnx.load(str(int8_decoder))
    assert any(scope_of(n) is None for n in int8.graph.node)  # rewritten and Q/DQ nodes carry no metadata
    report = compare_layers(int8_decoder, conv_run)
    assert report.runtime.endswith("int8") and report.passed, report.summary()
    compared = [layer for layer in report.layers if layer.metrics]
    assert {"decoder.1", "decoder.2", "output image"} <= {layer.module for layer in compared}
    assert all(layer.metrics["rel"] > 1e-4 for layer in compared)  # int8 error is visible per layer, not fp32 noise
    assert compared[0].tensor.endswith("DequantizeLinear_Output")  # what the next layer reads, after its Q/DQ pair
    assert all(layer.tolerance["min_cosine"] == 0.99 for layer in compared)  # judged by the int8 image row

    fp32 = onnx.load(str(int8_decoder.with_name("decoder.onnx")))
    rewrite_for_cpu(fp32, every_upsample=True)  # the graph the quantizer started from
    _, z = load_inputs(int8_decoder.parent)
    budget = node_budget(fp32, int8, z, "int8")
    weighted = [r for r in budget if r.op_type in ("Conv", "Gemm") and r.metrics]
    assert len(weighted) >= 3 and all(r.metrics["rel"] > 1e-4 for r in weighted)
    order = costliest(budget, ("Conv", "Gemm"), 2)
    assert len(order) == 2 and set(order) <= {n.name for n in int8.graph.node}


def test_a_foreign_graph_gets_its_outputs_compared(tmp_path: Path, conv_art: Path, conv_run: Path) -> None:
    model = onnx.load(str(conv_art / "decoder.onnx"))
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.metadata_props[:]
    foreign = tmp_path / "someone_elses.onnx"
    onnx.save(model, str(foreign))
    _, z = load_inputs(conv_art)
    report = compare_layers(foreign, conv_run, inputs=z)
    assert report.notes == [NEEDS_EXPORT.format(name=foreign.name)]
    assert [layer.module for layer in report.layers] == ["output image"]
    assert report.passed, report.summary()


def test_the_pytorch_reference_is_every_module_in_execution_order(conv_run: Path) -> None:
    z = np.zeros((2, 4), np.float32)
    found = capture_checkpoint(conv_run, "decoder", z)
    keys = list(found)
    assert keys[0] == "decoder_input" and keys[-1] == "image"
    assert keys.index("decoder.0") < keys.index("decoder.1") < keys.index("final_layer.3")
    assert found["final_layer.3"].shape == found["image"].shape == (2, 1, 16, 16)


def test_a_runtime_that_cannot_mark_tensors_says_why() -> None:
    backend = Backend("fake", "fake", "cuda", (".onnx",), ("cpu",), "no capture")
    capture, why = capture_for(backend)
    assert capture is None and "capture_tensors" in why


def test_layerwise_against_the_fp32_graph_needs_no_torch(conv_art: Path) -> None:
    """On a device: the fp32 ONNX graph is the reference, numpy + onnx + onnxruntime only."""
    code = (
        "import sys\n"
        "for name in ('torch', 'safetensors', 'onnxscript'):\n"
        "    sys.modules[name] = None\n"
        "from pathlib import Path\n"
        "from vaekit.runtimes.proving.layerwise import compare_layers\n"
        f"report = compare_layers(Path({str(conv_art / 'decoder.onnx')!r}))\n"
        "assert report.passed and report.reference.startswith('decoder.onnx'), report.summary()\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_layer_that_amplifies_error_far_beyond_its_neighbours_is_named() -> None:
    def layer(name: str, growth: float | None) -> LayerResult:
        r = LayerResult(name, f"node_{name}", "Conv", name, name)
        r.metrics, r.growth, r.shape = {"max_abs": 1e-5, "rel": 1e-6}, growth, [1]
        return r

    calm = [layer("a", None), layer("b", 1.2), layer("c", 0.8), layer("d", 1.0)]
    assert first_divergence("decoder", calm) is None
    loud = [*calm[:2], layer("c", 2 * GROWTH_FACTOR), calm[3]]
    fd = first_divergence("decoder", loud)
    assert fd is not None and (fd["module"], fd["reason"]) == ("c", "growth")


def test_an_in_memory_pytorch_reference_is_used_as_export_has_it(conv_art: Path, conv_run: Path) -> None:
    decoder = pyt.load(conv_run, "decoder", "cpu")  # what export holds after loading the weights once
    report = compare_layers(conv_art / "decoder.onnx", decoder, rewrite=False)
    assert report.passed and report.reference.startswith("pytorch (in memory")
    assert len([layer for layer in report.layers if layer.metrics]) == 7
