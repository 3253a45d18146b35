"""Tests for analysis/resampling.py. Expected values come from scipy.stats (``bootstrap`` fed
our bootstrap distribution, ``permutation_test``), from a naive per-column loop, and from
coverage/size simulations under a known truth."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as st

from patchsweep.analysis.resampling import (
    bootstrap_ci,
    bootstrap_distribution,
    compact,
    sign_flip_test,
)
from patchsweep.stores.errors import ConfigError


def test_compact_moves_finite_values_up_in_order():
    x = np.array([[np.nan, 1.0], [2.0, np.nan], [3.0, 4.0]])
    xc, n = compact(x)
    np.testing.assert_array_equal(xc, [[2.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(n, [2, 2])


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_ci_matches_scipy_given_same_distribution(method):
    rng = np.random.default_rng(0)
    x = rng.exponential(size=(25, 6))  # skewed, so BCa differs from percentile
    ours = bootstrap_ci(x, method=method, n_resamples=999, seed=4)
    dist = bootstrap_distribution(x, 999, 4)
    for j in range(x.shape[1]):
        ref = st.bootstrap(
            (x[:, j],),
            np.mean,
            n_resamples=0,
            method="BCa" if method == "bca" else method,
            bootstrap_result=SimpleNamespace(bootstrap_distribution=dist[:, j]),
        ).confidence_interval
        np.testing.assert_allclose([ours.low[j], ours.high[j]], [ref.low, ref.high], rtol=1e-12)


def test_bootstrap_ci_is_independent_of_blocking_and_missing_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    x[:5, 4:] = np.nan  # columns 4.. have n = 25 with the values at other rows
    full = bootstrap_ci(x, "bca", 500, seed=2)
    halves = [bootstrap_ci(x[:, :4], "bca", 500, 2), bootstrap_ci(x[:, 4:], "bca", 500, 2)]
    np.testing.assert_array_equal(full.low, np.concatenate([h.low for h in halves]))
    shifted = bootstrap_ci(x[5:, 4:], "bca", 500, seed=2)  # same values, no NaN rows
    np.testing.assert_array_equal(full.high[4:], shifted.high)


def test_bootstrap_ci_coverage():
    # 1000 columns of n = 40 gamma(4) draws (true mean 4): the 90% intervals must cover the
    # truth in 90% of columns within 3 binomial standard errors, less a 2% small-sample
    # allowance (bootstrap intervals are known to undercover slightly at this n).
    rng = np.random.default_rng(3)
    x = rng.gamma(4.0, size=(40, 1000))
    for method in ("percentile", "bca"):
        ci = bootstrap_ci(x, method, 1000, seed=1, confidence=0.9)
        cover = ((ci.low <= 4) & (4 <= ci.high)).mean()
        assert 0.9 - 0.02 - 3 * np.sqrt(0.09 / 1000) <= cover <= 0.9 + 3 * np.sqrt(0.09 / 1000)


def test_bootstrap_ci_rejects_unknown_method():
    with pytest.raises(ConfigError, match="Unknown bootstrap method 'basic'"):
        bootstrap_ci(np.zeros((3, 1)), method="basic")


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_exact_matches_scipy_permutation_test(alternative):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 12)) + 0.5
    x[8:, 6:] = np.nan  # two sample sizes: 10 and 8
    res = sign_flip_test(x, null_value=0.1, alternative=alternative, n_resamples=9999)
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])] - 0.1
        ref = st.permutation_test(
            (col,), np.mean, permutation_type="samples", alternative=alternative, n_resamples=9999
        )
        np.testing.assert_allclose(res.statistic[j], ref.statistic, rtol=1e-12)
        np.testing.assert_allclose(res.pvalue[j], ref.pvalue, rtol=1e-12)


def test_sign_flip_monte_carlo_agrees_with_scipy_within_mc_error():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 8)) + np.linspace(0, 0.4, 8)
    res = sign_flip_test(x, alternative="two-sided", n_resamples=20000, seed=3)
    ref = st.permutation_test(
        (x,), np.mean, permutation_type="samples", n_resamples=20000, axis=0, rng=1
    ).pvalue
    se = np.sqrt(ref * (1 - ref) / 20000) * 2 + 1e-4  # two independent MC estimates
    assert np.all(np.abs(res.pvalue - ref) <= 4 * se)
    again = sign_flip_test(x, alternative="two-sided", n_resamples=20000, seed=3)
    np.testing.assert_array_equal(res.pvalue, again.pvalue)  # seeded


def test_sign_flip_pvalues_uniform_under_null():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 2000))
    p = sign_flip_test(x, n_resamples=999, seed=0).pvalue
    assert st.kstest(p, "uniform").pvalue > 0.001
    assert (p <= 0.05).mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / p.size)
