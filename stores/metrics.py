"""The metrics a patched run is scored by, as typed names with one canonical string each.

Each metric is computed at the answer position (the last token of the patched prompt) from
the final logits, in float32. Two families, which analysis normalises differently:

- *score* metrics (``logit_diff``, ``logprob``, ``prob``, ``ce``): a number per run;
  recovery is ``(patched - corrupted) / (clean - corrupted)``.
- *distance* metrics (``kl``, ``l2``, ``mse``, ``cosine``): a distance of the patched run's
  final logits to the clean run's; recovery is ``1 - d(patched) / d(corrupted)``, where
  ``cosine`` is stored as the cosine *distance* ``1 - cos``.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import ConfigError

__all__ = ["Metric"]


class Metric(StrEnum):
    LOGIT_DIFF = "logit_diff"  # logit[answer] - logit[wrong]
    LOGPROB = "logprob"  # log softmax[answer]
    PROB = "prob"  # softmax[answer]
    CE = "ce"  # cross-entropy of the answer token, -logprob; analysis forms ce differences
    KL = "kl"  # KL(clean || patched) over the full vocabulary
    L2 = "l2"  # ||logits_patched - logits_clean||_2
    MSE = "mse"  # mean((logits_patched - logits_clean)^2)
    COSINE = "cosine"  # 1 - cos(logits_patched, logits_clean)

    def __str__(self) -> str:
        return self.value

    @property
    def is_distance(self) -> bool:
        """True for metrics measured as a distance to the clean run (0 = clean)."""
        return self in (Metric.KL, Metric.L2, Metric.MSE, Metric.COSINE)

    @property
    def needs_wrong_token(self) -> bool:
        return self is Metric.LOGIT_DIFF

    @classmethod
    def parse(cls, text: str) -> Metric:
        try:
            return cls(str(text).strip())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"Unknown metric {text!r}. Expected one of: {valid}.") from None
