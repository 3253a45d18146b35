"""The capture stage's compute: one store chunk, run by run, in batches of equal-length prompts.

:class:`_Plan` fixes everything for a run; :func:`_compute_chunk` fills every per-prompt
array's rows of one chunk (floats in float32); :func:`_run_batch` is one forward pass, one
``mx.eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from patchsweep.stores.activations import CaptureLayout
from patchsweep.stores.schema import ArraySpec

from .adapter import Forward, ModelAdapter
from .batching import _buckets
from .capture_noise import _Noise, _noise_write
from .datasets import TokenizedDataset
from .progress import StageProgress

if TYPE_CHECKING:
    from .capture import CaptureSpec

__all__: list[str] = []


@dataclass
class _Plan:
    """Everything a chunk's computation needs, fixed for the whole run."""

    adapter: ModelAdapter
    td: TokenizedDataset
    spec: CaptureSpec
    layout: CaptureLayout
    roles: np.ndarray  # (R_stored,) column indices into td.roles
    noise: _Noise | None
    specs: dict[str, ArraySpec]


def _compute_chunk(plan: _Plan, rows: slice, bar: StageProgress) -> dict[str, np.ndarray]:
    """Every per-prompt array's rows ``rows``, shaped as the store's specs, floats in float32."""
    td, layout = plan.td, plan.layout
    out = {}
    for name, s in plan.specs.items():
        if s.kind in ("float", "float32"):
            out[name] = np.full((rows.stop - rows.start, *s.shape[1:]), np.nan, dtype=np.float32)
    out["answer_id"] = td.answer_id[rows]
    out["wrong_id"] = td.wrong_id[rows]
    if plan.noise is not None:
        out["noise_seed"] = plan.noise.seeds[rows]
    for run in layout.runs:
        source = "clean" if plan.noise is not None else run  # noise corrupts the clean tokens
        out[f"{run}_tokens"] = td.tokens(source)[rows]
        out[f"{run}_length"] = lengths = td.lengths(source)[rows]
        out[f"{run}_role_pos"] = td.role_pos(source)[rows][:, plan.roles]  # (n, R)
        for batch in _buckets(lengths, plan.spec.batch_size):
            _run_batch(plan, run, source, rows.start + batch, batch, int(lengths[batch[0]]), out)
            done = len(batch) if run == layout.runs[-1] else 0
            bar.advance(items=done, tokens=len(batch) * int(lengths[batch[0]]))
    return {name: out[name] for name in plan.specs}


def _run_batch(
    plan: _Plan,
    run: str,
    source: str,
    prompts: np.ndarray,
    batch: np.ndarray,
    length: int,
    out: dict[str, np.ndarray],
) -> None:
    """One forward pass of equal-length ``prompts``; fills rows ``batch`` of ``out``."""
    spec, layers = plan.spec, plan.layout.layers
    tokens = mx.array(plan.td.tokens(source)[prompts, :length])  # (B, T)
    by_role = spec.positions != "all"
    role_pos = out[f"{run}_role_pos"][batch]  # (B, R)
    where = (
        mx.array(np.maximum(role_pos, 0)) if by_role else None
    )  # (B, R); absent roles become NaN below
    reads = {(kind, layer): where for kind in spec.sites for layer in layers}
    writes = (
        [_noise_write(plan.noise, prompts)] if plan.noise is not None and run == "corrupted" else []
    )
    request = Forward(
        reads=reads,
        writes=[w for w in writes if w is not None],
        logits=spec.logits,
        unembed="last" if spec.logits else None,
    )
    result = plan.adapter.forward(tokens, request)
    values = [
        mx.stack([result.sites[(kind, layer)] for layer in layers], axis=1) for kind in spec.sites
    ]  # (B, nL, T|R, ...)
    if spec.logits:
        values.append(result.logits[:, -1, :])  # (B, vocab)
    values = [v.astype(mx.float32) for v in values]
    mx.eval(*values)
    for kind, value in zip(spec.sites, values, strict=False):
        target = out[CaptureLayout.activation_name(run, kind.value)]
        value = np.asarray(value)
        if by_role:
            absent = (role_pos < 0).reshape(
                len(batch), 1, role_pos.shape[1], *(1,) * (value.ndim - 3)
            )
            target[batch] = np.where(absent, np.float32(np.nan), value)
        else:
            target[batch, :, :length] = value
    if spec.logits:
        out[f"{run}_logits"][batch] = np.asarray(values[-1])
