"""PyTorch backend: the trained checkpoint itself, eval mode, fp32 — the parity reference.

`compile=True` runs the same module through torch.compile (inductor): the first call per shape compiles.
`precision="bf16"` runs it under bf16 autocast, the PyTorch user's own low-precision route (a bench peer).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import OUTPUT_NAMES, Role
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder

if TYPE_CHECKING:
    from vaekit.config import RunConfig
    from vaekit.model import VAE

UNBOUNDED_BATCH = 1 << 16  # eager PyTorch has no engine profile; this only bounds a single call
LABEL = "pytorch"


def status(device: str) -> str:
    try:
        import torch
    except ImportError:
        return "PyTorch not installed (pip install 'vaekit[train]')"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return ""


def precision_status(device: str, precision: str) -> str:
    """bf16 autocast runs anywhere, but only CPUs with bf16 units (AVX512-BF16, AMX) make it fast."""
    from vaekit.runtimes.cpu import cpu_flags

    missing = status(device)
    if missing or device != "cpu":
        return missing
    return "" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "this CPU has no bf16 units (AVX512-BF16 or AMX)"


def _require(device: str) -> None:
    missing = status(device)
    if missing:
        raise VaekitError(f"the PyTorch runtime cannot run on {device}: {missing}")


def model_info(
    cfg: RunConfig, role: Role, device: str, source_sha256: str, path: str, precision: str = "fp32"
) -> ArtifactInfo:
    m = cfg.model
    return ArtifactInfo(
        role=role,
        latent_dim=m.latent_dim,
        image_shape=m.image_shape,
        value_range=m.value_range,
        likelihood=m.likelihood,
        precision=precision,
        backend=LABEL,
        device=device.split(":")[0],
        max_batch=UNBOUNDED_BATCH,
        source_sha256=source_sha256,
        path=path,
        extra={"vaekit_version": cfg.version},
    )


class TorchRunner:
    """Both directions of one in-memory model; the Encoder/Decoder below are views of it."""

    def __init__(self, model: VAE, device: str, compile: bool = False, bf16: bool = False) -> None:
        import contextlib

        import torch

        self.torch = torch
        self.model, self.device = model.to(device).eval(), device
        self.autocast: Any = (
            (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )
        self.encode_fn: Any = torch.compile(model.encode) if compile else model.encode
        self.decode_fn: Any = torch.compile(model.decode) if compile else model.decode

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad(), self.autocast():
            mu, log_var = self.encode_fn(self.torch.from_numpy(images).to(self.device))
        return mu.float().cpu().numpy(), log_var.float().cpu().numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:
        with self.torch.no_grad(), self.autocast():
            return np.asarray(self.decode_fn(self.torch.from_numpy(z).to(self.device)).float().cpu().numpy())


class TorchEncoder(Encoder):
    def __init__(self, runner: TorchRunner, info: ArtifactInfo) -> None:
        self.runner, self.info = runner, info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.encode(images)


class TorchDecoder(Decoder):
    def __init__(self, runner: TorchRunner, info: ArtifactInfo) -> None:
        self.runner, self.info = runner, info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.decode(z)


def from_model(
    model: VAE,
    cfg: RunConfig,
    source_sha256: str,
    path: str = "",
    device: str = "cpu",
    compile: bool = False,
    precision: str = "fp32",
) -> tuple[TorchEncoder, TorchDecoder]:
    """Encoder and decoder over a model already in memory (export loads the weights once and passes them on)."""
    if precision not in ("fp32", "bf16"):
        raise VaekitError(f"the PyTorch runtime computes in fp32 or bf16 (autocast), not {precision}")
    runner = TorchRunner(model, device, compile, bf16=precision == "bf16")
    return (
        TorchEncoder(runner, model_info(cfg, "encoder", device, source_sha256, path, precision)),
        TorchDecoder(runner, model_info(cfg, "decoder", device, source_sha256, path, precision)),
    )


def load(
    path: Path,
    role: Role,
    device: str,
    compile: bool = False,
    precision: str = "fp32",
    threads: int | None = None,
) -> Encoder | Decoder:
    """compile: torch.compile; precision: fp32 or bf16 (autocast); threads: torch's intra-op threads."""
    _require(device)
    import torch

    from vaekit.checkpoint import load_run

    if threads:
        torch.set_num_threads(threads)
    run = load_run(path, device)
    encoder, decoder = from_model(run.model, run.cfg, run.sha256, str(path), device, compile, precision)
    return encoder if role == "encoder" else decoder


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    _require("cpu")
    from vaekit.checkpoint import load_run

    run = load_run(path)
    return model_info(run.cfg, role, "cpu", run.sha256, str(path))


def capture_modules(
    source: VAE | TorchRunner | Encoder | Decoder, role: Role, x: np.ndarray, keep: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """Every leaf module's output on one forward pass of `role`, in execution order, then the graph outputs by name.

    Layerwise parity compares these with an artifact's tensors: keys are module paths as `named_modules` gives
    them ("decoder.1"), plus "mu"/"log_var" or "image". Hooks, not the compiled function: torch.compile would
    fuse the very boundaries we read. keep: store only these modules (bounds memory); the outputs always.
    """
    import torch

    runner = source if isinstance(source, TorchRunner) else getattr(source, "runner", None)
    model: Any = runner.model if isinstance(runner, TorchRunner) else source
    if not hasattr(model, "named_modules") or not hasattr(model, "decode"):
        raise VaekitError(f"PyTorch module outputs need a PyTorch VAE, got {type(source).__name__}")
    device = next(model.parameters()).device
    found: dict[str, np.ndarray] = {}

    def hook(name: str) -> Any:
        def store(_module: Any, _args: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            if isinstance(tensor, torch.Tensor) and (keep is None or name in keep):
                found[name] = tensor.detach().float().cpu().numpy()

        return store

    leaves = [(name, m) for name, m in model.named_modules() if name and not any(m.children())]
    handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    try:
        with torch.no_grad():
            x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            out = model.encode(x_t) if role == "encoder" else (model.decode(x_t),)
    finally:
        for handle in handles:
            handle.remove()
    found.update((name, t.float().cpu().numpy()) for name, t in zip(OUTPUT_NAMES[role], out, strict=True))
    return found


def capture_checkpoint(
    path: Path, role: Role, x: np.ndarray, device: str = "cpu", keep: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """`capture_modules` on a checkpoint (run directory or its weights file), loaded in eval mode."""
    _require(device)
    from vaekit.checkpoint import load_run

    run = load_run(path, device)
    return capture_modules(run.model.eval(), role, x, keep)
