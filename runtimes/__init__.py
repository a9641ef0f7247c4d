"""Run any artifact through one interface, in rooms by job.

At the top: `base` (the interface), `artifacts` (every artifact name and reader), `registry` (one entry per
backend), `generate`. Rooms: `backends/` (one module per runtime), `proving/` (parity, layerwise, golden
outputs, pictures), `measuring/` (bench, machine, FLOPs, the fastest runtime). `load_encoder(path)` /
`load_decoder(path)` pick the backend from the artifact; backends import their own libraries lazily, so this
package needs numpy alone.
"""

from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, InputError
from vaekit.runtimes.registry import BACKENDS, describe, load_decoder, load_encoder, open_decoder, open_encoder

__all__ = [
    "BACKENDS",
    "ArtifactInfo",
    "Decoder",
    "Encoder",
    "InputError",
    "describe",
    "load_decoder",
    "load_encoder",
    "open_decoder",
    "open_encoder",
]
