"""Noise corruption in the capture stage: resolving it for a dataset, and the write that adds it.

A :class:`~.corruption.NoiseCorruption` is resolved once per dataset (:func:`_resolve_noise`):
the tokens of its span in every clean prompt, one seed per prompt, and its std -- given, or
measured as ROME does over clean ``resid_pre.0`` at every span token. The corrupted run then
adds the noise to ``resid_pre`` of layer 0 (:func:`_noise_write`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from patchsweep.stores.errors import ConfigError
from patchsweep.stores.sites import SiteKind

from .adapter import Forward, ModelAdapter, SiteWrite
from .batching import _buckets
from .corruption import NoiseCorruption, measured_std
from .datasets import TokenizedDataset

__all__: list[str] = []


@dataclass(frozen=True)
class _Noise:
    """A noise corruption resolved for one dataset: its std, per-prompt seeds and span tokens."""

    corruption: NoiseCorruption
    std: float  # the std that ``scale`` multiplies: given, or measured
    ids: tuple[str, ...]
    seeds: np.ndarray  # (prompt,) uint64
    positions: tuple[np.ndarray, ...]  # per prompt: int32 token indices of the span
    d_model: int

    def to_dict(self) -> dict[str, Any]:
        """The corruption as recorded in the store: its spec with the resolved std."""
        return {
            **self.corruption.to_dict(),
            "std": self.std,
            "std_measured": self.corruption.std is None,
        }


def _resolve_noise(
    adapter: ModelAdapter, td: TokenizedDataset, corruption: NoiseCorruption, batch_size: int
) -> _Noise:
    """Seeds and span tokens per prompt; the std measured on clean ``resid_pre.0`` when not given."""
    if not isinstance(corruption, NoiseCorruption):
        raise ConfigError(
            f"corruption must be a NoiseCorruption or None, got {type(corruption).__name__} {corruption!r}."
        )
    positions = tuple(td.span_positions("clean", i, corruption.span) for i in range(len(td)))
    if not any(len(p) for p in positions):
        raise ConfigError(
            f"Noise corruption span {corruption.span!r} covers no token of any prompt of dataset {td.dataset.name!r}."
        )
    std = (
        corruption.std
        if corruption.std is not None
        else _measure_std(adapter, td, positions, batch_size)
    )
    ids = td.dataset.ids
    seeds = np.array([corruption.prompt_seed(i) for i in ids], dtype=np.uint64)
    return _Noise(corruption, float(std), ids, seeds, positions, adapter.d_model)


def _measure_std(
    adapter: ModelAdapter, td: TokenizedDataset, positions: tuple[np.ndarray, ...], batch_size: int
) -> float:
    """ROME's std of clean ``resid_pre.0`` over every span token of every prompt (one cheap pass)."""
    lengths = td.lengths("clean")
    key = (SiteKind.RESID_PRE, 0)
    picked = []
    for batch in _buckets(lengths, batch_size):
        tokens = mx.array(td.tokens("clean")[batch, : lengths[batch[0]]])  # (B, T)
        x = (
            adapter.forward(tokens, Forward(reads={key: None}, logits=False))
            .sites[key]
            .astype(mx.float32)
        )
        mx.eval(x)
        x = np.asarray(x)  # (B, T, D)
        picked.extend(x[j, positions[i]] for j, i in enumerate(batch))
    return measured_std([a for a in picked if len(a)])


def _noise_write(noise: _Noise, prompts: np.ndarray) -> SiteWrite | None:
    """The ``resid_pre.0`` addition that corrupts ``prompts`` (batch rows 0..B-1), or None."""
    rows, positions, values = [], [], []
    for row, p in enumerate(prompts):
        where = noise.positions[p]
        if len(where):
            rows.append(np.full(len(where), row, dtype=np.int32))
            positions.append(where)
            values.append(
                noise.corruption.noise_for(noise.ids[p], where, noise.d_model, std=noise.std)
            )
    if not rows:
        return None
    return SiteWrite(
        SiteKind.RESID_PRE,
        0,
        mx.array(np.concatenate(rows)),
        mx.array(np.concatenate(positions)),
        mx.array(np.concatenate(values)),
        add=True,
    )
