"""Multiple-testing correction: adjusted p-values and rejections within families of tests.

Four procedures, each one small function of the sorted p-values (O(m log m), vectorised):

- ``bh``: Benjamini–Hochberg step-up, controls the FDR under independence or positive
  regression dependence [1]_.
- ``by``: Benjamini–Yekutieli, BH with ``m`` replaced by ``m · sum_{i<=m} 1/i``; controls the
  FDR under arbitrary dependence [2]_.
- ``holm``: Holm step-down, controls the FWER under arbitrary dependence [3]_.
- ``bonferroni``: ``min(1, m p)``, controls the FWER.

A *family* is the set of tests corrected together: the whole study, or each group of a
partition (per site kind, direction, metric, ...). Missing p-values (NaN: a component with
too few prompts) are not tests: they are left out of ``m`` and get NaN adjusted p-values.

References
----------
.. [1] Benjamini, Y. & Hochberg, Y. (1995). Controlling the false discovery rate. JRSS-B 57(1).
.. [2] Benjamini, Y. & Yekutieli, D. (2001). The control of the false discovery rate in
       multiple testing under dependency. Ann. Statist. 29(4).
.. [3] Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scand. J.
       Statist. 6(2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from patchsweep.stores.errors import ConfigError

__all__ = ["CORRECTIONS", "Correction", "adjust", "correct"]


class Correction(NamedTuple):
    """Adjusted p-values (q-values for the FDR methods) and the rejections at ``alpha``."""

    adjusted: np.ndarray  # float64, NaN where the input p-value was NaN
    significant: np.ndarray  # bool, adjusted <= alpha


def _bonferroni(p: np.ndarray) -> np.ndarray:
    return p * p.size


def _holm(p: np.ndarray) -> np.ndarray:
    m = p.size
    return np.maximum.accumulate(p * np.arange(m, 0, -1))


def _bh(p: np.ndarray) -> np.ndarray:
    m = p.size
    raw = p / (np.arange(1, m + 1) / m)
    return np.minimum.accumulate(raw[::-1])[::-1]


def _by(p: np.ndarray) -> np.ndarray:
    m = p.size
    cm = np.sum(1.0 / np.arange(1, m + 1))
    raw = p / (np.arange(1, m + 1) / (m * cm))
    return np.minimum.accumulate(raw[::-1])[::-1]


_SORTED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bh": _bh,
    "by": _by,
    "holm": _holm,
    "bonferroni": _bonferroni,
}
CORRECTIONS = tuple(_SORTED)


def adjust(pvalues: np.ndarray, method: str = "bh") -> np.ndarray:
    """Adjusted p-values for one family of tests.

    Parameters
    ----------
    pvalues : ndarray, shape (m,)
        Raw p-values in [0, 1]; NaN entries are ignored (not counted in ``m``).
    method : {"bh", "by", "holm", "bonferroni"}

    Returns
    -------
    ndarray, shape (m,)
        Adjusted p-values, clipped to 1, NaN where the input was NaN.

    Notes
    -----
    One stable sort, one cumulative min/max, one scatter back. Agrees with
    ``statsmodels.stats.multitest.multipletests`` (``fdr_bh``, ``fdr_by``, ``holm``,
    ``bonferroni``) to 1e-12 on random p-values including ties and exact 0 and 1
    (``tests/analysis/test_multitest.py``).
    """
    if method not in _SORTED:
        raise ConfigError(
            f"Unknown correction {method!r}. Expected one of: {', '.join(CORRECTIONS)}."
        )
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ConfigError(f"Expected a 1-D array of p-values, got shape {p.shape}.")
    ok = np.isfinite(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        bad = p[ok][(p[ok] < 0) | (p[ok] > 1)][0]
        raise ConfigError(f"p-values must lie in [0, 1], got {float(bad)!r}.")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    out[order] = np.minimum(_SORTED[method](p[order]), 1.0)
    return out


def correct(
    pvalues: np.ndarray,
    method: str = "bh",
    alpha: float = 0.05,
    family: np.ndarray | None = None,
) -> Correction:
    """Correct p-values within each family and flag the rejections at ``alpha``.

    Parameters
    ----------
    pvalues : ndarray, shape (m,)
    method : {"bh", "by", "holm", "bonferroni"}
    alpha : float
        Target FDR (``bh``, ``by``) or FWER (``holm``, ``bonferroni``).
    family : ndarray, shape (m,), optional
        A label per test (any hashable dtype); tests with equal labels are corrected together.
        ``None`` corrects all tests as one family.

    Returns
    -------
    Correction

    Notes
    -----
    ``significant`` is ``adjusted <= alpha``, which for these step-up/step-down procedures is
    the same rejection set as statsmodels' ``reject`` (checked in the tests).
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha!r}.")
    p = np.asarray(pvalues, dtype=np.float64)
    if family is None:
        adjusted = adjust(p, method)
    else:
        labels = np.asarray(family)
        if labels.shape != p.shape:
            raise ConfigError(
                f"family labels have shape {labels.shape}, expected {p.shape} (one per p-value)."
            )
        _, codes = np.unique(labels, return_inverse=True)
        adjusted = np.full(p.shape, np.nan)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for members in np.split(order, bounds):  # one pass per family, not per test
            adjusted[members] = adjust(p[members], method)
    return Correction(adjusted, np.nan_to_num(adjusted, nan=np.inf) <= alpha)
