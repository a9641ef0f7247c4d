"""The bench chart: images/s per runtime and precision, with pillow only (an edge box can draw it)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from vaekit.images import SERIES_COLOURS
from vaekit.runtimes.measuring.bench import BenchReport

# The images module's four series colours, then four more: one colour per runtime + precision in a chart.
COLOURS = (*SERIES_COLOURS, (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


def bench_chart(report: BenchReport) -> Image.Image:
    """One panel per (graph, batch size): a bar of images/s for each runtime and precision."""
    font = ImageFont.load_default()
    measured = [r for r in report.rows if r.images_per_s]
    panels = sorted({(r.graph, r.batch) for r in measured})
    labels = sorted({f"{r.runtime} {r.precision}" for r in measured})
    bar, gap, label_w, width = 16, 4, 190, 760
    panel_h = 22 + len(labels) * (bar + gap)
    img = Image.new("RGB", (width, max(1, len(panels)) * (panel_h + 10) + 10), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for p, (graph, batch) in enumerate(panels):
        top = 10 + p * (panel_h + 10)
        rows = {f"{r.runtime} {r.precision}": r for r in measured if (r.graph, r.batch) == (graph, batch)}
        best = max(r.images_per_s for r in rows.values())
        draw.text((10, top), f"{graph}, batch {batch}: images/s (longer is faster)", fill=(0, 0, 0), font=font)
        for i, label in enumerate(labels):
            y = top + 20 + i * (bar + gap)
            draw.text((10, y + 2), label, fill=(0, 0, 0), font=font)
            row = rows.get(label)
            if row is None:
                continue
            length = int((width - label_w - 90) * row.images_per_s / best)
            colour = COLOURS[labels.index(label) % len(COLOURS)]
            draw.rectangle((label_w, y, label_w + max(1, length), y + bar), fill=colour)
            draw.text((label_w + length + 6, y + 2), f"{row.images_per_s:,.0f}", fill=(0, 0, 0), font=font)
    return img
