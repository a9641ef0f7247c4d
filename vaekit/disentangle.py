"""How well a code separates known factors: MIG (Chen et al. 2018) and a SAP-style score (Kumar et al. 2018).

Numpy only, so the code of any runtime's encoder is scored by the same arithmetic as the PyTorch model's.
Both scores read the posterior means mu of every image. Each latent is cut into BINS equal-width bins (the
discretised estimator of Locatello et al. 2019), so every mutual information is a histogram count: one pass
over the data, seconds for the 9,216 images of `shapes`.

MIG: for factor k, the gap between the two latents with the highest I(z_j; v_k), over H(v_k); averaged over
factors. SAP: for factor k, a one-dimensional classifier per latent (the majority factor value in each bin,
fitted on the training split) scored on the test split, its accuracy rescaled so that chance (the most common
value) is 0 and perfect is 1; the score is the gap between the best two latents, averaged over factors.
MIG asks whether one latent holds a factor's information and no other does; SAP whether one latent alone
predicts it, so a latent that orders a factor without separating its values counts for SAP, not for MIG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaekit.data import SHAPE_FACTORS, render_shapes, split_indices
from vaekit.errors import VaekitError

BINS = 20  # Locatello et al.'s choice; the MI bias (bins-1)(values-1)/2N is ~0.007 nats on `shapes`
ACTIVE_VARIANCE = 0.01  # Burda et al. 2016: a latent is active when Var_x(E[z|x]) exceeds 0.01
SAP_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class FactorData:
    images: np.ndarray  # uint8 (N, C, H, W)
    factors: np.ndarray  # int (N, K): the index of each factor's value
    names: tuple[str, ...]  # (K,)


def factor_data(spec: str, image_size: int) -> FactorData:
    """Every image of a dataset whose generative factors are known, with its factor table (only `shapes` today)."""
    if spec.partition(":")[0] != "shapes":
        raise VaekitError(
            f"--data {spec} has no factor table: disentanglement is measured on data whose factors are known "
            "(--data shapes)"
        )
    images, factors = render_shapes(image_size)
    return FactorData(images, factors, SHAPE_FACTORS)


def discretise(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(N, D) floats -> (N, D) bin indices, equal-width bins between each column's min and max."""
    lo, hi = codes.min(axis=0), codes.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)  # a constant column falls into bin 0: it carries nothing
    return np.clip(((codes - lo) / width * bins).astype(np.int64), 0, bins - 1)


def entropy(labels: np.ndarray) -> float:
    """Entropy in nats of non-negative integer labels."""
    counts = np.bincount(labels)
    p = counts[counts > 0] / len(labels)
    return float(-(p * np.log(p)).sum())


def mutual_information(binned: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, K) I(z_j; v_k) in nats from the joint histograms: H(z) + H(v) - H(z, v)."""
    mi = np.zeros((binned.shape[1], factors.shape[1]))
    for k in range(factors.shape[1]):
        v = factors[:, k]
        for j in range(binned.shape[1]):
            z = binned[:, j]
            mi[j, k] = entropy(z) + entropy(v) - entropy(z * (int(v.max()) + 1) + v)
    return np.maximum(mi, 0.0)  # rounding can leave -1e-16


def predictability(binned: np.ndarray, factors: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(D, K) accuracy above chance of predicting v_k from z_j's bin alone, fitted off the test rows."""
    train = np.setdiff1d(np.arange(len(binned)), test)
    score = np.zeros((binned.shape[1], factors.shape[1]))
    for k in range(factors.shape[1]):
        v = factors[:, k]
        values = int(v.max()) + 1
        chance = np.bincount(v[test], minlength=values).max() / len(test)
        if chance == 1.0:
            continue  # a factor that never varies on the test rows cannot be predicted better than chance
        for j in range(binned.shape[1]):
            counts = np.zeros((int(binned[:, j].max()) + 1, values))
            np.add.at(counts, (binned[train, j], v[train]), 1)
            accuracy = float((counts.argmax(axis=1)[binned[test, j]] == v[test]).mean())
            score[j, k] = max(0.0, (accuracy - chance) / (1.0 - chance))
    return score


