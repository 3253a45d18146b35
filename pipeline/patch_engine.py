"""The patch engine: many patched runs per forward pass, computing only what a patch can change.

Activation patching replays a *source* run's activation at a site into a *base* run and
scores the result (denoising: clean into corrupted; noising: corrupted into clean). The naive
method (:mod:`patchsweep.pipeline.patch_reference`, and TransformerLens's
``get_act_patch_resid_pre``) runs one full forward pass per patch. This engine computes
exactly the same numbers with far less work, from four facts about causal decoders:

1. A patch at layer ``l`` cannot change blocks below ``l``: the pass *starts* at block ``l``
   from the base run's residual stream ``resid_pre[l]``.
2. A patch at position ``p`` cannot change positions ``< p`` at any layer: the base run's
   keys/values for positions ``< p`` are reused (a prefix KV cache) and only positions
   ``>= p`` are computed.
3. The metrics need only the answer position's logits: the final norm and unembedding run
   on the last position alone, and so do the last block's MLP and attention output
   projection (the adapter's ``unembed="last"``).
4. A patch at position ``p`` of a prompt whose base and source runs are identical up to and
   including ``p`` (same tokens, no noise there: :attr:`PatchBatch.noop`) writes exactly what
   the base run already holds, so its patched run *is* the base run: its metrics are the base
   run's, and nothing is computed. Typical corruptions change one token in the middle of the
   prompt, so this skips every position before it.

For a full layer x position sweep 1+2 cut block work to about a quarter; 3 removes almost all
of the unembedding; 4 removes the positions before the first corrupted token.

Batches stay full: every patch with the same start position is one group, whatever its start
layer, and a group's rows are (patch, prompt) pairs, each carrying its own write, up to
``max_rows`` rows per forward; only pairs whose positions exist in the prompt and that are
not no-ops become rows. Rows *join* the forward at their own start layer (staggered entry,
:attr:`Forward.joins`): block ``j`` computes every row that started at or below ``j``, so one
forward serves all layers of a position and no block runs for a row below its start. There
is one ``mx.eval`` per forward and no per-patch host sync.

Shapes: ``B`` prompts in a batch (same base length ``T``), ``R`` rows per forward,
``D`` = d_model, ``H`` heads of ``d_head``, ``V`` vocabulary, ``M`` metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from patchsweep.stores.metrics import Metric
from patchsweep.stores.sites import Position, SiteKind

from .adapter import Forward, ModelAdapter, PrefixKVCache, SiteWrite
from .scoring import Scorer

__all__ = ["PatchEntry", "PatchBatch", "PatchEngine", "EngineResult", "build_writes", "noise_write"]


@dataclass(frozen=True)
class PatchEntry:
    """One (site, position) written in a patched run; ``head`` only for ``head`` sites."""

    kind: SiteKind
    layer: int
    position: Position
    head: int | None = None


@dataclass
class PatchBatch:
    """Prompts patched together: the base run's inputs, the source run's activations, scoring data.

    Attributes
    ----------
    base_tokens : np.ndarray, int32, (B, T)
        Tokens of the base run (all prompts of a batch have the same length ``T``).
    source : callable (kind, layer) -> np.ndarray
        The source run's activations at a site: (B, P_src, D), or (B, P_src, H, d_head) for
        heads, float32; ``P_src`` indexes positions as ``source_pos`` says.
    base_pos, source_pos : callable Position -> np.ndarray, int, (B,)
        Absolute base-run position of a :class:`Position` per prompt, and its index along the
        source arrays' position axis; -1 where the prompt has no such position.
    answer, wrong : np.ndarray, int, (B,)
    clean_logits : np.ndarray, float32, (B, V)
        The clean run's answer-position logits (the reference for distance metrics).
    noise : tuple (rows (n,) int, positions (n,) int, values (n, D) float32), optional
        Noise added to the base run's ``resid_pre`` at layer 0 (ROME-style corruption): one
        entry per noised token, so spans may differ in length across prompts.
    noop : callable Position -> np.ndarray, bool, (B,), optional
        True where patching that position cannot change the prompt's base run: the source and
        base runs are identical up to and including it (same absolute position, same tokens
        before it, no noise at or before it). The engine returns the base run's metrics there
        without computing. None: no such knowledge, every patch is computed.
    baseline : np.ndarray, float32, (B, M), optional
        The unpatched base run's metrics as the caller records them (e.g. scored from the
        captured logits). No-op patches return exactly these, so their recovery against that
        baseline is exactly 0 rather than float-rounding noise of one sign (which a test across
        prompts would call significant). None: the engine's own base run.
    """

    base_tokens: np.ndarray
    source: Callable[[SiteKind, int], np.ndarray]
    base_pos: Callable[[Position], np.ndarray]
    source_pos: Callable[[Position], np.ndarray]
    answer: np.ndarray
    wrong: np.ndarray
    clean_logits: np.ndarray
    noise: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    noop: Callable[[Position], np.ndarray] | None = None
    baseline: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.base_tokens.shape[0]


def noise_write(batch: PatchBatch) -> list[SiteWrite]:
    """The base run's noise corruption as an additive write at ``resid_pre.0`` (empty if none)."""
    if batch.noise is None:
        return []
    rows, positions, values = batch.noise  # (n,), (n,), (n, D)
    return [
        SiteWrite(
            SiteKind.RESID_PRE, 0, mx.array(rows), mx.array(positions), mx.array(values), add=True
        )
    ]


