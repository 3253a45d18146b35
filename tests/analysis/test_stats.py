"""Tests for analysis/stats.py. Expected values come from scipy.stats (``ttest_1samp``,
``wilcoxon``) and numpy (``nanmedian``), computed column by column; calibration from
simulation under a known null."""

import numpy as np
import pytest
from scipy import stats as st

from patchsweep.analysis.stats import describe, ttest, wilcoxon
from patchsweep.stores.errors import ConfigError


def _block(rng, n=40, c=30, missing=0.2, shift=0.3):
    x = rng.normal(size=(n, c)) + shift * rng.normal(size=c)
    x[rng.uniform(size=x.shape) < missing] = np.nan
    return x


def test_describe_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x = _block(rng)
    s = describe(x, null_value=0.1)
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])]
        assert s.n[j] == col.size
        np.testing.assert_allclose(s.mean[j], col.mean(), rtol=1e-12)
        np.testing.assert_allclose(s.median[j], np.median(col), rtol=1e-12)
        np.testing.assert_allclose(s.std[j], col.std(ddof=1), rtol=1e-12)
        ci = st.ttest_1samp(col, 0.1).confidence_interval(0.95)
        np.testing.assert_allclose([s.t_low[j], s.t_high[j]], [ci.low, ci.high], rtol=1e-12)
        np.testing.assert_allclose(
            s.effect_size[j], (col.mean() - 0.1) / col.std(ddof=1), rtol=1e-12
        )


def test_describe_marks_too_small_columns_nan():
    x = np.array([[1.0, np.nan], [np.nan, np.nan]])
    s = describe(x)
    assert list(s.n) == [1, 0]
    assert np.isnan(s.std).all() and np.isnan(s.t_low).all()
    assert s.median[0] == 1.0 and np.isnan(s.median[1])


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_ttest_matches_scipy(alternative):
    rng = np.random.default_rng(1)
    x = _block(rng)
    res = ttest(x, null_value=0.2, alternative=alternative)
    ref = st.ttest_1samp(x, 0.2, axis=0, nan_policy="omit", alternative=alternative)
    np.testing.assert_allclose(res.statistic, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(res.pvalue, ref.pvalue, rtol=1e-10, atol=1e-300)


def test_ttest_rejects_unknown_alternative():
    with pytest.raises(ConfigError, match="Unknown alternative 'bigger'"):
        ttest(np.zeros((3, 1)), alternative="bigger")


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("n", [8, 25, 50])
def test_wilcoxon_exact_matches_scipy(alternative, n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 20)) + 0.4 * rng.normal(size=20)
    res = wilcoxon(x, 0.1, alternative)
    for j in range(x.shape[1]):
        ref = st.wilcoxon(x[:, j] - 0.1, alternative=alternative, method="exact")
        np.testing.assert_allclose(res.statistic[j], ref.statistic, rtol=1e-12)
        np.testing.assert_allclose(res.pvalue[j], ref.pvalue, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_asymptotic_with_ties_zeros_and_missing_matches_scipy(alternative):
    rng = np.random.default_rng(7)
    x = np.round(rng.normal(size=(80, 25)) + 0.2, 1)  # many ties and zeros
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    res = wilcoxon(x, 0.0, alternative)
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])]
        ref = st.wilcoxon(col, alternative=alternative, method="asymptotic", correction=False)
        np.testing.assert_allclose(res.statistic[j], ref.statistic, rtol=1e-12)
        np.testing.assert_allclose(res.pvalue[j], ref.pvalue, rtol=1e-10, atol=1e-15)


def test_wilcoxon_large_n_matches_scipy_auto():
    rng = np.random.default_rng(9)
    x = rng.standard_t(3, size=(300, 10)) + 0.15
    res = wilcoxon(x)
    ref = st.wilcoxon(x, axis=0)  # n > 50: scipy's auto is the normal approximation
    np.testing.assert_allclose(res.pvalue, ref.pvalue, rtol=1e-10)


@pytest.mark.parametrize("test", [ttest, wilcoxon])
def test_pvalues_uniform_under_null(test):
    # 4000 null columns of n = 30 symmetric draws: p-values must pass a KS test for U(0, 1)
    # and the rejection rate at 0.05 must lie within 3 binomial standard errors.
    rng = np.random.default_rng(21)
    x = rng.normal(size=(30, 4000))
    p = test(x).pvalue
    assert st.kstest(p, "uniform").pvalue > 0.001
    assert abs((p <= 0.05).mean() - 0.05) <= 3 * np.sqrt(0.05 * 0.95 / p.size)
