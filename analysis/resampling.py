"""Resampling statistics per component: bootstrap intervals and the sign-flip permutation test.

Both work on a block ``x`` of shape ``(n_prompts, n_components)`` with NaN for missing values,
vectorised over components. Random draws depend only on ``(seed, n)`` and a batch counter,
never on how components are split into blocks, so a block-wise run on a cluster reproduces the
in-memory result exactly.

References
----------
.. [1] Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap, ch. 13-14
       (percentile and BCa intervals, Eq. 14.10 and 14.15).
.. [2] Good, P. (2005). Permutation, Parametric and Bootstrap Tests of Hypotheses, 3rd ed.
       (one-sample sign-flip test).
.. [3] Phipson, B. & Smyth, G. (2010). Permutation p-values should never be zero. Stat. Appl.
       Genet. Mol. Biol. 9(1).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import special

from patchsweep.stores.errors import ConfigError

from .stats import TestResult, check_alternative

__all__ = ["BOOTSTRAP_METHODS", "Interval", "bootstrap_ci", "sign_flip_test"]

BOOTSTRAP_METHODS = ("percentile", "bca")
_BATCH = 256  # resamples per matrix product


class Interval(NamedTuple):
    """A confidence interval per component, shape ``(n_components,)`` each."""

    low: np.ndarray
    high: np.ndarray


def compact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each column's finite values to the top (order kept), zero the rest.

    Returns ``(xc, n)``: ``xc`` (n_prompts, n_components) float64 and ``n`` (n_components,).
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    order = np.argsort(~valid, axis=0, kind="stable")
    xc = np.take_along_axis(np.where(valid, x, 0.0), order, axis=0)
    return xc, valid.sum(axis=0)


def bootstrap_ci(
    x: np.ndarray,
    method: str = "bca",
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Bootstrap confidence interval for the mean of each column.

    Parameters
    ----------
    x : ndarray, shape (n_prompts, n_components)
        Per-prompt effects; NaN is ignored (each column resamples its own finite values).
    method : {"percentile", "bca"}
    n_resamples : int
        Bootstrap resamples B.
    seed : int
        Seed of the resampling; the draws for a column depend only on ``(seed, n)``.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    Interval
        NaN for columns with fewer than two values.

    Notes
    -----
    Resampling is done as weights: for all columns with the same count ``n`` one ``(B, n)``
    matrix of resample counts (n uniform draws with replacement per row) is drawn and the bootstrap means are one matrix
    product, in batches of 256 resamples. The percentile interval takes the ``(1 ± c)/2``
    quantiles of the bootstrap means (linear interpolation, numpy's default); BCa [1]_ shifts
    them by the bias correction ``z0 = Phi^-1(#{theta* < theta} + #{theta* <= theta}) / 2B)``
    and the acceleration, which for the mean has the closed jackknife form
    ``a = sum(d^3) / (6 sum(d^2)^1.5)`` with ``d = x - mean``.
    Given the same bootstrap distribution, the interval agrees with ``scipy.stats.bootstrap``
    (``bootstrap_result=``, ``n_resamples=0``) to 1e-12 for both methods
    (``tests/analysis/test_resampling.py``); coverage is checked by simulation there too.
    """
    if method not in BOOTSTRAP_METHODS:
        raise ConfigError(
            f"Unknown bootstrap method {method!r}. Expected one of: {', '.join(BOOTSTRAP_METHODS)}."
        )
    xc, n = compact(x)
    C = xc.shape[1]
    low = np.full(C, np.nan)
    high = np.full(C, np.nan)
    alpha = (1 - confidence) / 2
    for size in np.unique(n[n >= 2]):
        cols = np.flatnonzero(n == size)
        xs = xc[:size, cols]  # (n, c)
        theta_b = _bootstrap_means(xs, n_resamples, seed)  # (B, c)
        theta = xs.mean(axis=0)
        if method == "percentile":
            q = np.broadcast_to(np.array([[alpha], [1 - alpha]]), (2, cols.size))
        else:
            q = _bca_levels(xs, theta, theta_b, alpha)
        lo_hi = _quantile_columns(theta_b, q)
        low[cols], high[cols] = lo_hi[0], lo_hi[1]
    return Interval(low, high)