def build_writes(
    batch: PatchBatch,
    items: list[tuple[PatchEntry, ...]],
    row_prompt: np.ndarray,
    row_item: np.ndarray,
    offset: int,
) -> tuple[list[SiteWrite], np.ndarray]:
    """Site writes for rows ``r`` = (item ``row_item[r]``, prompt ``row_prompt[r]``).

    Window positions are absolute positions minus ``offset`` (the prefix cache length).
    Returns the writes and a boolean (R,) mask of rows whose every entry exists in its prompt.
    """
    R = row_prompt.shape[0]
    valid = np.ones(R, dtype=bool)
    parts: dict[tuple[SiteKind, int], list] = defaultdict(list)
    for i, item in enumerate(items):
        rows = np.nonzero(row_item == i)[0]
        prompts = row_prompt[rows]
        for e in item:
            base = batch.base_pos(e.position)[prompts]
            src = batch.source_pos(e.position)[prompts]
            ok = (base >= 0) & (src >= 0)
            valid[rows[~ok]] = False
            parts[(e.kind, e.layer)].append(
                (rows[ok], base[ok] - offset, prompts[ok], src[ok], e.head)
            )
    writes = []
    for (kind, layer), chunks in parts.items():
        acts = batch.source(kind, layer)
        rows = np.concatenate([c[0] for c in chunks])
        if rows.size == 0:
            continue
        window = np.concatenate([c[1] for c in chunks])
        prompts = np.concatenate([c[2] for c in chunks])
        src = np.concatenate([c[3] for c in chunks])
        if kind is SiteKind.HEAD:
            heads = np.concatenate([np.full(c[0].shape, c[4]) for c in chunks])
            values = acts[prompts, src, heads]  # (n, d_head)
            writes.append(
                SiteWrite(
                    kind,
                    layer,
                    mx.array(rows),
                    mx.array(window),
                    mx.array(values),
                    heads=mx.array(heads),
                )
            )
        else:
            values = acts[prompts, src]  # (n, D)
            writes.append(
                SiteWrite(kind, layer, mx.array(rows), mx.array(window), mx.array(values))
            )
    return writes, valid


