"""The naive reference for activation patching: one full forward pass per patch.

This is what TransformerLens's ``get_act_patch_*`` functions and mlxterp do: for every
patched site, run the whole base prompt batch through every block, unembed every position,
and read the answer position. It shares nothing with the engine's shortcuts (start layer,
prefix KV cache, last-position unembedding), so the tests check the engine against it, and the
benchmark times it as the baseline.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .adapter import Forward, ModelAdapter
from .patch_engine import PatchBatch, PatchEntry, build_writes, noise_write
from .scoring import Scorer

__all__ = ["naive_patch"]


def naive_patch(
    adapter: ModelAdapter, batch: PatchBatch, items: list[tuple[PatchEntry, ...]], metrics: tuple
) -> np.ndarray:
    """Metric values (n_items, B, M) by one full forward pass (all prompts, all positions) per item."""
    B, _ = batch.base_tokens.shape
    tokens = mx.array(batch.base_tokens)
    # Same scoring backend as the engine on this device: the reference checks the forward
    # passes; scoring itself is checked against float64 definitions (tests/pipeline/test_scoring.py).
    backend = "numpy" if mx.default_device().type == mx.cpu else "mlx"
    scorer = Scorer(batch.answer, batch.wrong, batch.clean_logits, metrics, backend)
    out = np.full((len(items), B, len(metrics)), np.nan, dtype=np.float32)
    rows = np.arange(B)
    for i, item in enumerate(items):
        writes, valid = build_writes(batch, [item], rows, np.zeros(B, dtype=int), offset=0)
        logits = adapter.forward(
            tokens, Forward(writes=[*noise_write(batch), *writes])
        ).logits  # (B, T, V)
        values = scorer(
            logits[:, -1], mx.arange(B)
        )  # MLX scoring: independent of the engine's host path
        mx.eval(values)
        out[i] = np.where(valid[:, None], np.array(values), np.nan)
    return out
