"""Layerwise parity: `compare_layers` names the first layer of an artifact that diverges, in a `LayerwiseReport`
(and its picture); `node_budget`/`costliest` rank graph nodes for the precision graphs that keep some in float."""

from vaekit.runtimes.proving.layerwise.budget import costliest, node_budget
from vaekit.runtimes.proving.layerwise.compare import LayerwiseReport, compare_layers
from vaekit.runtimes.proving.layerwise.png import save_layer_error_png

__all__ = ["LayerwiseReport", "compare_layers", "costliest", "node_budget", "save_layer_error_png"]
