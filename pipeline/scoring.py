"""Score final-position logits with the patch stage's metrics, in float32, batched.

All metrics are computed from the logits at the answer position (the last token): the
patched run's ``logits`` (R, vocab) and the clean run's logits of the same prompt, with one
row per patched run. See :class:`patchsweep.stores.metrics.Metric` for definitions.

Cost matters here: scoring runs once per forward pass over ``R x vocab`` values, and on a
CPU device MLX's ``exp`` costs ~15 ns per element, as much as a quarter of a GPT-2-sized
forward. So :class:`Scorer` computes everything that depends only on the clean run once per
batch of prompts (its log-probabilities, probabilities, entropy and norm), and a forward pays
one ``logsumexp`` over its own logits plus elementwise passes and dot products:

- ``KL(clean || patched) = sum_v p_c (log p_c - log p)`` in that direct form, whose terms are
  small where the patched run is close to the clean one (the algebraically equal
  ``-H(clean) - E_clean[logits] + logsumexp`` cancels vocabulary-sized numbers in float32);
- ``l2``/``mse`` as the norm of the difference (no cancellation: patched ~ clean is common);
- ``cosine`` as ``|l/|l| - l_c/|l_c||^2 / 2`` (equal to ``1 - cos``, without its cancellation).
Everything stays on the device; the caller evaluates once per batch.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from patchsweep.stores.metrics import Metric

__all__ = ["Scorer", "score"]

_NEEDS_LSE = (Metric.LOGPROB, Metric.PROB, Metric.CE, Metric.KL)


class _Backend:
    """The few array operations scoring needs, for MLX (on the device) or NumPy (on the host).

    Sums over the vocabulary are where float32 loses accuracy: both backends sum pairwise-like
    (measured at 50,257 logits: logsumexp within 1e-6 of float64, against 2e-4 for MLX's own
    sequential CPU reduction).

    On a CPU device NumPy's vectorised ``exp`` is ~4x faster than MLX's, and the logits are in
    host memory anyway once a forward is evaluated; on a GPU the logits stay on the device.
    """

    def __init__(self, name: str):
        self.name = name
        self.xp = np if name == "numpy" else mx

    def asarray(self, x, dtype=None):
        if self.name == "numpy":
            return np.asarray(x, dtype=dtype)
        x = mx.array(x) if not isinstance(x, mx.array) else x
        return x.astype(dtype) if dtype is not None else x

    def sum(self, x):
        """Sum over the last axis with pairwise-like float32 accuracy.

        NumPy sums pairwise; MLX's CPU reduction accumulates sequentially (its logsumexp over
        50k logits is off by ~2e-4), so MLX sums blocks of 256 first, then the block sums.
        """
        if self.name == "numpy":
            return x.sum(axis=-1)
        R, V = x.shape
        main = V - V % 256
        total = mx.sum(x[:, :main].reshape(R, -1, 256).sum(axis=-1), axis=-1) if main else 0.0
        return total + mx.sum(x[:, main:], axis=-1) if main < V else total

    def logsumexp(self, x):
        top = self.xp.max(x, axis=-1, keepdims=True)
        return top[:, 0] + self.xp.log(self.sum(self.xp.exp(x - top)))

    def rowdot(self, a, b):
        """Row-wise dot product of (R, V) arrays: (R,)."""
        if self.name == "mlx":
            return (a[:, None, :] @ b[:, :, None])[:, 0, 0]  # one batched matmul
        return np.einsum("rv,rv->r", a, b)


class Scorer:
    """Metric values for patched runs of a batch of prompts.

    Parameters
    ----------
    answer, wrong : array-like, int, shape (B,)
        Token ids per prompt; ``wrong`` may be -1 (then ``logit_diff`` is NaN).
    clean_logits : array-like, shape (B, vocab)
        The clean run's answer-position logits per prompt.
    metrics : tuple of Metric
    backend : {"mlx", "numpy"}
        Where to compute: ``numpy`` for a CPU device, ``mlx`` for a GPU (see :class:`_Backend`).
        Both give the same values to float32 rounding (tested).
    """

    def __init__(
        self, answer, wrong, clean_logits, metrics: tuple[Metric, ...], backend: str = "mlx"
    ):
        if backend not in ("mlx", "numpy"):
            raise ValueError(f"Scorer backend must be 'mlx' or 'numpy', got {backend!r}.")
        self.metrics = tuple(metrics)
        self.be = be = _Backend(backend)
        xp = be.xp
        self.answer = be.asarray(np.asarray(answer), xp.int32)
        self.wrong = be.asarray(np.asarray(wrong), xp.int32)
        self.clean = be.asarray(clean_logits, xp.float32)  # (B, V)
        if Metric.KL in self.metrics:
            self.clean_logp = self.clean - be.logsumexp(self.clean)[:, None]  # (B, V)
            self.clean_p = xp.exp(self.clean_logp)
        if Metric.COSINE in self.metrics:
            norm = xp.sqrt(be.sum(xp.square(self.clean)))  # (B,)
            self.clean_unit = self.clean / xp.maximum(norm, 1e-30)[:, None]  # (B, V)

    def __call__(self, logits, rows):
        """Score ``logits`` (R, vocab); row ``r`` belongs to prompt ``rows[r]``.

        Returns (R, M) float32 in the backend's array type.
        """
        be, xp = self.be, self.be.xp
        logits = be.asarray(logits, xp.float32)
        rows = be.asarray(rows)
        answer, wrong = self.answer[rows], self.wrong[rows]
        answer_logit = xp.take_along_axis(logits, answer[:, None], axis=-1)[:, 0]
        if any(m in self.metrics for m in _NEEDS_LSE):
            lse = be.logsumexp(logits)  # (R,)
            answer_logp = answer_logit - lse
        sq = None
        out = []
        for metric in self.metrics:
            if metric is Metric.LOGIT_DIFF:
                wrong_logit = xp.take_along_axis(logits, xp.maximum(wrong, 0)[:, None], axis=-1)[
                    :, 0
                ]
                out.append(xp.where(wrong >= 0, answer_logit - wrong_logit, float("nan")))
            elif metric is Metric.LOGPROB:
                out.append(answer_logp)
            elif metric is Metric.PROB:
                out.append(xp.exp(answer_logp))
            elif metric is Metric.CE:
                out.append(-answer_logp)
            elif metric is Metric.KL:
                # sum p_c (logp_c - logp): elementwise differences are small where patched ~ clean
                out.append(
                    be.rowdot(self.clean_p[rows], self.clean_logp[rows] - (logits - lse[:, None]))
                )
            elif metric in (Metric.L2, Metric.MSE):
                if sq is None:
                    sq = be.sum(xp.square(logits - self.clean[rows]))
                out.append(xp.sqrt(sq) if metric is Metric.L2 else sq / logits.shape[-1])
            elif metric is Metric.COSINE:
                # 1 - cos = |a/|a| - b/|b||^2 / 2: a sum of small squares near the clean run
                unit = logits / xp.maximum(xp.sqrt(be.sum(xp.square(logits))), 1e-30)[:, None]
                out.append(0.5 * be.sum(xp.square(unit - self.clean_unit[rows])))
        return xp.stack(out, axis=-1).astype(xp.float32)


def score(logits: mx.array, answer, wrong, clean_logits, metrics: tuple[Metric, ...]) -> mx.array:
    """Score (R, vocab) logits whose row ``r`` belongs to prompt ``r``: (R, M) float32."""
    return Scorer(answer, wrong, clean_logits, metrics)(logits, mx.arange(logits.shape[0]))
