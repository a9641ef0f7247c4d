from __future__ import annotations

from pathlib import Path

import pytest

from vaekit.checkpoint import load_model
from vaekit.data import ImageData
from vaekit.evaluate import evaluate


def test_iwae_bound_is_below_the_elbo_and_tightens_with_k(conv_run: Path, digits16: ImageData) -> None:
    model, _ = load_model(conv_run)
    results = {k: evaluate(model, digits16.test, iwae_samples=k, seed=0) for k in (1, 8, 64)}
    for k, r in results.items():
        assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kld"])
        if k > 1:
            assert r["iwae_nll"] < r["neg_elbo"]
    assert results[64]["iwae_nll"] < results[8]["iwae_nll"] < results[1]["iwae_nll"]
    # K=1 importance weighting is just a one-sample ELBO with a Monte-Carlo KL: close to the analytic one.
    assert results[1]["iwae_nll"] == pytest.approx(results[1]["neg_elbo"], rel=0.05)


def test_padding_is_not_counted(conv_run: Path, digits16: ImageData) -> None:
    model, _ = load_model(conv_run)
    full = evaluate(model, digits16.test[:8])
    model.cfg.pad = 2
    inner = evaluate(model, digits16.test[:8])
    assert inner["pixels_counted"] == 12 * 12 < full["pixels_counted"]
    assert inner["recon"] < full["recon"]
