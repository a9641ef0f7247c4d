"""Parity: does a deployed artifact compute what the reference computes? Numbers against stated tolerances.

The comparator knows only the Encoder/Decoder interface, never a backend. Inputs are real images and
fixed latent vectors (|z| up to 4), run at several batch sizes (1, an odd size, the maximum); the
worst result over batch sizes is what gets judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.data import load_data, to_float
from vaekit.errors import UsageError, VaekitError
from vaekit.runtimes.artifacts import Role, artifact_dir_of, artifact_files, load_inputs
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, in_batches
from vaekit.runtimes.cpu import int8_class_note
from vaekit.runtimes.proving.golden import golden_reference
from vaekit.runtimes.registry import BACKENDS, Backend, backends_for, describe, load_decoder, load_encoder

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
# bf16 keeps fp32's range with an 8-bit mantissa: no overflow, but ~3 significant digits per op.
TOLERANCES[("bf16", "cpu")] = {
    "mu": Tolerance(max_abs=1e-1, min_cosine=0.999),
    "log_var": Tolerance(max_abs=1e-1, min_cosine=0.999),
    "image": Tolerance(min_psnr=40.0, min_cosine=0.999),
    "image_stress": Tolerance(min_psnr=30.0, min_cosine=0.99),
}
TOLERANCES[("bf16", "cuda")] = TOLERANCES[("bf16", "cpu")]
TOLERANCES[("fp16", "cuda")] = TOLERANCES[("fp16", "cpu")]
TOLERANCES[("int8", "cuda")] = TOLERANCES[("int8", "cpu")]


CPU_LIKE = ("cpu", "wasm")  # devices whose float32 arithmetic is IEEE without TF32-style shortcuts


def tolerance_for(info: ArtifactInfo, output: str) -> Tolerance:
    return TOLERANCES[(info.precision, "cpu" if info.device in CPU_LIKE else "cuda")][output]


def metrics(reference: np.ndarray, got: np.ndarray, value_range: tuple[float, float] | None = None) -> dict[str, float]:
    """max/p99/p50/mean abs error, max relative error, worst per-sample cosine similarity, PSNR for images.

    NaN or Inf in the output is a failure of its own: max_abs becomes inf, cosine -1, PSNR 0.
    """
    if not np.isfinite(got).all():
        bad = {"max_abs": math.inf, "p50_abs": math.inf, "p99_abs": math.inf, "mean_abs": math.inf}
        return {**bad, "max_rel": math.inf, "min_cosine": -1.0, **({"psnr": 0.0} if value_range else {})}
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = got.reshape(len(got), -1).astype(np.float64)
    diff = np.abs(out - ref)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(norms > 0, (ref * out).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    p50, p99 = np.percentile(diff, [50, 99])
    result = {
        "max_abs": float(diff.max()),
        "p50_abs": float(p50),
        "p99_abs": float(p99),
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
    if math.isinf(m["max_abs"]):
        return ["NaN or Inf in the output"]
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
    notes: list[str] = field(default_factory=list)  # what a failure says about this machine (int8 CPU class)
    previews: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # runtime -> (ref, got)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and not self.errors and all(c.passed for c in self.cases)

    def failure(self) -> str:
        """One line for a report that did not pass: the first broken limit, and how many more there are."""
        if not self.cases and not self.errors:
            return "nothing to compare: only the reference runs here (pass --checkpoint, or export fp16/int8 graphs)"
        problems = self.errors + [f"{c.runtime} {c.output}: {c.broken[0]}" for c in self.cases if c.broken]
        more = f" (+{len(problems) - 1} more in the table above)" if len(problems) > 1 else ""
        return "; ".join([f"parity failed: {problems[0]}{more}", *self.notes])

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "inputs": {"images": self.n_images, "latents": self.n_latents, "z_limit": Z_LIMIT, "seed": PARITY_SEED},
            "cases": [{**asdict(c), "passed": c.passed} for c in self.cases],
            "skipped": self.skipped,
            "errors": self.errors,
            "notes": self.notes,
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


def judged_as(output: str, stress: bool) -> str:
    """The tolerance row an output is judged under: images of stress latents have their own."""
    return "image_stress" if stress and output == "image" else output


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
    for stress, rows in ((False, typical), (True, ~typical)):
        name = judged_as("image", stress)
        if rows.any():
            m = reduce(worst, (metrics(ref[rows], got[rows], candidate.info.value_range) for got in runs))
            report.cases.append(_case(candidate.info, name, sizes, m))
    report.previews[candidate.info.name] = (ref, runs[-1])


References = tuple[Encoder, Decoder]


def load_reference(
    artifact_dir: Path, checkpoint: Path | None, images: np.ndarray, z: np.ndarray, onnx: bool = False
) -> References:
    """What parity judges against: the PyTorch fp32 model of a checkpoint; else the golden outputs stored at
    export; the fp32 ONNX graphs on ONNX Runtime CPU only when asked (onnx=True)."""
    if checkpoint is not None or onnx:
        source = checkpoint if checkpoint is not None else artifact_dir
        return load_encoder(source, "cpu"), load_decoder(source, "cpu")
    encoder_info, decoder_info = describe(artifact_dir, "encoder"), describe(artifact_dir)
    return golden_reference(artifact_dir, encoder_info, decoder_info, images, z)


def _compare(
    reference: References, candidate: Encoder | Decoder, images: np.ndarray, z: np.ndarray, report: ParityReport
) -> None:
    if isinstance(candidate, Encoder):
        compare_encoder(reference[0], candidate, images, report)
    elif isinstance(candidate, Decoder):
        compare_decoder(reference[1], candidate, z, report)


@dataclass(frozen=True)
class Candidate:
    """One artifact on one runtime: a backend, a device, and the runtime precision asked for (if any)."""

    role: str
    path: Path
    backend: str
    device: str
    precision: str | None = None

    @property
    def runtime(self) -> str:
        label = f"{BACKENDS[self.backend].label}-{self.device}"
        return f"{label}-{self.precision}" if self.precision else label


def candidates(artifact_dir: Path, devices: tuple[str, ...]) -> tuple[list[Candidate], dict[str, str]]:
    """Every (artifact, runtime) parity can check here, and runtime -> why it cannot (said once per runtime)."""
    found: list[Candidate] = []
    missing: dict[str, str] = {}
    reasons: dict[tuple[str, str, str], str] = {}  # (backend, device, precision) -> why not: asked once per call

    def why_not(backend: Backend, device: str, precision: str) -> str:
        key = (backend.name, device, precision)
        if key not in reasons:
            reasons[key] = backend.precision_status(device, precision) if precision else backend.status(device)
        return reasons[key]

    precisions: dict[Path, str] = {}  # a graph's own precision, read only when a backend needs it

    def graph_precision(path: Path, role: Role) -> str:
        if path not in precisions:
            precisions[path] = describe(path, role).precision
        return precisions[path]

    for role, path in artifact_files(artifact_dir):
        for backend in backends_for(path):
            for device in (d for d in backend.devices if d in devices):
                runtime = Candidate(role, path, backend.name, device).runtime
                reason = why_not(backend, device, "")
                if not reason and backend.graph_limits:
                    limit = backend.graph_status(device, graph_precision(path, role))
                    if limit:
                        missing.setdefault(f"{runtime} on {path.name}", limit)
                        continue
                if reason:
                    missing.setdefault(runtime, reason)
                    continue  # the backend cannot run here at all
                found.append(Candidate(role, path, backend.name, device))
                if not backend.runtime_precisions or graph_precision(path, role) != "fp32":
                    continue
                for precision in backend.runtime_precisions:
                    candidate = Candidate(role, path, backend.name, device, precision)
                    reason = why_not(backend, device, precision)
                    if reason:
                        missing.setdefault(candidate.runtime, reason)
                    else:
                        found.append(candidate)
    return found, missing


def run_parity(
    artifact_dir: Path,
    reference: References,
    images: np.ndarray,
    z: np.ndarray,
    devices: tuple[str, ...] = ("cpu", "cuda", "tensorrt"),
) -> ParityReport:
    """Compare every artifact in artifact_dir, on every runtime here that reads it, against the reference.

    images: float32 in the value range. A runtime this machine lacks is reported once, with the reason.
    """
    report = ParityReport(reference=reference[1].info.to_json(), n_images=len(images), n_latents=len(z))
    itself = {(Path(r.info.path).resolve(), r.info.backend, r.info.device) for r in reference}
    found, missing = candidates(artifact_dir, devices)
    for c in found:
        if (c.path.resolve(), BACKENDS[c.backend].label, c.device) in itself and c.precision is None:
            continue  # that is the reference itself
        options = {"precision": c.precision} if c.precision else {}
        try:
            candidate = BACKENDS[c.backend].load(c.path, c.role, c.device, **options)
            _compare(reference, candidate, images, z, report)
        except VaekitError as exc:
            report.errors.append(f"{c.path.name} on {c.runtime}: {exc}")
            continue
        info = candidate.info
        if info.precision == "int8" and any(k.broken for k in report.cases if k.path == c.path.name):
            note = int8_class_note(c.path.name, info.extra.get("int8_target"))
            report.notes += [note] if note not in report.notes else []
    report.skipped = [f"{runtime}: {why}" for runtime, why in missing.items()]
    return report


def check_devices(devices: tuple[str, ...]) -> tuple[str, ...]:
    """--devices: a comma list of the devices some backend runs on."""
    known = sorted({d for b in BACKENDS.values() for d in b.devices})
    if not devices or any(d not in known for d in devices):
        raise UsageError(f"--devices takes a comma list of {', '.join(known)}; got {','.join(devices)!r}")
    return devices


def parity_of(
    artifact_dir: Path,
    checkpoint: Path | None,
    data: str | None,
    devices: tuple[str, ...],
    reference_onnx: bool = False,
) -> tuple[ParityReport, ArtifactInfo]:
    """`vaekit parity`: every artifact in a directory against the reference, on the saved inputs (or --data)."""
    check_devices(devices)
    artifact_dir = artifact_dir_of(artifact_dir)
    info = describe(artifact_dir)
    images_u8, z = load_inputs(artifact_dir)
    if data:
        if checkpoint is None and not reference_onnx:
            raise UsageError("golden outputs cover only the saved parity inputs: with --data, pass --checkpoint")
        c, h, _ = info.image_shape
        images_u8 = load_data(data, h, c, limit=len(images_u8)).test
    images = to_float(images_u8, info.value_range)
    reference = load_reference(artifact_dir, checkpoint, images, z, reference_onnx)
    return run_parity(artifact_dir, reference, images, z, devices), info
