"""Length bucketing: prompts grouped by equal token length, so batches need no padding.

Batching equal-length prompts keeps batched activations equal to one-prompt-at-a-time ones to
float32 rounding, and absolute position embeddings never shift.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []


def _buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped by equal token length, in batches of at most ``batch_size``."""
    out = []
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        out.extend(rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    return out
