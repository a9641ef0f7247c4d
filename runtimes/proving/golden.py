"""Golden outputs: the PyTorch fp32 model's mu, log_var and images for the parity inputs, stored at export,
so a device checks every artifact against the model itself with numpy and one runtime, no torch.

A golden reference is an Encoder/Decoder that answers exactly the stored inputs: parity asks it once for
the whole set. Other inputs (`--data`) need the checkpoint, or the fp32 ONNX graphs when asked.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError
from vaekit.fsutil import atomic_write_bytes
from vaekit.runtimes.artifacts import GOLDEN_OUTPUTS, load_golden
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, in_batches

LABEL = "golden"
OTHER_INPUTS = "golden outputs cover only the parity inputs saved at export: pass --checkpoint to judge other inputs"


def _golden_info(info: ArtifactInfo, path: Path, rows: int) -> ArtifactInfo:
    return dataclasses.replace(info, backend=LABEL, device="cpu", precision="fp32", max_batch=rows, path=str(path))


class GoldenEncoder(Encoder):
    def __init__(self, info: ArtifactInfo, images: np.ndarray, mu: np.ndarray, log_var: np.ndarray) -> None:
        self.info, self.images, self.mu, self.log_var = info, images, mu, log_var

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not np.array_equal(images, self.images):
            raise VaekitError(OTHER_INPUTS)
        return self.mu, self.log_var


class GoldenDecoder(Decoder):
    def __init__(self, info: ArtifactInfo, z: np.ndarray, images: np.ndarray) -> None:
        self.info, self.z, self.images = info, z, images

    def _decode(self, z: np.ndarray) -> np.ndarray:
        if not np.array_equal(z, self.z):
            raise VaekitError(OTHER_INPUTS)
        return self.images


def golden_reference(
    artifact_dir: Path, encoder_info: ArtifactInfo, decoder_info: ArtifactInfo, images: np.ndarray, z: np.ndarray
) -> tuple[GoldenEncoder, GoldenDecoder]:
    """The stored outputs as a reference; images: the parity inputs as float32 in the value range."""
    golden = load_golden(artifact_dir, images, z)
    path = artifact_dir / GOLDEN_OUTPUTS
    return (
        GoldenEncoder(_golden_info(encoder_info, path, len(images)), images, golden["mu"], golden["log_var"]),
        GoldenDecoder(_golden_info(decoder_info, path, len(z)), z, golden["image"]),
    )


def save_golden(out_dir: Path, encoder: Encoder, decoder: Decoder, images: np.ndarray, z: np.ndarray) -> None:
    """Run the reference on the parity inputs and store what it computes (npz, no pickle)."""
    mu, log_var = in_batches(encoder.encode, images, encoder.info.max_batch)
    image = in_batches(decoder.decode, z, decoder.info.max_batch)
    buf = io.BytesIO()
    np.savez(buf, mu=mu, log_var=log_var, image=image)
    atomic_write_bytes(out_dir / GOLDEN_OUTPUTS, buf.getvalue())
