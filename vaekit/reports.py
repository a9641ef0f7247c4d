"""How parity results look to a person: a rich table and a PNG of reference | runtime | |difference|."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from vaekit.images import grid, labelled_rows, save_png, upscale
from vaekit.runtimes.parity import ParityReport

PREVIEW_IMAGES = 16


def parity_table(report: ParityReport) -> Table:
    ref = report.reference
    reference = f"{ref.get('backend', '?')} {ref.get('precision', '')}"
    title = f"parity vs {reference} ({report.n_images} images, {report.n_latents} z)"
    table = Table(title=title)
    for col in ("runtime", "output", "batches", "max abs", "mean abs", "max rel", "cosine", "PSNR dB", "result"):
        table.add_column(col, justify="right" if col not in ("runtime", "output", "result") else "left")
    for c in report.cases:
        m = c.metrics
        psnr = f"{m['psnr']:.1f}" if "psnr" in m else ""
        verdict = "[green]pass[/]" if c.passed else f"[red]FAIL[/] {'; '.join(c.broken)}"
        table.add_row(
            c.runtime,
            c.output,
            ",".join(map(str, c.batch_sizes)),
            f"{m['max_abs']:.2e}",
            f"{m['mean_abs']:.2e}",
            f"{m['max_rel']:.2e}",
            f"{m['min_cosine']:.6f}",
            psnr,
            verdict,
        )
    return table


def save_parity_png(report: ParityReport, value_range: tuple[float, float], path: Path) -> None:
    """One block per runtime: reference decodes, the runtime's decodes, and |difference| stretched to full scale."""
    rows = []
    for name, (ref, got) in report.previews.items():
        ref, got = ref[:PREVIEW_IMAGES], got[:PREVIEW_IMAGES]
        diff = np.abs(got - ref)
        peak = float(diff.max())
        lo, hi = value_range
        stretched = lo + diff / (peak if peak > 0 else 1.0) * (hi - lo)
        rows += [
            (f"reference ({report.reference.get('backend', '')})", grid(ref, value_range, ncol=PREVIEW_IMAGES)),
            (name, grid(got, value_range, ncol=PREVIEW_IMAGES)),
            (
                f"|difference| x{1 / peak if peak > 0 else 1:.3g} (max {peak:.2e})",
                grid(stretched, value_range, ncol=PREVIEW_IMAGES),
            ),
        ]
    if rows:
        save_png(upscale(labelled_rows(rows), 512), path)
