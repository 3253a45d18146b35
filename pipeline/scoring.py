"""Score final-position logits with the patch stage's metrics, in float32, batched.

All metrics are computed from the logits at the answer position (the last token): the
patched run's ``logits`` (R, vocab) and the clean run's ``clean_logits`` (R, vocab), with
one row per patched run. See :class:`patchsweep.stores.metrics.Metric` for definitions.
Everything stays on the device; the caller evaluates once per batch.
"""

from __future__ import annotations

import mlx.core as mx

from patchsweep.stores.metrics import Metric

__all__ = ["score"]


def score(
    logits: mx.array,
    answer: mx.array,
    wrong: mx.array,
    clean_logits: mx.array,
    metrics: tuple[Metric, ...],
) -> mx.array:
    """Metric values for each row.

    Parameters
    ----------
    logits, clean_logits : mx.array, shape (R, vocab)
    answer, wrong : mx.array, int, shape (R,)
        Token ids; ``wrong`` may be -1 (then ``logit_diff`` is NaN).
    metrics : tuple of Metric

    Returns
    -------
    mx.array, float32, shape (R, len(metrics))
    """
    logits = logits.astype(mx.float32)
    clean_logits = clean_logits.astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (R, V)
    answer_logit = mx.take_along_axis(logits, answer[:, None], axis=-1)[:, 0]
    answer_logp = mx.take_along_axis(logp, answer[:, None], axis=-1)[:, 0]
    out = []
    for metric in metrics:
        if metric is Metric.LOGIT_DIFF:
            wrong_logit = mx.take_along_axis(logits, mx.maximum(wrong, 0)[:, None], axis=-1)[:, 0]
            out.append(mx.where(wrong >= 0, answer_logit - wrong_logit, mx.array(float("nan"))))
        elif metric is Metric.LOGPROB:
            out.append(answer_logp)
        elif metric is Metric.PROB:
            out.append(mx.exp(answer_logp))
        elif metric is Metric.CE:
            out.append(-answer_logp)
        elif metric is Metric.KL:
            clean_logp = clean_logits - mx.logsumexp(clean_logits, axis=-1, keepdims=True)
            out.append(mx.sum(mx.exp(clean_logp) * (clean_logp - logp), axis=-1))
        elif metric is Metric.L2:
            out.append(mx.sqrt(mx.sum(mx.square(logits - clean_logits), axis=-1)))
        elif metric is Metric.MSE:
            out.append(mx.mean(mx.square(logits - clean_logits), axis=-1))
        elif metric is Metric.COSINE:
            dot = mx.sum(logits * clean_logits, axis=-1)
            norms = mx.sqrt(mx.sum(mx.square(logits), axis=-1)) * mx.sqrt(
                mx.sum(mx.square(clean_logits), axis=-1)
            )
            out.append(1.0 - dot / mx.maximum(norms, 1e-30))
    return mx.stack(out, axis=-1)
