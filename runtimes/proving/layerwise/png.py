"""The error-per-layer picture of a layerwise report (numpy + pillow, like every deploy-side PNG).

One row per layer in graph order: a bar of max |candidate - reference| on a log scale, a black tick at
the layer's own max_abs tolerance (scaled to its magnitude), the first divergence in red, NaN/Inf as a
full dark-red bar, layers computed inside another one greyed with where they went.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vaekit.images import save_image
from vaekit.runtimes.proving.layerwise.compare import LayerwiseReport

ROW, LABEL_WIDTH, BAR_WIDTH, TOP, BOTTOM = 18, 260, 420, 34, 30
BAR, DIVERGED, NONFINITE, GREY, TICK = (31, 119, 180), (214, 39, 40), (120, 0, 0), (150, 150, 150), (0, 0, 0)


def _decades(report: LayerwiseReport) -> tuple[int, int]:
    values = [layer.metrics["max_abs"] for layer in report.layers if layer.metrics.get("max_abs", 0) > 0]
    values += [layer.tolerance["max_abs"] or 0.0 for layer in report.layers if layer.tolerance.get("max_abs")]
    if not values:
        return -8, 0
    return math.floor(math.log10(min(values))), max(
        math.ceil(math.log10(max(values))), math.floor(math.log10(min(values))) + 1
    )


def layer_error_png(report: LayerwiseReport) -> Image.Image:
    width = LABEL_WIDTH + BAR_WIDTH + 200
    img = Image.new("RGB", (width, TOP + ROW * max(1, len(report.layers)) + BOTTOM), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    title = f"{report.graph} on {report.runtime} vs {report.reference}: max |diff| per layer (log scale)"
    draw.text((4, 4), title, fill=TICK, font=font)
    fd = report.first_divergence
    draw.text((4, 18), report.summary()[:150], fill=DIVERGED if fd else (44, 160, 44), font=font)
    lo, hi = _decades(report)

    def x_of(value: float) -> float:
        v = min(max(math.log10(value), lo), hi) if value > 0 else lo
        return LABEL_WIDTH + BAR_WIDTH * (v - lo) / (hi - lo)

    for i, layer in enumerate(report.layers):
        y = TOP + i * ROW
        diverged = fd is not None and fd["module"] == layer.module and fd["onnx_node"] == layer.onnx_node
        draw.text((4, y + 3), f"{layer.module} ({layer.op_type})"[:40], fill=DIVERGED if diverged else TICK, font=font)
        if layer.nonfinite:
            draw.rectangle((LABEL_WIDTH, y + 3, LABEL_WIDTH + BAR_WIDTH, y + ROW - 3), fill=NONFINITE)
            draw.text((LABEL_WIDTH + BAR_WIDTH + 6, y + 3), "NaN/Inf", fill=NONFINITE, font=font)
            continue
        if not layer.metrics:
            draw.text((LABEL_WIDTH + 4, y + 3), layer.note[:70], fill=GREY, font=font)
            continue
        value = layer.metrics["max_abs"]
        draw.rectangle((LABEL_WIDTH, y + 3, x_of(value), y + ROW - 3), fill=DIVERGED if diverged else BAR)
        tol = layer.tolerance.get("max_abs")
        if tol:
            x = x_of(tol)
            draw.line((x, y + 1, x, y + ROW - 1), fill=TICK, width=2)
        cosine = layer.metrics["min_cosine"]
        draw.text((LABEL_WIDTH + BAR_WIDTH + 6, y + 3), f"{value:.2g}  cos {cosine:.6f}", fill=TICK, font=font)
    axis_y = TOP + ROW * max(1, len(report.layers)) + 4
    for decade in range(lo, hi + 1):
        x = x_of(10.0**decade)
        draw.line((x, axis_y, x, axis_y + 4), fill=TICK)
        draw.text((x - 10, axis_y + 6), f"1e{decade}", fill=TICK, font=font)
    return img


def save_layer_error_png(report: LayerwiseReport, path: Path) -> None:
    save_image(layer_error_png(report), path)
