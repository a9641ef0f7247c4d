"""Run any artifact through one interface: PyTorch, ONNX Runtime, TensorRT.

`load_encoder(path)` / `load_decoder(path)` pick the backend from the artifact (see `registry`); backends
import their own libraries lazily, so this package needs numpy alone.
"""

from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, InputError
from vaekit.runtimes.registry import load_decoder, load_encoder

__all__ = ["ArtifactInfo", "Decoder", "Encoder", "InputError", "load_decoder", "load_encoder"]
