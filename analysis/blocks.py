"""The per-block computation: every statistic of a block of components over all prompts.

A block is ``(n_prompts, n_components)`` float32 in the encoding of :mod:`.recovery` (NaN =
not applicable, +inf = excluded). This function is what dask maps over component blocks, on
threads or on a cluster; it is pure numpy and deterministic (random draws depend only on the
seed and sample sizes), so the result does not depend on where or in what order blocks run.
"""

from __future__ import annotations

import numpy as np

from .config import AnalysisConfig
from .recovery import decode
from .resampling import bootstrap_ci, sign_flip_test
from .stats import describe, ttest_from_summary, wilcoxon

__all__ = ["FIELDS", "block_statistics"]

#: The statistics computed per component, in the order of axis 1 of the block output.
FIELDS = (
    "n",
    "n_excluded",
    "n_not_applicable",
    "mean",
    "median",
    "std",
    "ci_low",
    "ci_high",
    "t_ci_low",
    "t_ci_high",
    "effect_size",
    "statistic",
    "p",
)


def block_statistics(
    block: np.ndarray, groups: np.ndarray, n_groups: int, config: AnalysisConfig
) -> np.ndarray:
    """Statistics of one component block, per group of prompts.

    Parameters
    ----------
    block : ndarray, shape (n_prompts, n_components)
        Encoded recovery (or paired difference) values.
    groups : ndarray, shape (n_prompts,)
        Group code 0 .. n_groups-1 of each prompt (all 0 without ``group_by``).
    n_groups : int
    config : AnalysisConfig

    Returns
    -------
    ndarray, shape (n_groups, len(FIELDS), n_components), float64
    """
    P, C = block.shape
    out = np.full((n_groups, len(FIELDS), C), np.nan)
    for g in range(n_groups):
        rows = block if n_groups == 1 else block[groups == g]
        values, n_excluded, n_na = decode(rows)
        s = describe(values, config.null_value, config.confidence)
        if config.test == "t":
            test = ttest_from_summary(s, config.null_value, config.alternative)
        elif config.test == "wilcoxon":
            test = wilcoxon(values, config.null_value, config.alternative)
        else:
            test = sign_flip_test(
                values, config.null_value, config.alternative, config.n_permutations, config.seed
            )
        # every counted value exactly at the null: no evidence against it (scipy gives NaN)
        at_null = (s.n >= 1) & np.all(np.isnan(values) | (values == config.null_value), axis=0)
        test = type(test)(
            np.where(at_null, 0.0, test.statistic), np.where(at_null, 1.0, test.pvalue)
        )
        if config.n_bootstrap:
            ci = bootstrap_ci(
                values, config.bootstrap, config.n_bootstrap, config.seed, config.confidence
            )
            ci_low, ci_high = ci.low, ci.high
        else:
            ci_low = ci_high = np.full(C, np.nan)
        out[g] = np.stack(
            [
                s.n,
                n_excluded,
                n_na,
                s.mean,
                s.median,
                s.std,
                ci_low,
                ci_high,
                s.t_low,
                s.t_high,
                s.effect_size,
                test.statistic,
                test.pvalue,
            ]
        )
    return out
