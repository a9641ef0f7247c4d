"""The phone/ARM runtimes beside their peers on this CPU: ExecuTorch (XNNPACK, fp32 and int8) and ncnn (fp32,
fp16) against eager PyTorch, ONNX Runtime (vaekit's backend and plain, on the CPU graph) and OpenVINO, on the
deploy benchmark's 64x64 model (benchmarks/run.py makes it), every artifact proved by the export's parity.

    python benchmarks/mobile.py     # ~10 min on 2 cores; writes benchmarks/mobile/results.json and RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

from benchmarks.run import make_checkpoint, write_images
from vaekit.export.pipeline import export_artifacts
from vaekit.runtimes.cpu import cpu_model
from vaekit.runtimes.measuring.bench import BenchSettings, Row, run_bench

HERE = Path(__file__).resolve().parent / "mobile"
RUNTIMES = ["pytorch", "onnxruntime", "onnxruntime-cpu-graph", "openvino", "executorch", "ncnn"]


def _table(rows: list[Row]) -> list[str]:
    lines = ["| graph | runtime | precision | batch | p50 ms | images/s | % peak | parity | vs eager PyTorch |"]
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    eager = {(r.graph, r.batch): r.p50_ms for r in rows if r.runtime == "pytorch" and r.p50_ms}
    for r in sorted((r for r in rows if r.p50_ms), key=lambda r: (r.graph, r.batch, r.p50_ms or 0)):
        base = eager.get((r.graph, r.batch))
        ratio = f"{base / r.p50_ms:.2f}x" if base and r.p50_ms else ""
        peak = "" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%"
        lines.append(
            f"| {r.graph} | {r.runtime} | {r.precision} | {r.batch} | {r.p50_ms:.3f} | {r.images_per_s or 0:,.0f} | "
            f"{peak} | {r.parity} | {ratio} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--max-seconds", type=float, default=5.0)
    a = parser.parse_args()
    batches = [int(b) for b in a.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images")
        make_checkpoint(root / "run", root / "images")
        result = export_artifacts(
            root / "run", root / "art", max_batch=max(batches), int8=True, executorch=True, ncnn=True
        )
        if not result.passed:
            raise SystemExit(f"export failed parity: {result.report.failure()}")
        settings = BenchSettings(batch_sizes=batches, runtimes=RUNTIMES, threads=a.threads, max_seconds=a.max_seconds)
        report = run_bench(root / "art", settings)
    HERE.mkdir(exist_ok=True)
    data = {
        "date": datetime.date.today().isoformat(),
        **report.to_json(),
        "export_details": {k: result.details.get(k) for k in ("executorch", "ncnn")},
        "not_published": result.dropped,
    }
    (HERE / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    notes = [f"- {r.runtime} {r.graph}: {r.note}" for r in report.rows if r.note and not r.p50_ms]
    notes += [f"- not published: {name}: {why}" for name, why in result.dropped.items()]
    title = f"# Mobile runtimes on {cpu_model()} ({settings.threads} threads), {data['date']}"
    text = [title, "", *_table(report.rows), ""]
    (HERE / "RESULTS.md").write_text("\n".join([*text, *notes, ""]))
    print("\n".join(text))


if __name__ == "__main__":
    main()
