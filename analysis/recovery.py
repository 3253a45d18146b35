"""Normalised recovery per prompt and component, and the rule for prompts that cannot be normalised.

For *score* metrics (logit difference, log-probability, probability, cross-entropy) recovery
is ``(patched - corrupted) / (clean - corrupted)``: 0 is the corrupted run's behaviour, 1 the
clean run's. For *distance* metrics (KL, L2, MSE, cosine distance to the clean logits)
recovery is ``1 - d(patched) / d(corrupted)``: 1 when the patched run reaches the clean
logits. For the ``noise`` direction the same numbers read as "fraction of the clean behaviour
kept" (DEVELOPERS.md, results-store contract).

The small-gap rule
------------------
The denominator (``gap``: ``clean - corrupted``, or ``d(corrupted)``) is a property of the
prompt. A prompt whose ``|gap|`` is below the threshold -- ``min_gap`` when given, else
``rel_gap * median |gap|`` over the prompts -- or is zero or non-finite is *excluded*: its
recovery is not computed, and each component reports how many prompts were excluded
(``n_excluded``). Separately, a stored metric that is NaN (a position the prompt does not
have) makes that prompt *not applicable* to that component (``n_not_applicable``). Neither
is ever silently averaged as NaN.

The numerical-zero rule
-----------------------
A recovery within :data:`NUMERICAL_ZERO` (1e-4, i.e. 0.01% of the prompt's gap) of 0 is set
to exactly 0. Patches that cannot change the answer (a position before the two runs differ,
or a site whose output nothing downstream reads) reproduce the base run only up to float32
rounding, and that rounding can share one sign across prompts (the base run is computed in
another batch than the patched one): left alone, a test across hundreds of prompts calls it a
"significant" effect of 1e-7. A component whose every recovery is then exactly the null value
gets p = 1 (:mod:`patchsweep.analysis.blocks`).

Internally the per-prompt block carries both facts in one float32 array: NaN = not
applicable, ``+inf`` = excluded (:data:`EXCLUDED`); every other value is a recovery.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from patchsweep.stores.metrics import Metric

__all__ = ["EXCLUDED", "NUMERICAL_ZERO", "GapRule", "gap_rule", "recovery", "encode", "decode"]

#: Sentinel of an excluded (un-normalisable) prompt inside the recovery block.
EXCLUDED = np.inf

#: Recoveries this close to 0 are float32 rounding, set to exactly 0 (module docstring).
NUMERICAL_ZERO = 1e-4


class GapRule(NamedTuple):
    """Per-prompt normalisation denominators and which prompts are excluded."""

    gap: np.ndarray  # (prompt,) clean - corrupted, or d(corrupted)
    threshold: float
    excluded: np.ndarray  # (prompt,) bool


def gap_rule(
    clean: np.ndarray,
    corrupted: np.ndarray,
    metric: str,
    min_gap: float | None = None,
    rel_gap: float = 1e-6,
) -> GapRule:
    """The denominators and the exclusion of prompts whose gap is too small (module docstring).

    Parameters
    ----------
    clean, corrupted : ndarray, shape (n_prompts,)
        The unpatched runs' metric values (for distance metrics ``clean`` is 0).
    metric : str
        A :class:`~patchsweep.stores.metrics.Metric` name.
    min_gap : float or None
        Absolute threshold; ``None`` uses ``rel_gap * median |gap|``.
    rel_gap : float
    """
    m = Metric.parse(metric)
    clean = np.asarray(clean, dtype=np.float64)
    corrupted = np.asarray(corrupted, dtype=np.float64)
    gap = corrupted.copy() if m.is_distance else clean - corrupted
    size = np.abs(gap)
    finite = np.isfinite(size)
    if min_gap is not None:
        threshold = float(min_gap)
    else:
        threshold = float(rel_gap * np.median(size[finite])) if finite.any() else 0.0
    excluded = ~finite | (size == 0) | (size < threshold)
    return GapRule(gap, threshold, excluded)


def recovery(patched, clean, corrupted, metric: str):
    """Recovery from patched, clean and corrupted metric values (numpy or dask, broadcasting).

    ``patched`` is (n_prompts, ...) and the baselines broadcast against it, e.g. shape
    (n_prompts, 1). No exclusion is applied here; see :func:`encode`. Values within
    :data:`NUMERICAL_ZERO` of 0 become exactly 0.
    """
    if Metric.parse(metric).is_distance:
        rec = 1.0 - patched / corrupted
    else:
        rec = (patched - corrupted) / (clean - corrupted)
    return np.where(abs(rec) <= NUMERICAL_ZERO, 0.0, rec)


def encode(patched, rec, excluded):
    """The float32 block the statistics read: NaN = not applicable, +inf = excluded, else recovery.

    ``patched`` and ``rec`` are (n_prompts, n_components); ``excluded`` (n_prompts, 1) bool.
    Works for numpy and dask arrays alike (``where`` dispatches).
    """
    applicable = np.isfinite(patched)
    out = np.where(excluded, EXCLUDED, rec)
    return np.where(applicable, out, np.nan).astype(np.float32)


def decode(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split an encoded block into ``(values, n_excluded, n_not_applicable)``.

    ``values`` is float64 with NaN wherever the prompt does not count (excluded or not
    applicable); the counts are per column.
    """
    excluded = np.isposinf(block)
    missing = np.isnan(block)
    values = np.where(excluded | missing, np.nan, block.astype(np.float64))
    return values, excluded.sum(axis=0), missing.sum(axis=0)
