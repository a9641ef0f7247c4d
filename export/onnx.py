"""Export the encoder (image -> mu, log_var) and the decoder (z -> image) as two self-contained ONNX graphs.

torch.onnx's dynamo exporter with optimize=True folds constants and the eval-mode BatchNorms into the
convolutions; we then serialize the proto ourselves so the weights stay inside the file (no `.onnx.data`
sidecar that breaks on copy), run the full checker and strict shape inference, and stamp metadata.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from vaekit import __version__
from vaekit.checkpoint import Run
from vaekit.config import RunConfig
from vaekit.errors import VaekitError, caused_by_interrupt
from vaekit.export.graph import finalize, set_metadata
from vaekit.model import VAE
from vaekit.runtimes.artifacts import INPUT_NAME, OUTPUT_NAMES, onnx_name

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the exporter colours its messages for terminals
OPSET = 18  # supported by ONNX Runtime >= 1.14 and TensorRT 10.x/11.x parsers


class EncoderGraph(nn.Module):
    """image -> (mu, log_var): deterministic, sampling happens outside the graph."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(image)


class DecoderGraph(nn.Module):
    """z -> image in the model's value range (sigmoid or tanh applied)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


def export_time() -> str:
    """UTC time of export; SOURCE_DATE_EPOCH pins it so two exports can be byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch) if epoch else None))


def graph_metadata(cfg: RunConfig, role: str, checkpoint_sha256: str, max_batch: int, precision: str) -> dict[str, str]:
    return {
        "producer": "vaekit",
        "vaekit_version": __version__,
        "role": role,
        "latent_dim": str(cfg.model.latent_dim),
        "image_shape": json.dumps(list(cfg.model.image_shape)),
        "value_range": json.dumps(list(cfg.model.value_range)),
        "likelihood": cfg.model.likelihood,
        "arch": cfg.model.arch,
        "precision": precision,
        "max_batch": str(max_batch),
        "opset": str(OPSET),
        "checkpoint_sha256": checkpoint_sha256,
        "export_time": export_time(),
    }


def _export_graph(module: nn.Module, example: torch.Tensor, role: str, max_batch: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    inputs, outputs = [INPUT_NAME[role]], list(OUTPUT_NAMES[role])
    # The exporter logs about optional torchvision ops and deprecations on every call: not the user's concern.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes={inputs[0]: {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the graph could not be traced
        if caused_by_interrupt(exc):  # Ctrl-C inside the exporter comes back wrapped in its own error type
            raise KeyboardInterrupt from None
        first = ANSI.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VaekitError(f"torch.onnx.export failed: {first}") from None
    if program is None:
        raise VaekitError("torch.onnx.export returned no program")
    return program.model_proto


def export_onnx(run: Run, out_dir: Path, max_batch: int) -> dict[str, Path]:
    """Write encoder.onnx and decoder.onnx (fp32) into out_dir; returns {role: path}."""
    if max_batch < 1:
        raise VaekitError(f"--max-batch must be >= 1, got {max_batch}")
    cfg = run.cfg
    # An example batch of 2: torch.export specializes dimensions of size 1.
    example = {
        "encoder": torch.zeros(2, *cfg.model.image_shape),
        "decoder": torch.zeros(2, cfg.model.latent_dim),
    }
    graphs: dict[str, nn.Module] = {"encoder": EncoderGraph(run.model), "decoder": DecoderGraph(run.model)}
    paths = {}
    for role, module in graphs.items():
        proto = _export_graph(module.eval(), example[role], role, max_batch)
        set_metadata(proto, graph_metadata(cfg, role, run.sha256, max_batch, "fp32"))
        paths[role] = out_dir / onnx_name(role)
        finalize(proto, paths[role])
    return paths
