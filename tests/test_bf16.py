"""bf16 graphs: float32 I/O, bfloat16 inside at opset 22, checked in bfloat16 arithmetic and on OpenVINO;
runtimes without bfloat16 kernels are skipped with the reason, and refused in one line when asked."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

from vaekit.cli.main import app
from vaekit.errors import VaekitError
from vaekit.export.precisions.bf16 import BF16_OPSET, convert_bf16, node_types, to_bf16, to_bf16_bits
from vaekit.runtimes.measuring.bench import BenchSettings, plan_jobs
from vaekit.runtimes.registry import BACKENDS, load_decoder

runner = CliRunner()
OPENVINO_MISSING = BACKENDS["openvino"].status("cpu")


@pytest.fixture(scope="module")
def bf16_export(conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from vaekit.export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("bf16_art")
    return out, export_artifacts(conv_run, out, max_batch=8, precision="bf16")


def test_rounding_is_to_nearest_even_like_ml_dtypes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 100_000),
            np.array([0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, np.inf, -np.inf, 3.4028235e38, 1e-40], np.float32),
        ]
    ).astype(np.float32)
    expected = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(to_bf16_bits(values), expected)
    assert to_bf16_bits(np.array([1 + 2**-8, 1 + 3 * 2**-8], np.float32)).tolist() == [0x3F80, 0x3F82]  # ties: even
    assert np.isnan(to_bf16_bits(np.array([np.nan], np.float32)).view(ml_dtypes.bfloat16).astype(np.float32)).all()


def test_export_writes_opset_22_bf16_graphs_with_float32_io(bf16_export: tuple[Path, object]) -> None:
    out, result = bf16_export
    for role in ("encoder", "decoder"):
        fp32, bf16 = onnx.load(out / f"{role}.onnx"), onnx.load(out / f"{role}.bf16.onnx")
        onnx.checker.check_model(bf16, full_check=True)
        assert [(o.domain, o.version) for o in bf16.opset_import] == [("", BF16_OPSET)]
        for a, b in zip((*fp32.graph.input, *fp32.graph.output), (*bf16.graph.input, *bf16.graph.output), strict=True):
            assert (a.name, b.type.tensor_type.elem_type) == (b.name, TensorProto.FLOAT)
        assert {t.data_type for t in bf16.graph.initializer if t.data_type != TensorProto.INT64} == {
            TensorProto.BFLOAT16
        }
        counts = node_types(bf16)
        assert counts["fp32"] == 0 and counts["bf16"] >= 4, counts
        meta = {p.key: p.value for p in bf16.metadata_props}
        assert (meta["precision"], meta["opset"], meta["role"]) == ("bf16", "22", role)
        # the weights are the fp32 weights rounded, nothing else
        for w32, w16 in zip(fp32.graph.initializer, bf16.graph.initializer, strict=True):
            if w32.data_type == TensorProto.FLOAT:
                rounded = numpy_helper.to_array(w32).astype(ml_dtypes.bfloat16).astype(np.float32)
                assert np.array_equal(numpy_helper.to_array(w16).astype(np.float32), rounded)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"encoder.bf16.onnx", "decoder.bf16.onnx"} <= set(manifest["files"])
    assert result.details["bf16"]["decoder"]["bf16_arithmetic"]["image"]["psnr"] >= 40.0  # type: ignore[attr-defined]


def test_parity_runs_bf16_graphs_where_a_runtime_can_and_says_why_elsewhere(bf16_export: tuple[Path, object]) -> None:
    out, result = bf16_export
    report = json.loads((out / "parity.json").read_text())
    assert result.passed  # type: ignore[attr-defined]
    skipped = "\n".join(report["skipped"])
    assert "onnxruntime-cpu on decoder.bf16.onnx: ONNX Runtime's CPU provider has no bfloat16 arithmetic" in skipped
    assert "onnxruntime-cpu on encoder.bf16.onnx" in skipped and "--runtime openvino" in skipped
    assert not [c for c in report["cases"] if c["path"].endswith(".bf16.onnx") and c["runtime"].startswith("onnxrunt")]
    if OPENVINO_MISSING:
        pytest.skip(f"OpenVINO runs the bf16 graphs on a CPU: {OPENVINO_MISSING}")
    bf16 = {c["output"]: c for c in report["cases"] if c["path"].endswith(".bf16.onnx")}
    assert set(bf16) >= {"mu", "log_var", "image"}, report["cases"]
    assert all(c["runtime"] == "openvino-cpu-bf16" and c["passed"] for c in bf16.values())
    assert bf16["image"]["metrics"]["psnr"] >= 40.0 and bf16["mu"]["metrics"]["max_abs"] <= 0.1


def test_asking_onnx_runtime_for_a_bf16_graph_is_one_line(bf16_export: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = bf16_export
    with pytest.raises(VaekitError, match=r"decoder.bf16.onnx is a bf16 graph: ONNX Runtime's CPU provider"):
        load_decoder(out / "decoder.bf16.onnx")
    args = ["generate", "--engine", str(out / "decoder.bf16.onnx"), "--out", str(tmp_path / "s.png")]
    result = runner.invoke(app, args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "--runtime openvino" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.png").exists()
    if OPENVINO_MISSING:
        pytest.skip(OPENVINO_MISSING)
    result = runner.invoke(app, [*args, "--runtime", "openvino", "--n", "4"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "s.png").stat().st_size > 0


def test_bench_notes_the_runtimes_that_cannot_run_bf16_graphs(bf16_export: tuple[Path, object]) -> None:
    out, _ = bf16_export
    runtimes = ["onnxruntime", "openvino", "openvino-cpu-graph-bf16"]
    jobs, notes = plan_jobs(out, BenchSettings(batch_sizes=[1], runtimes=runtimes))
    bf16_notes = [n for n in notes if n.precision == "bf16"]
    assert {(n.runtime, n.graph) for n in bf16_notes} == {("onnxruntime", "decoder"), ("onnxruntime", "encoder")}
    assert all("no bfloat16" in n.note for n in bf16_notes)
    ran = {(j.runtime, j.graph, Path(j.path).name) for j in jobs if j.precision == "bf16"}
    expected = (
        set()
        if OPENVINO_MISSING
        else {("openvino", "decoder", "decoder.bf16.onnx"), ("openvino", "encoder", "encoder.bf16.onnx")}
    )
    if not OPENVINO_MISSING and not BACKENDS["openvino"].precision_status("cpu", "bf16"):
        expected.add(("openvino-cpu-graph-bf16", "decoder", "decoder.cpu.onnx"))  # a bf16 hint, where the CPU has bf16
    assert ran == expected
    assert ("onnxruntime", "decoder", "fp32") in {(j.runtime, j.graph, j.precision) for j in jobs}


def test_layerwise_runs_a_bf16_graph_where_a_runtime_can(bf16_export: tuple[Path, object]) -> None:
    from vaekit.runtimes.proving.layerwise import compare_layers

    out, _ = bf16_export
    if OPENVINO_MISSING:
        pytest.skip(OPENVINO_MISSING)
    report = compare_layers(out / "decoder.bf16.onnx")  # ONNX Runtime cannot: OpenVINO, its bf16 tensors widened
    assert report.runtime.startswith("openvino") and "all within the bf16 tolerance" in report.summary(), report


def _graph(nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in inputs]
    results = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in outputs]
    weight = numpy_helper.from_array(np.array([1.0, 2.0, 0.5, -1.0], np.float32), "w")
    return helper.make_model(
        helper.make_graph(nodes, "g", floats, results, [weight]), opset_imports=[helper.make_opsetid("", 18)]
    )


@pytest.mark.parametrize(
    "case",
    ["an output also read downstream", "an input that is also an output", "a value_float Constant"],
)
def test_io_casts_keep_the_graph_valid_and_its_values(case: str) -> None:
    add = helper.make_node("Add", ["z", "w"], ["mu"])
    model = {
        "an output also read downstream": lambda: _graph(
            [add, helper.make_node("Mul", ["mu", "w"], ["image"])], ["z"], ["mu", "image"]
        ),
        "an input that is also an output": lambda: _graph(
            [add, helper.make_node("Mul", ["mu", "w"], ["image"])], ["z"], ["image", "z"]
        ),
        "a value_float Constant": lambda: _graph(
            [helper.make_node("Constant", [], ["c"], value_float=3.0), helper.make_node("Mul", ["z", "c"], ["image"])],
            ["z"],
            ["image"],
        ),
    }[case]()
    converted = to_bf16(model)
    onnx.checker.check_model(converted, full_check=True)
    onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    z = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)  # exact in bfloat16, and so are the results
    expected = ReferenceEvaluator(model).run(None, {"z": z})
    got = ReferenceEvaluator(converted).run(None, {"z": z})
    assert [o.name for o in converted.graph.output] == [o.name for o in model.graph.output]
    for a, b in zip(expected, got, strict=True):
        assert b.dtype == np.float32 and np.array_equal(a, b)


def _toy_decoder(tmp_path: Path, op: str = "Add") -> Path:
    """z -> z + 256 - 256: exact in float32, but bfloat16 has 8 bits of mantissa, so near 256 it keeps only
    steps of 2: the kind of graph the bf16 check must refuse."""
    big = numpy_helper.from_array(np.array(256.0, np.float32), "big")
    nodes = [helper.make_node(op, ["z", "big"], ["shifted"]), helper.make_node("Sub", ["shifted", "big"], ["image"])]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])],
        [big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in {"role": "decoder", "precision": "fp32", "value_range": "[0, 1]"}.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "decoder.onnx"
    onnx.save(model, path)
    return path


def test_a_graph_that_bf16_rounding_breaks_is_refused(tmp_path: Path) -> None:
    z = np.random.default_rng(1).uniform(0, 1, (8, 4)).astype(np.float32)
    with pytest.raises(VaekitError, match=r"in bf16 arithmetic the graph breaks the bf16 tolerance: image"):
        convert_bf16(_toy_decoder(tmp_path), tmp_path / "decoder.bf16.onnx", z, z)
    assert not (tmp_path / "decoder.bf16.onnx").exists()


def test_unknown_ops_and_precision_graphs_are_refused(tmp_path: Path, bf16_export: tuple[Path, object]) -> None:
    z = np.zeros((2, 4), np.float32)
    with pytest.raises(VaekitError, match=r"no bf16 form for op Max"):
        convert_bf16(_toy_decoder(tmp_path, "Max"), tmp_path / "decoder.bf16.onnx", z, z)
    out, _ = bf16_export
    with pytest.raises(VaekitError, match=r"already bf16: bf16 graphs are made from the fp32 graph"):
        convert_bf16(out / "decoder.bf16.onnx", tmp_path / "again.onnx", z, z)
