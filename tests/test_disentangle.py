"""The scores themselves, on codes built by hand whose disentanglement is known, and `eval --disentanglement`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit.cli.main import app
from vaekit.data import SHAPE_FACTORS, render_shapes
from vaekit.disentangle import (
    ACTIVE_VARIANCE,
    BINS,
    Disentanglement,
    discretise,
    entropy,
    factor_data,
    mutual_information,
    score,
)
from vaekit.errors import VaekitError

runner = CliRunner()
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    """Every combination of three factors with 3, 6 and 8 values (144 rows), each combination 4 times."""
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(6), np.arange(8), indexing="ij"), axis=-1).reshape(-1, 3)
    return np.repeat(grid, 4, axis=0)


def code(factors: np.ndarray, extra: int = 2, seed: int = 0) -> np.ndarray:
    """Latent j = factor j plus noise narrower than the gap between values, then `extra` pure-noise latents."""
    rng = np.random.default_rng(seed)
    clean = factors.astype(np.float64) + rng.uniform(-0.1, 0.1, factors.shape)
    return np.concatenate([clean, rng.normal(size=(len(factors), extra))], axis=1)


def scored(mu: np.ndarray, factors: np.ndarray) -> Disentanglement:
    return score(mu, np.zeros_like(mu), factors, NAMES)


def test_a_perfectly_disentangled_code_scores_near_one(factors: np.ndarray) -> None:
    report = scored(code(factors), factors)
    assert report.mig() > 0.9 and report.sap() > 0.9
    result = report.to_json()
    assert [result["per_factor"][n]["latent"] for n in NAMES] == [0, 1, 2]
    assert [report.carried(j) for j in range(3)] == list(NAMES)


def test_a_rotated_code_scores_low(factors: np.ndarray) -> None:
    mu = code(factors)
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(mu.shape[1], mu.shape[1])))
    perfect, rotated = scored(mu, factors), scored(mu @ rotation, factors)
    assert rotated.mig() < perfect.mig() / 3
    assert rotated.sap() < perfect.sap() / 2


def test_a_duplicated_latent_takes_the_gap_away(factors: np.ndarray) -> None:
    mu = code(factors, extra=0)
    twice = np.concatenate([mu, mu + np.random.default_rng(2).uniform(-0.05, 0.05, mu.shape)], axis=1)
    report = scored(twice, factors)
    assert report.mig() < 0.1 and report.sap() < 0.1
    assert scored(mu, factors).mig() > 0.9  # the same information, held once


def test_a_constant_code_scores_zero(factors: np.ndarray) -> None:
    report = scored(np.full((len(factors), 4), 0.3), factors)
    assert report.mig() == 0.0 and report.sap() == 0.0
    assert np.all(report.mi == 0.0) and not report.active.any()
    assert report.carried(0) is None


def test_a_collapsed_copy_counts_only_without_the_activity_rule(factors: np.ndarray) -> None:
    """Binning stretches a latent of tiny variance to full width: an inactive copy of factor 0 becomes its
    runner-up for MIG over all latents, but not for MIG over the active ones."""
    mu = code(factors, extra=0)
    faint = 1e-3 * mu[:, :1]  # variance well below ACTIVE_VARIANCE
    report = scored(np.concatenate([mu, faint], axis=1), factors)
    assert faint.var() < ACTIVE_VARIANCE and not report.active[3]
    assert report.mig(only_active=True) > 0.9 > report.mig() + 0.2


def test_mutual_information_is_entropy_for_a_copy_and_zero_for_independence() -> None:
    v = np.repeat(np.arange(5), 40)
    independent = np.tile(np.arange(8), 25)
    mi = mutual_information(np.stack([v, independent], axis=1), v[:, None])
    assert mi[0, 0] == pytest.approx(entropy(v)) == pytest.approx(np.log(5))
    assert mi[1, 0] == pytest.approx(0.0, abs=1e-12)


def test_discretise_spreads_each_column_over_the_bins() -> None:
    x = np.stack([np.linspace(-2, 5, 1000), np.full(1000, 7.0)], axis=1)
    b = discretise(x)
    assert b[:, 0].min() == 0 and b[:, 0].max() == BINS - 1 and len(np.unique(b[:, 0])) == BINS
    assert np.all(b[:, 1] == 0)


def test_kl_per_latent_is_the_closed_form(factors: np.ndarray) -> None:
    mu = code(factors, extra=0)
    log_var = np.full_like(mu, np.log(0.5))
    report = score(mu, log_var, factors, NAMES)
    expected = 0.5 * (mu**2 + 0.5 - np.log(0.5) - 1).mean(axis=0)
    np.testing.assert_allclose(report.kl, expected)


def test_codes_that_do_not_fit_are_one_line(factors: np.ndarray) -> None:
    with pytest.raises(VaekitError, match="do not fit"):
        scored(code(factors)[:-1], factors)
    with pytest.raises(VaekitError, match="NaN or Inf"):
        scored(np.full((len(factors), 2), np.nan), factors)
    with pytest.raises(VaekitError, match="nothing to disentangle"):
        scored(code(factors), np.zeros_like(factors))


def test_only_data_with_a_factor_table_is_scored() -> None:
    with pytest.raises(VaekitError, match="no factor table"):
        factor_data("digits", 16)
    d = factor_data("shapes", 16)
    images, table = render_shapes(16)
    assert d.names == SHAPE_FACTORS and len(d.names) == table.shape[1]
    np.testing.assert_array_equal(d.factors, table)
    assert d.images.shape == images.shape


def test_eval_disentanglement_prints_one_json_object_and_draws_the_traversals(conv_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "traversals.png"
    r = runner.invoke(app, ["eval", "--checkpoint", str(conv_run), "--data", "shapes", "--disentanglement", "--json"])
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert 0.0 <= result["mig"] <= 1.0 and 0.0 <= result["sap"] <= 1.0
    assert set(result["per_factor"]) == set(SHAPE_FACTORS)
    assert result["n_images"] == len(render_shapes(16)[1])
    assert len(result["latents"]) == 4  # the tiny model's latent_dim
    r = runner.invoke(
        app, ["eval", "--checkpoint", str(conv_run), "--data", "shapes", "--disentanglement", "--png", str(png)]
    )
    assert r.exit_code == 0, r.stderr
    assert "MIG" in r.stdout and all(name in r.stdout for name in SHAPE_FACTORS)
    with Image.open(png) as img:
        assert min(img.size) >= 256
