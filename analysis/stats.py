"""Per-component statistics across prompts: descriptives, t-interval, t-test, Wilcoxon.

Every function takes a block ``x`` of shape ``(n_prompts, n_components)`` in which NaN marks a
missing value (a position the prompt does not have, or a prompt excluded from normalisation),
and returns one value per component (column). All work is vectorised over components: there
is no Python loop per component, only (for the exact Wilcoxon distribution) one per distinct
sample size in the block.

The alternative hypothesis follows scipy's names: ``"two-sided"``, ``"greater"`` (the mean or
median recovery exceeds ``null_value``) and ``"less"``.

References
----------
.. [1] Student (1908). The probable error of a mean. Biometrika 6(1).
.. [2] Wilcoxon, F. (1945). Individual comparisons by ranking methods. Biometrics Bulletin 1(6).
.. [3] Cohen, J. (1988). Statistical Power Analysis for the Behavioral Sciences, 2nd ed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import special

from patchsweep.stores.errors import ConfigError

__all__ = [
    "ALTERNATIVES",
    "Summary",
    "TestResult",
    "describe",
    "ttest",
    "ttest_from_summary",
    "wilcoxon",
]

ALTERNATIVES = ("two-sided", "greater", "less")

#: Largest sample size for which the Wilcoxon test uses its exact null distribution (as scipy).
WILCOXON_EXACT_MAX_N = 50


class Summary(NamedTuple):
    """Descriptive statistics per component; every field has shape ``(n_components,)``."""

    n: np.ndarray  # int64, finite values used
    mean: np.ndarray
    median: np.ndarray
    std: np.ndarray  # sample standard deviation (ddof=1)
    t_low: np.ndarray  # Student-t confidence interval for the mean
    t_high: np.ndarray
    effect_size: np.ndarray  # Cohen's d against the null value: (mean - null) / std


class TestResult(NamedTuple):
    """A test statistic and its p-value per component, shape ``(n_components,)`` each."""

    statistic: np.ndarray
    pvalue: np.ndarray


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ConfigError(
            f"Unknown alternative {alternative!r}. Expected one of: {', '.join(ALTERNATIVES)}."
        )
    return alternative


def describe(x: np.ndarray, null_value: float = 0.0, confidence: float = 0.95) -> Summary:
    """Count, mean, median, standard deviation, t-interval and effect size per column.

    Parameters
    ----------
    x : ndarray, shape (n_prompts, n_components)
        Per-prompt effects; NaN marks a missing value and is ignored.
    null_value : float
        The value Cohen's d is measured against.
    confidence : float
        Two-sided confidence level of the t-interval.

    Returns
    -------
    Summary
        Components with fewer than two values have NaN spread, interval and effect size.

    Notes
    -----
    The t-interval is ``mean ± t_{n-1, (1+confidence)/2} · s / sqrt(n)`` with the sample
    standard deviation ``s`` (ddof = 1); the effect size is Cohen's d for one sample,
    ``(mean - null_value) / s`` [3]_. Validated against ``scipy.stats.ttest_1samp(...)
    .confidence_interval()`` and ``numpy.nanmedian`` to 1e-12 in ``tests/analysis/test_stats.py``.
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    x0 = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x0.sum(axis=0) / n
        dev = np.where(valid, x - mean, 0.0)
        std = np.sqrt((dev * dev).sum(axis=0) / (n - 1))
        std = np.where(n >= 2, std, np.nan)
        half = special.stdtrit(np.maximum(n - 1, 1), 0.5 + confidence / 2) * std / np.sqrt(n)
        effect = (mean - null_value) / std
    median = _nanmedian(x, n)
    return Summary(n.astype(np.int64), mean, median, std, mean - half, mean + half, effect)