class PatchEngine:
    """Score patched runs in bulk.

    Parameters
    ----------
    adapter : ModelAdapter
    metrics : tuple of Metric
    max_rows : int
        Most rows (patch x prompt pairs) per forward pass.
    skip_noops : bool
        Return the base run's metrics for patches that :attr:`PatchBatch.noop` says cannot
        change it, instead of computing them (the same numbers up to float rounding).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        metrics: tuple[Metric, ...],
        max_rows: int = 256,
        skip_noops: bool = True,
    ):
        self.adapter = adapter
        self.metrics = tuple(metrics)
        self.max_rows = max_rows
        self.skip_noops = skip_noops
        # token_layers: (token, block) pairs computed in full; last_block_partial: tokens of the
        # last block that computed only their keys/values and attention (no MLP, no output
        # projection: only the answer position's output of the last block is used)
        # noops: (patch, prompt) pairs answered with the base run's metrics, not computed
        self.stats = {
            "forwards": 0,
            "rows": 0,
            "token_layers": 0,
            "last_block_partial": 0,
            "noops": 0,
        }
        # Score on the host with NumPy on a CPU device (4x faster exp than MLX's there).
        self.scoring = "numpy" if mx.default_device().type == mx.cpu else "mlx"

    def _score(self, scorer: Scorer, logits: mx.array, rows: np.ndarray) -> np.ndarray:
        """Evaluate ``logits`` (R, V) and score them: (R, M) float32 on the host."""
        mx.eval(logits)
        if self.scoring == "numpy":
            return scorer(np.array(logits, copy=False), rows)
        scores = scorer(logits, mx.array(rows))
        mx.eval(scores)
        return np.array(scores)

    def run(
        self,
        batch: PatchBatch,
        items: list[tuple[PatchEntry, ...]],
        on_progress: Callable[[int], None] | None = None,
    ) -> EngineResult:
        """Metric values of every item on every prompt of ``batch``, and of the unpatched base run.

        Returns
        -------
        EngineResult
            ``values`` (n_items, B, M) float32, NaN where an item's position does not exist in
            that prompt; ``baseline`` (B, M), the base run unpatched.
        """
        B, T = batch.base_tokens.shape
        n_layers = self.adapter.n_layers
        out = np.full((len(items), B, len(self.metrics)), np.nan, dtype=np.float32)
        scorer = Scorer(batch.answer, batch.wrong, batch.clean_logits, self.metrics, self.scoring)
        base = self._base_run(batch, scorer)
        noop_of = batch.noop if self.skip_noops else None
        unpatched = base.scores if batch.baseline is None else np.asarray(batch.baseline)
        # start position -> (start layer, item, prompts computed)
        groups: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        noops = 0
        for i, item in enumerate(items):
            starts = np.stack([batch.base_pos(e.position) for e in item])  # (E, B)
            present = (starts >= 0).all(axis=0) & np.stack(
                [batch.source_pos(e.position) >= 0 for e in item]
            ).all(axis=0)  # (B,): every entry exists in this prompt (else the value stays NaN)
            if noop_of is not None:
                noop = present & np.stack([noop_of(e.position) for e in item]).all(axis=0)
                out[i, noop] = unpatched[noop]
                noops += int(noop.sum())
                present &= ~noop
            prompts = np.nonzero(present)[0]
            if prompts.size:
                groups[int(starts[:, prompts].min())].append(
                    (min(e.layer for e in item), i, prompts)
                )
        self.stats["noops"] += noops
        if noops and on_progress is not None:
            on_progress(noops)
        for p, members in sorted(groups.items()):
            members.sort(key=lambda m: m[:2])  # by start layer: rows joining lower come first
            k = 0
            while k < len(members):
                chunk, n_rows = [], 0  # whole items, up to max_rows rows (at least one item)
                while k < len(members) and (
                    not chunk or n_rows + len(members[k][2]) <= self.max_rows
                ):
                    chunk.append(members[k])
                    n_rows += len(members[k][2])
                    k += 1
                ids = np.array([i for _, i, _ in chunk])
                row_item = np.concatenate(
                    [np.full(len(prompts), j) for j, (_, _, prompts) in enumerate(chunk)]
                )
                row_prompt = np.concatenate([prompts for _, _, prompts in chunk])
                row_start = np.array([layer for layer, _, _ in chunk])[row_item]  # ascending
                writes, valid = build_writes(
                    batch, [items[i] for i in ids], row_prompt, row_item, offset=p
                )
                logits = self._forward(base, batch, p, row_prompt, row_start, writes)
                values_np = self._score(scorer, logits, row_prompt)  # (R, M)
                out[ids[row_item], row_prompt] = np.where(valid[:, None], values_np, np.nan)
                self.stats["forwards"] += 1
                self.stats["rows"] += len(row_prompt)
                partial = (T - p - 1) * len(row_start)
                self.stats["token_layers"] += (
                    int(((T - p) * (n_layers - row_start)).sum()) - partial
                )
                self.stats["last_block_partial"] += partial
                if on_progress is not None:
                    on_progress(int(valid.sum()))  # patched runs whose positions exist
        return EngineResult(out, base.scores)

    def _forward(
        self,
        base: _BaseRun,
        batch: PatchBatch,
        p: int,
        row_prompt: np.ndarray,
        row_start: np.ndarray,
        writes: list,
    ) -> mx.array:
        """Answer-position logits (R, V) of one staggered forward from position ``p``.

        Row ``r`` joins at block ``row_start[r]``.

        Block ``j`` computes the rows with ``row_start <= j`` (a prefix of the row order), so
        its prefix KV cache holds the base run's keys/values of exactly those rows.
        """
        idx = mx.array(row_prompt)
        joins = {}
        for layer in np.unique(row_start):
            rows = np.nonzero(row_start == layer)[0]  # contiguous: rows are sorted by start
            joins[int(layer)] = base.resid_pre[layer][
                idx[int(rows[0]) : int(rows[-1]) + 1], p:
            ]  # (R_l, T-p, D)
        cache = []
        for j, (keys, values) in enumerate(base.kv):
            active = max(
                int(np.searchsorted(row_start, j, side="right")), 1
            )  # >= 1: offsets must be right below the first join too
            cache.append(
                PrefixKVCache(keys[idx[:active], :, :p], values[idx[:active], :, :p])
                if p > 0
                else PrefixKVCache()
            )
        fwd = Forward(writes=writes, joins=joins, unembed="last")
        tokens = mx.array(
            batch.base_tokens[:1, p:]
        )  # embeddings are never used: every row joins with a residual
        logits = self.adapter.forward(tokens, fwd, cache=cache).logits[:, 0]  # (R, V)
        return logits

    def _base_run(self, batch: PatchBatch, scorer: Scorer) -> _BaseRun:
        """One forward of the base run keeping what the patched passes reuse.

        ``resid_pre[l]``: (B, T, D) for every block; ``kv[l]``: keys/values (B, n_kv, T, d_head).
        """
        L = self.adapter.n_layers
        caches = [PrefixKVCache() for _ in range(L)]
        reads = {(SiteKind.RESID_PRE, layer): None for layer in range(L)}
        res = self.adapter.forward(
            mx.array(batch.base_tokens),
            Forward(reads=reads, writes=noise_write(batch), unembed="last"),
            cache=caches,
        )
        logits = res.logits[:, 0]
        resid = [res.sites[(SiteKind.RESID_PRE, layer)] for layer in range(L)]
        kv = [(c.keys, c.values) for c in caches]
        mx.eval(logits, resid, kv)
        scores = self._score(scorer, logits, np.arange(batch.size))
        self.stats["forwards"] += 1
        partial = batch.size * (batch.base_tokens.shape[1] - 1)
        self.stats["token_layers"] += batch.size * batch.base_tokens.shape[1] * L - partial
        self.stats["last_block_partial"] += partial
        return _BaseRun(resid, kv, scores)


@dataclass(frozen=True)
class EngineResult:
    """``values``: (n_items, B, M) patched metrics; ``baseline``: (B, M) unpatched base run."""

    values: np.ndarray
    baseline: np.ndarray


@dataclass
class _BaseRun:
    resid_pre: list
    kv: list
    scores: np.ndarray
