"""Scorer against a direct float64 NumPy computation of each metric's definition."""

import mlx.core as mx
import numpy as np
import pytest
from scipy.special import log_softmax

from patchsweep.pipeline.scoring import Scorer, score
from patchsweep.stores.metrics import Metric


def reference(logits, answer, wrong, clean):
    """Each metric straight from its definition, in float64."""
    logits, clean = logits.astype(np.float64), clean.astype(np.float64)
    logp, clean_logp = log_softmax(logits, axis=-1), log_softmax(clean, axis=-1)
    r = np.arange(len(answer))
    diff = logits - clean
    return {
        Metric.LOGIT_DIFF: np.where(
            wrong >= 0, logits[r, answer] - logits[r, np.maximum(wrong, 0)], np.nan
        ),
        Metric.LOGPROB: logp[r, answer],
        Metric.PROB: np.exp(logp[r, answer]),
        Metric.CE: -logp[r, answer],
        Metric.KL: (np.exp(clean_logp) * (clean_logp - logp)).sum(-1),
        Metric.L2: np.sqrt((diff**2).sum(-1)),
        Metric.MSE: (diff**2).mean(-1),
        Metric.COSINE: 1
        - (logits * clean).sum(-1)
        / (np.linalg.norm(logits, axis=-1) * np.linalg.norm(clean, axis=-1)),
    }


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_scorer_matches_definitions(scale, backend):
    rng = np.random.default_rng(0)
    B, R, V = 3, 7, 50257  # a GPT-2-sized vocabulary: float32 sums over it must stay accurate
    clean = (rng.normal(size=(B, V)) * scale).astype(np.float32)
    rows = rng.integers(0, B, R)
    logits = (
        clean[rows]
        + rng.normal(size=(R, V)) * scale * np.array([0, 1e-3, 0.1, 1, 1, 2, 5])[:, None]
    ).astype(np.float32)
    answer, wrong = rng.integers(0, V, B), np.array([3, -1, 9])
    got = np.array(Scorer(answer, wrong, clean, tuple(Metric), backend)(logits, rows))
    want = reference(logits, answer[rows], wrong[rows], clean[rows])
    for j, m in enumerate(Metric):
        # float32 inputs: relative 1e-5 of the metric's magnitude, or the KL identity's documented ~1e-6 x |logits|
        atol = 1e-5 * max(np.nanmax(np.abs(want[m])), 1e-3) + (
            2e-6 * scale * 10 if m is Metric.KL else 0
        )
        np.testing.assert_allclose(
            got[:, j], want[m], rtol=1e-5, atol=atol, equal_nan=True, err_msg=str(m)
        )


def test_scorer_distances_vanish_at_the_clean_run():
    rng = np.random.default_rng(1)
    clean = (rng.normal(size=(2, 3000)) * 5).astype(np.float32)
    got = np.array(
        score(
            mx.array(clean),
            np.array([1, 2]),
            np.array([3, 4]),
            clean,
            (Metric.KL, Metric.L2, Metric.MSE, Metric.COSINE),
        )
    )
    np.testing.assert_allclose(got, 0, atol=1e-4)
    assert (got[:, 1:3] == 0).all()  # differences are exactly zero, no cancellation


def test_scorer_backends_agree():
    rng = np.random.default_rng(2)
    clean = rng.normal(size=(4, 2000)).astype(np.float32)
    logits = (clean[[0, 1, 2, 3, 0]] + rng.normal(size=(5, 2000)) * 0.3).astype(np.float32)
    args = (np.array([1, 2, 3, 4]), np.array([5, -1, 7, 8]), clean, tuple(Metric))
    a = np.array(Scorer(*args, "mlx")(logits, np.array([0, 1, 2, 3, 0])))
    b = Scorer(*args, "numpy")(logits, np.array([0, 1, 2, 3, 0]))
    np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=3e-6, equal_nan=True
    )  # ~4 float32 ulps of a logsumexp of size 8


def test_scorer_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'mlx' or 'numpy'"):
        Scorer([0], [1], np.zeros((1, 3)), (Metric.KL,), "torch")