def _nanmedian(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median per column ignoring NaN, without numpy's per-column slow path."""
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    s = np.sort(np.where(np.isfinite(x), x, np.nan).T, axis=1)  # (C, P) contiguous rows, NaN last
    lo = np.clip((n - 1) // 2, 0, None)[:, None]
    hi = np.clip(n // 2, 0, None)[:, None]
    med = 0.5 * (np.take_along_axis(s, lo, 1)[:, 0] + np.take_along_axis(s, hi, 1)[:, 0])
    return np.where(n > 0, med, np.nan)


def ttest(x: np.ndarray, null_value: float = 0.0, alternative: str = "two-sided") -> TestResult:
    """One-sample Student t-test of ``mean(x) == null_value`` per column.

    Parameters
    ----------
    x : ndarray, shape (n_prompts, n_components)
        Per-prompt effects; NaN is ignored.
    null_value : float
        Mean under the null hypothesis (0, or a threshold the effect must exceed).
    alternative : {"two-sided", "greater", "less"}

    Returns
    -------
    TestResult
        ``statistic`` is t; NaN for fewer than two values. A zero-variance column gives
        ``t = ±inf`` (p = 0) unless its mean equals the null value (NaN).

    Notes
    -----
    ``t = (mean - null_value) / (s / sqrt(n))`` with ``n - 1`` degrees of freedom [1]_.
    Agrees with ``scipy.stats.ttest_1samp(..., nan_policy="omit")`` to 1e-12 (relative) on
    random data with missing values (``tests/analysis/test_stats.py``).
    """
    check_alternative(alternative)
    return ttest_from_summary(describe(x, null_value), null_value, alternative)


def ttest_from_summary(
    s: Summary, null_value: float = 0.0, alternative: str = "two-sided"
) -> TestResult:
    """:func:`ttest` from an already computed :class:`Summary` (no second pass over the data)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (s.mean - null_value) / (s.std / np.sqrt(s.n))
    df = np.maximum(s.n - 1, 1).astype(np.float64)
    p = _t_pvalue(t, df, alternative)
    bad = s.n < 2
    return TestResult(np.where(bad, np.nan, t), np.where(bad, np.nan, p))


def _t_pvalue(t: np.ndarray, df: np.ndarray, alternative: str) -> np.ndarray:
    if alternative == "greater":
        return special.stdtr(df, -t)
    if alternative == "less":
        return special.stdtr(df, t)
    return np.minimum(2.0 * special.stdtr(df, -np.abs(t)), 1.0)


def wilcoxon(x: np.ndarray, null_value: float = 0.0, alternative: str = "two-sided") -> TestResult:
    """Wilcoxon signed-rank test of ``median(x - null_value) == 0`` per column.

    Parameters
    ----------
    x : ndarray, shape (n_prompts, n_components)
        Per-prompt effects; NaN is ignored.
    null_value : float
        Location under the null hypothesis.
    alternative : {"two-sided", "greater", "less"}

    Returns
    -------
    TestResult
        ``statistic`` is ``min(R+, R-)`` for two-sided tests and ``R+`` otherwise (as scipy).

    Notes
    -----
    Differences equal to zero are dropped (``zero_method="wilcox"``); ties get average ranks.
    A column with at most 50 non-zero differences and neither ties nor zeros uses the exact
    null distribution of ``R+`` (a dynamic programme over subset sums, computed once per
    sample size); any other column uses the normal approximation with the tie-corrected
    variance ``n(n+1)(2n+1)/24 - sum(t^3 - t)/48`` and no continuity correction [2]_.
    This is scipy's ``method="auto"`` except that scipy switches to a permutation test for
    n <= 13 with ties or zeros, and decides "ties" once for the whole array rather than per
    column. Agrees with ``scipy.stats.wilcoxon`` to 1e-12 in both regimes
    (``tests/analysis/test_stats.py``).
    """
    check_alternative(alternative)
    d = np.asarray(x, dtype=np.float64) - null_value
    d = np.where(np.isfinite(d) & (d != 0), d, np.nan)  # zero_method="wilcox"
    P, C = d.shape
    order = np.argsort(np.abs(d), axis=0)  # NaN last
    ds = np.take_along_axis(d, order, axis=0)  # (P, C), sorted by |d|, NaN last
    a = np.abs(ds)
    n = np.isfinite(ds).sum(axis=0)
    # Tie groups inside each column: flat ids over the (C, P) layout of the sorted values.
    at = a.T  # (C, P)
    new = np.ones_like(at, dtype=bool)
    new[:, 1:] = at[:, 1:] != at[:, :-1]  # NaN != NaN: each missing value is its own group
    gid = np.cumsum(new.ravel()) - 1  # (C*P,)
    pos = np.tile(np.arange(1, P + 1, dtype=np.float64), C)
    size = np.bincount(gid)
    rank = (np.bincount(gid, weights=pos) / size)[gid].reshape(C, P).T  # average ranks
    valid = np.isfinite(ds)
    r_plus = np.where(valid & (ds > 0), rank, 0.0).sum(axis=0)
    r_minus = np.where(valid & (ds < 0), rank, 0.0).sum(axis=0)
    first = np.flatnonzero(new.ravel())
    gvalid = valid.T.ravel()[first]
    gcol = first // P
    tsize = size.astype(np.float64)
    tie_term = np.bincount(gcol[gvalid], weights=(tsize**3 - tsize)[gvalid], minlength=C)
    has_ties = np.bincount(gcol[gvalid], weights=(size[gvalid] > 1), minlength=C) > 0

    nf = n.astype(np.float64)
    mn = nf * (nf + 1) / 4
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt((nf * (nf + 1) * (2 * nf + 1) - tie_term / 2) / 24)
        z = (r_plus - mn) / se
    p = _normal_pvalue(z, alternative)
    n_zero = (np.asarray(x, dtype=np.float64) - null_value == 0).sum(axis=0)
    exact = (n <= WILCOXON_EXACT_MAX_N) & ~has_ties & (n_zero == 0) & (n > 0)
    for size_n in np.unique(n[exact]):
        cols = exact & (n == size_n)
        p[cols] = _wilcoxon_exact_p(r_plus[cols], int(size_n), alternative)
    stat = np.minimum(r_plus, r_minus) if alternative == "two-sided" else r_plus
    empty = n == 0
    return TestResult(np.where(empty, np.nan, stat), np.where(empty, np.nan, p))


def _normal_pvalue(z: np.ndarray, alternative: str) -> np.ndarray:
    if alternative == "greater":
        return special.ndtr(-z)
    if alternative == "less":
        return special.ndtr(z)
    return np.minimum(2.0 * special.ndtr(-np.abs(z)), 1.0)


@lru_cache(maxsize=64)
def _wilcoxon_pmf(n: int) -> np.ndarray:
    """P(R+ = k), k = 0 .. n(n+1)/2, under the null: subset-sum counts of {1..n} / 2^n."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts / 2.0**n


def _wilcoxon_exact_p(r_plus: np.ndarray, n: int, alternative: str) -> np.ndarray:
    pmf = _wilcoxon_pmf(n)
    cdf = np.cumsum(pmf)
    sf = np.cumsum(pmf[::-1])[::-1]  # P(R+ >= k)
    k_lo = np.ceil(r_plus).astype(np.int64)
    k_hi = np.floor(r_plus).astype(np.int64)
    if alternative == "less":
        return cdf[k_lo]
    if alternative == "greater":
        return sf[k_hi]
    return np.clip(2 * np.minimum(sf[k_hi], cdf[k_lo]), 0, 1)
