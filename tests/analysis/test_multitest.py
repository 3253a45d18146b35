"""Tests for analysis/multitest.py. Expected values come from statsmodels' ``multipletests``
(a test-only dependency) and, for calibration, from simulation against known truth."""

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from patchsweep.analysis.multitest import adjust, correct
from patchsweep.stores.errors import ConfigError

SM_NAMES = {"bh": "fdr_bh", "by": "fdr_by", "holm": "holm", "bonferroni": "bonferroni"}


def _random_pvalues(rng, m):
    p = rng.uniform(size=m) ** 3  # many small p-values
    p[rng.integers(0, m, m // 10)] = 0.0
    p[rng.integers(0, m, m // 10)] = 1.0
    ties = rng.choice(p, m // 5)  # repeated values
    p[rng.integers(0, m, m // 5)] = ties
    p[rng.integers(0, m, m // 20)] = np.round(p[: m // 20], 2)
    return p


@pytest.mark.parametrize("method", list(SM_NAMES))
@pytest.mark.parametrize("m", [1, 2, 7, 1000, 100_000])
def test_adjust_matches_statsmodels(method, m):
    rng = np.random.default_rng(m)
    p = _random_pvalues(rng, m)
    reject, expected, _, _ = multipletests(p, alpha=0.05, method=SM_NAMES[method])
    got = adjust(p, method)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    res = correct(p, method, alpha=0.05)
    np.testing.assert_array_equal(res.significant, reject)


@pytest.mark.parametrize("method", list(SM_NAMES))
def test_correct_per_family_matches_statsmodels_on_each_family(method):
    rng = np.random.default_rng(3)
    p = _random_pvalues(rng, 3000)
    family = rng.choice(np.array(["resid_pre", "attn_out", "mlp_out"]), p.size)
    res = correct(p, method, alpha=0.1, family=family)
    for name in np.unique(family):
        sel = family == name
        reject, expected, _, _ = multipletests(p[sel], alpha=0.1, method=SM_NAMES[method])
        np.testing.assert_allclose(res.adjusted[sel], expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(res.significant[sel], reject)


def test_adjust_ignores_nan_pvalues():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    got = adjust(p, "bh")
    _, expected, _, _ = multipletests(p[[0, 2, 3]], method="fdr_bh")
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], expected, atol=1e-15)
    assert not correct(p, "bh").significant[1]


def test_adjust_rejects_unknown_method():
    with pytest.raises(ConfigError, match="Unknown correction 'fdr'"):
        adjust(np.array([0.1]), "fdr")


def test_adjust_rejects_out_of_range_pvalue():
    with pytest.raises(ConfigError, match=r"\[0, 1\], got 1.5"):
        adjust(np.array([0.1, 1.5]), "bh")


def test_correct_rejects_bad_alpha():
    with pytest.raises(ConfigError, match="alpha must lie in"):
        correct(np.array([0.1]), "bh", alpha=1.5)


def test_bh_controls_fdr_with_planted_effects():
    # 400 simulated studies of m = 500 one-sided z-tests, 10% true effects (z shifted by 3).
    # BH at alpha guarantees FDR = alpha * m0 / m = 0.045 under independence; the empirical
    # FDR must not exceed that by more than 3 Monte Carlo standard errors.
    from scipy import special

    rng = np.random.default_rng(11)
    studies, m, alpha = 400, 500, 0.05
    truth = np.zeros((studies, m), dtype=bool)
    truth[:, : m // 10] = True
    z = rng.normal(size=(studies, m)) + 3.0 * truth
    p = special.ndtr(-z)
    fdp = np.empty(studies)
    for s in range(studies):
        sig = correct(p[s], "bh", alpha).significant
        fdp[s] = (sig & ~truth[s]).sum() / max(sig.sum(), 1)
    bound = alpha * 0.9
    assert fdp.mean() <= bound + 3 * fdp.std() / np.sqrt(studies)
    assert fdp.mean() > 0.01  # the procedure does make (a controlled number of) false discoveries


def test_correct_fwer_under_global_null():
    # Holm and Bonferroni: P(any discovery) <= alpha when every null is true (2000 studies).
    rng = np.random.default_rng(5)
    p = rng.uniform(size=(2000, 200))
    for method in ("holm", "bonferroni", "by"):
        any_sig = np.array([correct(row, method, 0.05).significant.any() for row in p])
        assert any_sig.mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