def _gaps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: the best row, the runner-up row and the gap between their values."""
    order = np.argsort(-matrix, axis=0, kind="stable")
    cols = np.arange(matrix.shape[1])
    best = order[0]
    second = order[1] if len(matrix) > 1 else order[0]
    runner_up = matrix[second, cols] if len(matrix) > 1 else np.zeros(matrix.shape[1])
    return best, second, matrix[best, cols] - runner_up


@dataclass(frozen=True)
class Disentanglement:
    names: tuple[str, ...]  # the factors, (K,)
    mi: np.ndarray  # (D, K) nats
    factor_entropy: np.ndarray  # (K,) nats
    sap_matrix: np.ndarray  # (D, K) accuracy above chance
    kl: np.ndarray  # (D,) mean KL(q(z_j|x) || N(0, 1)) in nats: what each latent costs
    active: np.ndarray  # (D,) bool, Var_x(mu_j) > ACTIVE_VARIANCE
    n_images: int
    centre: np.ndarray  # (D,) mu of the image nearest the middle of every factor: where traversals start
    centre_index: int

    @property
    def nmi(self) -> np.ndarray:
        """(D, K) I(z_j; v_k) / H(v_k): the share of a factor's information a latent holds."""
        return self.mi / np.where(self.factor_entropy > 0, self.factor_entropy, 1.0)

    def mig(self, only_active: bool = False) -> float:
        """Mean normalised gap over the factors that vary; only_active: inactive latents cannot be runner-up."""
        varying = self.factor_entropy > 0
        rows = self.nmi[self.active] if only_active else self.nmi
        if not rows.size:
            return 0.0
        return float(_gaps(rows)[2][varying].mean())

    def sap(self) -> float:
        varying = self.factor_entropy > 0
        return float(_gaps(self.sap_matrix)[2][varying].mean())

    def carried(self, dim: int) -> str | None:
        """The factor latent `dim` holds the largest share of, or None for an inactive latent."""
        return self.names[int(self.nmi[dim].argmax())] if self.active[dim] else None

    def to_json(self) -> dict[str, Any]:
        best, second, gap = _gaps(self.nmi)
        sap_best, _, sap_gap = _gaps(self.sap_matrix)
        per_factor = {
            name: {
                "latent": int(best[k]),
                "mig_gap": float(gap[k]),
                "nmi": float(self.nmi[best[k], k]),
                "runner_up": int(second[k]),
                "runner_up_nmi": float(self.nmi[second[k], k]),
                "entropy_nats": float(self.factor_entropy[k]),
                "sap_latent": int(sap_best[k]),
                "sap_gap": float(sap_gap[k]),
            }
            for k, name in enumerate(self.names)
        }
        latents = [
            {"dim": j, "kl_nats": float(self.kl[j]), "active": bool(self.active[j]), "factor": self.carried(j)}
            for j in range(len(self.kl))
        ]
        return {
            "mig": self.mig(),
            "mig_active": self.mig(only_active=True),
            "sap": self.sap(),
            "per_factor": per_factor,
            "latents": latents,
            "active_latents": int(self.active.sum()),
            "kld": float(self.kl.sum()),
            "n_images": self.n_images,
            "bins": BINS,
        }


def score(mu: np.ndarray, log_var: np.ndarray, factors: np.ndarray, names: tuple[str, ...]) -> Disentanglement:
    """Score posterior means (N, D) against a factor table (N, K); log_var gives each latent's KL."""
    if mu.ndim != 2 or len(mu) != len(factors) or factors.shape[1] != len(names):
        raise VaekitError(f"codes {mu.shape} and factor table {factors.shape} ({len(names)} names) do not fit")
    if not np.isfinite(mu).all() or not np.isfinite(log_var).all():
        raise VaekitError("the encoder gave NaN or Inf for some images: the model or artifact is damaged")
    labels = np.stack([np.unique(factors[:, k], return_inverse=True)[1] for k in range(factors.shape[1])], axis=1)
    if all(len(np.unique(factors[:, k])) < 2 for k in range(factors.shape[1])):
        raise VaekitError("no factor of the table varies: there is nothing to disentangle")
    binned = discretise(mu)
    test = split_indices(len(mu), SAP_TEST_FRACTION)[1]
    centre = int(np.abs(labels - labels.max(axis=0) / 2).sum(axis=1).argmin())
    kl = 0.5 * (mu**2 + np.exp(log_var) - log_var - 1.0).mean(axis=0)  # the model's KL, per dimension
    return Disentanglement(
        names=names,
        mi=mutual_information(binned, labels),
        factor_entropy=np.array([entropy(labels[:, k]) for k in range(labels.shape[1])]),
        sap_matrix=predictability(binned, labels, test),
        kl=kl,
        active=mu.var(axis=0) > ACTIVE_VARIANCE,
        n_images=len(mu),
        centre=mu[centre].astype(np.float32),
        centre_index=centre,
    )
