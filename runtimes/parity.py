"""Parity: does a deployed artifact compute what the reference computes? Numbers against stated tolerances.

The comparator knows only the Encoder/Decoder interface, never a backend. Inputs are real images and
fixed latent vectors (|z| up to 4), run at several batch sizes (1, an odd size, the maximum); the
worst result over batch sizes is what gets judged.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, in_batches
from vaekit.runtimes.loader import DECODER_ONNX, ENCODER_ONNX, load_decoder, load_encoder, onnx_devices, tensorrt_status

PARITY_SEED = 20240229
Z_LIMIT = 4.0
REL_FLOOR = 1e-3  # max relative error divides by max(|reference|, this), so zeros do not explode it
PSNR_CAP = 200.0  # dB reported for identical images (JSON has no infinity)


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None
    min_psnr: float | None = None  # images only


# One table: (precision, device) -> output -> tolerance. GPU fp32 allows TF32 and other kernel orders.
# "image" is judged on latents the prior plausibly draws; "image_stress" on the stress latents (|z| = 4 in
# every dimension, |z|^2 = 16 D against D typical): full precision must still match there, fp16 must not
# overflow, and int8, whose ranges are calibrated on real data, must stay a recognisable image.
OUTPUTS = ("mu", "log_var", "image", "image_stress")
TOLERANCES: dict[tuple[str, str], dict[str, Tolerance]] = {
    ("fp32", "cpu"): {o: Tolerance(max_abs=1e-4, min_cosine=0.99999) for o in OUTPUTS},
    ("fp32", "cuda"): {o: Tolerance(max_abs=1e-3, min_cosine=0.9999) for o in OUTPUTS},
    ("fp16", "cpu"): {
        "mu": Tolerance(max_abs=5e-2, min_cosine=0.999),
        "log_var": Tolerance(max_abs=5e-2, min_cosine=0.999),
        "image": Tolerance(min_psnr=40.0, min_cosine=0.999),
        "image_stress": Tolerance(min_psnr=30.0, min_cosine=0.99),
    },
    ("int8", "cpu"): {
        "mu": Tolerance(min_cosine=0.98),
        "log_var": Tolerance(min_cosine=0.98),
        "image": Tolerance(min_psnr=30.0, min_cosine=0.99),
        "image_stress": Tolerance(min_psnr=15.0),
    },
}
TOLERANCES[("fp16", "cuda")] = TOLERANCES[("fp16", "cpu")]
TOLERANCES[("int8", "cuda")] = TOLERANCES[("int8", "cpu")]


def tolerance_for(info: ArtifactInfo, output: str) -> Tolerance:
    return TOLERANCES[(info.precision, "cpu" if info.device == "cpu" else "cuda")][output]


def metrics(reference: np.ndarray, got: np.ndarray, value_range: tuple[float, float] | None = None) -> dict[str, float]:
    """max/mean abs error, max relative error, worst per-sample cosine similarity, and PSNR for images."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = got.reshape(len(got), -1).astype(np.float64)
    diff = np.abs(out - ref)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(norms > 0, (ref * out).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    result = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float((diff / np.maximum(np.abs(ref), REL_FLOOR)).max()),
        "min_cosine": float(cos.min()),
    }
    if value_range is not None:
        span = value_range[1] - value_range[0]
        mse = float((diff**2).mean())
        result["psnr"] = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(span**2 / mse))
    return result


def worst(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: (min(a[k], b[k]) if k in ("min_cosine", "psnr") else max(a[k], b[k])) for k in a}


def judge(m: dict[str, float], tol: Tolerance) -> list[str]:
    """Names of broken limits, e.g. ['max_abs 3e-3 > 1e-4']."""
    broken = []
    if tol.max_abs is not None and not m["max_abs"] <= tol.max_abs:
        broken.append(f"max_abs {m['max_abs']:.3g} > {tol.max_abs:g}")
    if tol.min_cosine is not None and not m["min_cosine"] >= tol.min_cosine:
        broken.append(f"cosine {m['min_cosine']:.6f} < {tol.min_cosine:g}")
    if tol.min_psnr is not None and not m.get("psnr", 0.0) >= tol.min_psnr:
        broken.append(f"psnr {m.get('psnr', 0.0):.1f} dB < {tol.min_psnr:g} dB")
    return broken


@dataclass
class Case:
    runtime: str  # backend-device-precision
    path: str  # file name: the report stays valid when the directory moves
    output: str  # mu | log_var | image
    batch_sizes: list[int]
    metrics: dict[str, float]
    tolerance: dict[str, float | None]
    broken: list[str]

    @property
    def passed(self) -> bool:
        return not self.broken


@dataclass
class ParityReport:
    reference: dict[str, Any]
    n_images: int
    n_latents: int
    cases: list[Case] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runtimes that could not run here, with the reason
    errors: list[str] = field(default_factory=list)  # artifacts that failed to load or run
    previews: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # runtime -> (ref, got)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and not self.errors and all(c.passed for c in self.cases)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "inputs": {"images": self.n_images, "latents": self.n_latents, "z_limit": Z_LIMIT, "seed": PARITY_SEED},
            "cases": [{**asdict(c), "passed": c.passed} for c in self.cases],
            "skipped": self.skipped,
            "errors": self.errors,
        }


