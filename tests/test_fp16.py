"""fp16 graphs: float32 I/O, float16 inside, overflow-prone nodes kept float32, parity on ONNX Runtime CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from vaekit.errors import VaekitError
from vaekit.export.precisions.fp16 import FP16_MAX, _types, convert_fp16, node_peaks, profile_peaks
from vaekit.runtimes.proving.parity import fixed_latents, metrics, tolerance_for

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


@pytest.fixture(scope="module")
def fp16_export(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("fp16_art")
    return out, export_artifacts(conv_run, out, max_batch=8, precision="fp16")


def float_types(model: onnx.ModelProto) -> dict[str, set[int]]:
    """Per non-Cast node: the float element types of every tensor it reads or writes."""
    types = _types(model)
    return {
        n.name: {types[t] for t in (*n.input, *n.output) if types.get(t) in FLOATS}
        for n in model.graph.node
        if n.op_type != "Cast"
    }


def assert_clean_casts(model: onnx.ModelProto) -> None:
    """No Cast that changes nothing, and no A -> B -> A round trip (what strict type checks trip over)."""
    types = _types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type == "Cast"):
        to = node.attribute[0].i
        assert types[node.input[0]] != to, f"no-op {node.name}"
        upstream = producers.get(node.input[0])
        if upstream is not None and upstream.op_type == "Cast":
            assert types[upstream.input[0]] != to, f"round trip into {node.name}"


def test_export_writes_fp16_graphs_with_float32_io(fp16_export: tuple[Path, object]) -> None:
    out, _ = fp16_export
    for role in ("encoder", "decoder"):
        fp32, fp16 = onnx.load(out / f"{role}.onnx"), onnx.load(out / f"{role}.fp16.onnx")
        for a, b in zip((*fp32.graph.input, *fp32.graph.output), (*fp16.graph.input, *fp16.graph.output), strict=True):
            assert (a.name, b.type.tensor_type.elem_type) == (b.name, TensorProto.FLOAT)
        # The tiny model's activations stay far below 65504, so every compute node runs in float16.
        assert all(t == {TensorProto.FLOAT16} for t in float_types(fp16).values() if t), float_types(fp16)
        assert {i.data_type for i in fp16.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
        assert_clean_casts(fp16)
        meta32 = {p.key: p.value for p in fp32.metadata_props}
        meta16 = {p.key: p.value for p in fp16.metadata_props}
        assert meta16["precision"] == "fp16" and json.loads(meta16["fp16_blocked_nodes"]) == []
        assert {k: v for k, v in meta16.items() if k != "precision" and not k.startswith("fp16_")} == {
            k: v for k, v in meta32.items() if k != "precision"
        }


def test_fp16_parity_on_onnxruntime_cpu(fp16_export: tuple[Path, object]) -> None:
    _, result = fp16_export
    report = result.report  # type: ignore[attr-defined]
    assert report.passed, report.to_json()
    fp16_cases = {(c.path, c.output): c for c in report.cases if c.runtime == "onnxruntime-cpu-fp16"}
    assert set(fp16_cases) == {
        ("encoder.fp16.onnx", "mu"),
        ("encoder.fp16.onnx", "log_var"),
        ("decoder.fp16.onnx", "image"),
        ("decoder.fp16.onnx", "image_stress"),
    }
    assert fp16_cases[("decoder.fp16.onnx", "image")].metrics["psnr"] >= 40.0
    headroom = result.details["fp16"]  # type: ignore[attr-defined]
    for role in ("encoder", "decoder"):
        assert headroom[role]["min_headroom_fp16"] >= headroom[role]["margin"]
        assert headroom[role]["blocked"] == []
        emulated = headroom[role]["vs_fp32"]["fp16_arithmetic"]
        assert all(m["min_cosine"] > 0.999 for m in emulated.values())


def test_blocked_nodes_stay_float32_with_their_exact_weights(fp16_export: tuple[Path, object], tmp_path: Path) -> None:
    """Tighten the margin so the limit falls mid-graph: what crosses it stays fp32, the rest goes fp16."""
    out, _ = fp16_export
    src = out / "decoder.onnx"
    model = onnx.load(src)
    z = fixed_latents(8, 4)
    peaks = node_peaks(model, profile_peaks(model, {"z": z}))
    limit = float(np.median(sorted(peaks.values())))
    report = convert_fp16(src, tmp_path / "d.onnx", np.zeros((1, 1, 16, 16), np.float32), z, margin=FP16_MAX / limit)
    expected = {n for n, p in peaks.items() if p > report["limit"]}
    assert {b["node"] for b in report["blocked"]} == expected and 0 < len(expected) < len(peaks)
    assert all(b["max_abs"] > report["limit"] for b in report["blocked"])
    converted = onnx.load(tmp_path / "d.onnx")
    for name, types in float_types(converted).items():
        if types:
            assert types == ({TensorProto.FLOAT} if name in expected else {TensorProto.FLOAT16}), name
    assert_clean_casts(converted)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    for node in (n for n in converted.graph.node if n.name in expected):
        for weight in (inits[i] for i in node.input[1:] if i in inits):
            assert weight.dtype == np.float32
            assert any(w.shape == weight.shape and np.array_equal(w, weight) for w in original.values())
    assert report["vs_fp32"]["onnxruntime_cpu"]["image"]["psnr"] >= 40.0


def rms_decoder(path: Path) -> None:
    """A decoder that normalizes by sqrt(mean(x^2)): x^2 overflows fp16, the output still looks finite."""
    w = np.random.default_rng(0).uniform(-100, 100, (4, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["z", "w"], ["x"], name="project"),
        helper.make_node("Mul", ["x", "x"], ["x2"], name="square"),
        helper.make_node("ReduceMean", ["x2", "axes"], ["ms"], name="mean_square", keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["rms"], name="root"),
        helper.make_node("Div", ["x", "rms"], ["normed"], name="normalize"),
        helper.make_node("Sigmoid", ["normed"], ["flat"], name="activate"),
        helper.make_node("Reshape", ["flat", "shape"], ["image"], name="to_image"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 2, 4], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 2, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"role": "decoder", "latent_dim": "4", "image_shape": "[1, 2, 4]", "value_range": "[0, 1]"}
    for key, value in {**meta, "max_batch": "8", "precision": "fp32"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def test_an_overflow_hidden_behind_a_finite_output_is_kept_fp32(tmp_path: Path) -> None:
    from onnxconverter_common.float16 import convert_float_to_float16

    src = tmp_path / "rms.onnx"
    rms_decoder(src)
    z = fixed_latents(8, 4)
    reference = ReferenceEvaluator(onnx.load(src)).run(None, {"z": z})[0]
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore")
        naive = convert_float_to_float16(onnx.load(src), keep_io_types=True)
        naive_out = ReferenceEvaluator(naive).run(None, {"z": z})[0]
    assert np.isfinite(naive_out).all()  # looks fine ...
    assert metrics(reference, naive_out, (0, 1))["psnr"] < 20  # ... but x^2 became inf and x / inf = 0

    report = convert_fp16(src, tmp_path / "rms.fp16.onnx", np.zeros((1, 1, 2, 4), np.float32), z)
    assert {b["node"] for b in report["blocked"]} == {"square", "mean_square", "root"}
    assert report["min_headroom"] < 1 < report["margin"] <= report["min_headroom_fp16"]
    ours = ReferenceEvaluator(onnx.load(tmp_path / "rms.fp16.onnx")).run(None, {"z": z})[0]
    assert metrics(reference, ours, (0, 1))["psnr"] >= 40
    assert float_types(onnx.load(tmp_path / "rms.fp16.onnx"))["normalize"] == {TensorProto.FLOAT16}


def test_conversion_refuses_bad_sources(fp16_export: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = fp16_export
    z = fixed_latents(8, 4)
    with pytest.raises(VaekitError, match="already fp16"):
        convert_fp16(out / "decoder.fp16.onnx", tmp_path / "x.onnx", np.zeros((1, 1, 16, 16), np.float32), z)
    with pytest.raises(VaekitError, match="would compute in fp32"):
        convert_fp16(
            out / "decoder.onnx", tmp_path / "x.onnx", np.zeros((1, 1, 16, 16), np.float32), z, margin=FP16_MAX
        )
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_tolerance_is_the_parity_table(fp16_export: tuple[Path, object]) -> None:
    from vaekit.runtimes.registry import describe

    info = describe(fp16_export[0] / "decoder.fp16.onnx")
    assert info.precision == "fp16" and tolerance_for(info, "image").min_psnr == 40.0


def test_conversion_needs_no_torch(fp16_export: tuple[Path, object], tmp_path: Path) -> None:
    """`build-engine --precision fp16` converts on the target device, which may have no torch."""
    out, _ = fp16_export
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from vaekit.export.precisions.fp16 import convert_fp16\n"
        "import vaekit.export.tensorrt.build, vaekit.export.tensorrt.engines\n"
        "import vaekit.runtimes.backends.trt, vaekit.cli.engines\n"
        "from vaekit.runtimes.artifacts import load_inputs\n"
        "images, z = load_inputs(Path(sys.argv[1]))\n"
        "r = convert_fp16(Path(sys.argv[1]) / 'decoder.onnx', Path(sys.argv[2]), images.astype(np.float32) / 255, z)\n"
        "print(r['nodes']['fp16'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp_path / "d.onnx")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 0 and (tmp_path / "d.onnx").is_file()


def test_the_precision_budget_measures_every_fp16_node(fp16_export: tuple[Path, object]) -> None:
    out, result = fp16_export
    report = result.details["fp16"]["decoder"]  # type: ignore[attr-defined]
    nodes = {n.name for n in onnx.load(out / "decoder.onnx").graph.node}
    assert report["budget"] and {b["node"] for b in report["budget"]} <= nodes
    assert all(0 <= b["max_abs"] < 0.05 for b in report["budget"])  # within the fp16 row: nothing kept
    assert report["kept_fp32_by_budget"] == []