def bootstrap_distribution(xs: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap means ``(B, c)`` of complete columns ``xs`` (n, c); the draw depends on (seed, n)."""
    return _bootstrap_means(np.asarray(xs, dtype=np.float64), n_resamples, seed)


@lru_cache(maxsize=8)
def _resample_counts(seed: int, size: int, k: int, b: int) -> np.ndarray:
    """Batch ``k`` of resample counts ``(b, size)`` uint16: row i counts ``size`` uniform draws.

    Cached (at most 8 batches, ``16 * b * size`` bytes) because every component block with
    the same sample size reuses the same draws.
    """
    rng = np.random.default_rng([seed, size, k])
    idx = rng.integers(0, size, size=(b, size)) + size * np.arange(b)[:, None]  # (b, n) draws
    counts = np.bincount(idx.ravel(), minlength=b * size).reshape(b, size).astype(np.uint16)
    counts.flags.writeable = False
    return counts


def _bootstrap_means(xs: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    size = xs.shape[0]
    out = np.empty((n_resamples, xs.shape[1]))
    for k, start in enumerate(range(0, n_resamples, _BATCH)):
        b = min(_BATCH, n_resamples - start)
        w = _resample_counts(seed, size, k, b).astype(np.float64)  # (b, n)
        out[start : start + b] = (w @ xs) / size
    return out


def _bca_levels(xs: np.ndarray, theta: np.ndarray, theta_b: np.ndarray, alpha: float) -> np.ndarray:
    """The BCa quantile levels ``(2, c)`` of Efron & Tibshirani Eq. 14.10."""
    B = theta_b.shape[0]
    below = (theta_b < theta).sum(axis=0) + (theta_b <= theta).sum(axis=0)
    z0 = special.ndtri(below / (2.0 * B))
    d = xs - theta
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (d**3).sum(axis=0) / (6.0 * ((d**2).sum(axis=0)) ** 1.5)
    z = special.ndtri(np.array([alpha, 1 - alpha]))[:, None]  # (2, 1)
    num = z0 + z
    with np.errstate(invalid="ignore", divide="ignore"):
        return special.ndtr(z0 + num / (1 - a * num))  # (2, c)


def _quantile_columns(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-column quantiles with per-column levels: values (B, c), q (k, c) -> (k, c), linear."""
    s = np.sort(values, axis=0)
    B = s.shape[0]
    h = (B - 1) * np.where(np.isfinite(q), q, 0.0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, B - 1)
    frac = h - lo
    vlo = np.take_along_axis(s, lo, axis=0)
    vhi = np.take_along_axis(s, hi, axis=0)
    out = vlo + frac * (vhi - vlo)
    return np.where(np.isfinite(q), out, np.nan)


def sign_flip_test(
    x: np.ndarray,
    null_value: float = 0.0,
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
) -> TestResult:
    """One-sample sign-flip permutation test of the mean of ``x - null_value`` per column.

    Parameters
    ----------
    x : ndarray, shape (n_prompts, n_components)
        Per-prompt effects; NaN is ignored.
    null_value : float
        Centre of symmetry under the null hypothesis.
    alternative : {"two-sided", "greater", "less"}
    n_resamples : int
        Monte Carlo sign patterns; a column with ``2**n <= n_resamples`` is tested exactly by
        enumerating all ``2**n`` patterns (scipy's rule).
    seed : int
        Seed of the Monte Carlo sign matrix (recorded in the analysis config).

    Returns
    -------
    TestResult
        ``statistic`` is the mean of ``x - null_value``.

    Notes
    -----
    Under H0 the differences are symmetric about 0, so each sign pattern is equally likely
    [2]_. The Monte Carlo sign matrix is shared by all columns (and regenerated identically in
    every block, in batches of 256 rows): a column with ``n`` values uses its first ``n``
    entries per row, so the null distribution is one matrix product per batch. Comparisons use
    scipy's relative tolerance ``100 eps |observed|``; p-values are ``count / 2^n`` when exact
    and ``(count + 1) / (R + 1)`` otherwise [3]_; two-sided p is twice the smaller one-sided p,
    clipped to 1. The exact p-values equal ``scipy.stats.permutation_test(...,
    permutation_type="samples")`` to 1e-12; Monte Carlo p-values agree with it within
    Monte Carlo error (``tests/analysis/test_resampling.py``).
    """
    check_alternative(alternative)
    xc, n = compact(np.asarray(x, dtype=np.float64) - null_value)
    P, C = xc.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = xc.sum(axis=0) / n
    gamma = np.abs(np.finfo(np.float64).eps * 100 * obs)
    le = np.zeros(C)
    ge = np.zeros(C)
    total = np.zeros(C)
    exact = (n > 0) & (2.0 ** np.minimum(n, 60) <= n_resamples)
    for size in np.unique(n[exact]):
        cols = np.flatnonzero(exact & (n == size))
        bits = (np.arange(2**size)[:, None] >> np.arange(size)) & 1
        signs = 1.0 - 2.0 * bits  # (2^n, n), all patterns
        null = signs @ xc[:size, cols] / size  # (2^n, c)
        le[cols] = (null <= obs[cols] + gamma[cols]).sum(axis=0)
        ge[cols] = (null >= obs[cols] - gamma[cols]).sum(axis=0)
        total[cols] = 2.0**size
    mc = np.flatnonzero(~exact & (n > 0))
    if mc.size:
        xm = xc[:, mc]
        nm = n[mc]
        for k, start in enumerate(range(0, n_resamples, _BATCH)):
            b = min(_BATCH, n_resamples - start)
            rng = np.random.default_rng([seed, P, k])
            signs = 1.0 - 2.0 * rng.integers(0, 2, size=(b, P), dtype=np.int8)  # (b, P)
            null = signs @ xm / nm  # (b, c); rows past a column's n hold zeros
            le[mc] += (null <= obs[mc] + gamma[mc]).sum(axis=0)
            ge[mc] += (null >= obs[mc] - gamma[mc]).sum(axis=0)
        le[mc] += 1
        ge[mc] += 1
        total[mc] = n_resamples + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        p_less, p_greater = le / total, ge / total
    if alternative == "less":
        p = p_less
    elif alternative == "greater":
        p = p_greater
    else:
        p = 2 * np.minimum(p_less, p_greater)
    p = np.clip(p, 0.0, 1.0)
    empty = n == 0
    return TestResult(np.where(empty, np.nan, obs), np.where(empty, np.nan, p))