def fixed_latents(n: int, latent_dim: int) -> np.ndarray:
    """Seeded N(0, I) clipped to |z| <= 4, with the corners +4, -4 and alternating +-4 included."""
    z = np.clip(np.random.default_rng(PARITY_SEED).standard_normal((n, latent_dim)), -Z_LIMIT, Z_LIMIT)
    corners = [np.full(latent_dim, Z_LIMIT), np.full(latent_dim, -Z_LIMIT), Z_LIMIT * (-1.0) ** np.arange(latent_dim)]
    for i, corner in enumerate(corners[:n]):
        z[i] = corner
    return z.astype(np.float32)


def typical_rows(z: np.ndarray) -> np.ndarray:
    """Rows of z a N(0, I) prior plausibly draws: |z|^2 within 6 sigma of its chi-square mean D."""
    d = z.shape[1]
    return np.asarray((z.astype(np.float64) ** 2).sum(axis=1) <= d + 6 * np.sqrt(2 * d))


def batch_sizes_for(max_batch: int, n: int) -> list[int]:
    """1, an odd size, and the maximum (bounded by the number of inputs)."""
    top = min(max_batch, n)
    return sorted({1, min(3, top) if top < 7 else 7, top})


def _case(info: ArtifactInfo, output: str, sizes: list[int], m: dict[str, float]) -> Case:
    tol = tolerance_for(info, output)
    return Case(info.name, Path(info.path).name, output, sizes, m, asdict(tol), judge(m, tol))


def compare_encoder(reference: Encoder, candidate: Encoder, images: np.ndarray, report: ParityReport) -> None:
    ref_mu, ref_log_var = in_batches(reference.encode, images, reference.info.max_batch)
    sizes = batch_sizes_for(candidate.info.max_batch, len(images))
    runs = [in_batches(candidate.encode, images, b) for b in sizes]
    for name, ref, index in (("mu", ref_mu, 0), ("log_var", ref_log_var, 1)):
        m = reduce(worst, (metrics(ref, got[index]) for got in runs))
        report.cases.append(_case(candidate.info, name, sizes, m))


def compare_decoder(reference: Decoder, candidate: Decoder, z: np.ndarray, report: ParityReport) -> None:
    ref = in_batches(reference.decode, z, reference.info.max_batch)
    sizes = batch_sizes_for(candidate.info.max_batch, len(z))
    runs = [in_batches(candidate.decode, z, b) for b in sizes]
    typical = typical_rows(z)
    for name, rows in (("image", typical), ("image_stress", ~typical)):
        if rows.any():
            m = reduce(worst, (metrics(ref[rows], got[rows], candidate.info.value_range) for got in runs))
            report.cases.append(_case(candidate.info, name, sizes, m))
    report.previews[candidate.info.name] = (ref, runs[-1])


PRECISION_SUFFIX = {"fp32": "", "fp16": ".fp16", "int8": ".int8"}
PARITY_INPUTS = "parity_inputs.npz"


def artifact_files(artifact_dir: Path) -> list[tuple[str, Path]]:
    """(role, path) of every ONNX graph and TensorRT engine in an export directory."""
    found = []
    for role in ("encoder", "decoder"):
        for suffix in PRECISION_SUFFIX.values():
            found.append((role, artifact_dir / f"{role}{suffix}.onnx"))
        found.append((role, artifact_dir / f"{role}.plan"))
    return [(role, path) for role, path in found if path.is_file()]


def load_inputs(artifact_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and float32 z saved at export time (no pickle), so parity runs without the dataset."""
    path = artifact_dir / PARITY_INPUTS
    if not path.is_file():
        raise VaekitError(f"{path} not found: re-export, or pass --data")
    try:
        with np.load(path, allow_pickle=False) as f:
            images, z = f["images"], f["z"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise VaekitError(f"{path} is not a vaekit parity input file: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or z.ndim != 2 or not len(images) or not len(z):
        raise VaekitError(f"{path}: expected uint8 images (N, C, H, W) and z (N, D), N >= 1")
    return images, z


def run_parity(
    artifact_dir: Path,
    reference: Path | None,
    images: np.ndarray,
    z: np.ndarray,
    devices: tuple[str, ...] = ("cpu", "cuda", "tensorrt"),
) -> ParityReport:
    """Compare every artifact in artifact_dir, on every device that can run it, against the reference.

    reference: a checkpoint (PyTorch fp32); None means the fp32 ONNX graphs on ONNX Runtime CPU.
    images: float32 in the value range.
    """
    ref_path = reference if reference is not None else artifact_dir
    ref_enc, ref_dec = load_encoder(ref_path), load_decoder(ref_path)
    report = ParityReport(reference=ref_dec.info.to_json(), n_images=len(images), n_latents=len(z))
    ort_status = onnx_devices()
    trt_status: str | None = None
    for role, path in artifact_files(artifact_dir):
        if path.suffix == ".plan":
            if not {"cuda", "tensorrt"} & set(devices):
                continue  # engines run on a GPU only; --devices did not ask for one
            trt_status = tensorrt_status() if trt_status is None else trt_status
            plan_devices = [("cuda", trt_status)]
        else:
            plan_devices = [(d, ort_status[d]) for d in devices]
        for device, missing in plan_devices:
            label = f"{path.name} on {'tensorrt' if path.suffix == '.plan' else 'onnxruntime-' + device}"
            if missing:
                report.skipped.append(f"{label}: {missing}")
                continue
            if reference is None and device == "cpu" and path.name in (ENCODER_ONNX, DECODER_ONNX):
                continue  # that is the reference itself
            try:
                if role == "encoder":
                    compare_encoder(ref_enc, load_encoder(path, device), images, report)
                else:
                    compare_decoder(ref_dec, load_decoder(path, device), z, report)
            except VaekitError as exc:
                report.errors.append(f"{label}: {exc}")
    return report
