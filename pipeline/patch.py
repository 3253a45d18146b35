"""The patch stage: replay cached activations into a whole dataset's forward passes, resumably.

Reads a complete capture store (read-only), runs the :class:`~.patch_engine.PatchEngine` on
every prompt chunk the results store still lacks, and writes per-prompt metric values of every
patched run, plus the clean and corrupted baselines, to a results store. The source activations
(clean for denoising, corrupted for noising) come from the capture store, chunk by chunk, so
memory is bounded by one chunk whatever the dataset's size. The base run is recomputed per
batch (one forward per prompt, against one forward per *patch* for the sweep itself).

A run killed at any moment resumes with the same call: chunks whose completeness marker is
missing are recomputed whole, and the computation of a chunk depends on nothing but that
chunk's prompts, so the finished store is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from patchsweep.stores.activations import ActivationStore
from patchsweep.stores.errors import ConfigError, StoreMismatchError
from patchsweep.stores.identity import Identity, dataclass_from_dict
from patchsweep.stores.metrics import Metric
from patchsweep.stores.results import ResultsLayout, ResultsStore
from patchsweep.stores.sites import Direction, PatchSet, Position, SiteKind
from patchsweep.stores.zarr_base import ChunkWriter, decode_floats

from .compute import check_cpu_speed
from .corruption import NoiseCorruption
from .loading import LoadedModel
from .patch_engine import PatchBatch, PatchEngine, PatchEntry
from .progress import StageProgress
from .scoring import score

__all__ = [
    "PatchSpec",
    "PatchSummary",
    "PatchPlan",
    "patch",
    "patch_items",
    "plan_patch",
    "plan_work",
]

_SWEEP_KINDS = (SiteKind.RESID_PRE, SiteKind.ATTN_OUT, SiteKind.MLP_OUT, SiteKind.RESID_POST)


@dataclass(frozen=True)
class PatchSpec:
    """What to patch and how to score it.

    Parameters
    ----------
    sites : site kinds swept one at a time at every (layer, position); ``head`` sweeps every
        head of every layer too.
    layers : layer indices swept, or None for every layer the capture store holds.
    positions : ``"all"`` (every token index) or role names (``last``, ``subject_last``...).
    directions : ``denoise`` (clean into corrupted) and/or ``noise`` (corrupted into clean).
    patch_sets : named groups of (site, position) patched together in one run.
    metrics : metrics computed for every patched run (default: all).
    max_rows : most (patch x prompt) rows per forward pass.
    """

    sites: tuple = (SiteKind.RESID_PRE,)
    layers: tuple | None = None
    positions: object = "all"
    directions: tuple = (Direction.DENOISE,)
    patch_sets: tuple = ()
    metrics: tuple = tuple(Metric)
    max_rows: int = 256

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("sites", tuple(dict.fromkeys(SiteKind.parse(k) for k in _seq(self.sites))))
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(
                not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in layers
            ):
                raise ConfigError(
                    f"PatchSpec.layers must be None (all) or non-negative integers, got {self.layers!r}."
                )
            s("layers", tuple(sorted(set(layers))))
        if self.positions != "all":
            roles = tuple(Position.parse(p) for p in _seq(self.positions))
            if not roles or any(not p.is_role for p in roles):
                raise ConfigError(
                    f"PatchSpec.positions must be 'all' or a list of role names (e.g. ['subject_last', 'last']), got {self.positions!r}."
                )
            s("positions", tuple(str(p) for p in roles))
        s("directions", tuple(dict.fromkeys(Direction.parse(d) for d in _seq(self.directions))))
        s(
            "patch_sets",
            tuple(
                p
                if isinstance(p, PatchSet)
                else PatchSet.parse(p)
                if isinstance(p, str)
                else PatchSet.from_dict(p)
                for p in self.patch_sets
            ),
        )
        s("metrics", tuple(dict.fromkeys(Metric.parse(m) for m in _seq(self.metrics))))
        if not self.sites and not self.patch_sets:
            raise ConfigError(
                "PatchSpec has nothing to patch: give sites to sweep and/or patch_sets."
            )
        if not self.directions or not self.metrics:
            raise ConfigError("PatchSpec needs at least one direction and one metric.")
        if len({p.name for p in self.patch_sets}) != len(self.patch_sets):
            raise ConfigError(
                f"PatchSpec.patch_sets has duplicate names: {[p.name for p in self.patch_sets]}."
            )
        if not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ConfigError(
                f"PatchSpec.max_rows must be a positive integer, got {self.max_rows!r}."
            )

    @property
    def sweep_kinds(self) -> tuple[SiteKind, ...]:
        return tuple(k for k in self.sites if k is not SiteKind.HEAD)

    @property
    def heads(self) -> bool:
        return SiteKind.HEAD in self.sites

    def to_dict(self) -> dict:
        return {
            "sites": [str(k) for k in self.sites],
            "layers": None if self.layers is None else list(self.layers),
            "positions": self.positions if self.positions == "all" else list(self.positions),
            "directions": [str(d) for d in self.directions],
            "patch_sets": [p.to_dict() for p in self.patch_sets],
            "metrics": [str(m) for m in self.metrics],
            "max_rows": self.max_rows,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PatchSpec:
        return dataclass_from_dict(cls, data)


def _seq(value) -> tuple:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class PatchPlan:
    """The work a patch run will do, for dry runs and the summary."""

    prompts: int
    patched_runs: int
    naive_token_layers: int
    engine_token_layers: int

    @property
    def work_ratio(self) -> float:
        return self.naive_token_layers / max(self.engine_token_layers, 1)


@dataclass(frozen=True)
class PatchSummary:
    prompts: int
    chunks_done: int
    chunks_skipped: int
    patched_runs: int
    forwards: int
    elapsed_s: float
    results_url: str
    plan: PatchPlan = field(repr=False)
    computed_prompts: int | None = None  # prompts this call patched (None: all of them)
    noop_runs: int = 0  # patched runs inside the runs' shared prefix: the base run, not computed

    def _which(self) -> str:
        done = self.prompts if self.computed_prompts is None else self.computed_prompts
        return f"{self.prompts}" if done == self.prompts else f"{done} of {self.prompts}"

    def _noops(self) -> str:
        if not self.noop_runs:
            return ""
        return f"; {self.noop_runs:,} of the runs patch where both runs are still identical (answered by the base run)"

    def line(self) -> str:
        rate = self.patched_runs / self.elapsed_s if self.elapsed_s > 0 else float("nan")
        resumed = f" ({self.chunks_skipped} chunks already done)" if self.chunks_skipped else ""
        return (
            f"patched {self._which()} prompts: {self.patched_runs:,} patched runs in {self.forwards:,} forward passes, "
            f"{self.elapsed_s:.1f} s ({rate:,.0f} patched runs/s), {self.plan.work_ratio:.1f}x less block work than "
            f"one forward per patch{self._noops()}{resumed} -> {self.results_url}"
        )


@dataclass
class _Context:
    """Everything fixed for one patch run: the capture store, the item list and index maps."""

    capture: ActivationStore
    spec: PatchSpec
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    n_heads: int
    items: list
    targets: list  # per item: (array suffix, index tuple into the per-prompt block)
    noise: NoiseCorruption | None
    noise_std: float | None
    pos_index: dict = field(default_factory=dict)


def _context(capture: ActivationStore, spec: PatchSpec) -> _Context:
    layout = capture.layout
    captured = set(layout.sites)
    layers = spec.layers if spec.layers is not None else tuple(layout.layers)
    runs_needed = {d.source_run for d in spec.directions}
    problems = []
    missing_runs = sorted(runs_needed - set(layout.runs))
    if missing_runs:
        problems.append(
            f"runs {missing_runs} (directions {[str(d) for d in spec.directions]} read them as the source)"
        )
    kinds_needed = {str(k) for k in spec.sites} | {
        str(s.kind) for p in spec.patch_sets for s, _ in p.entries
    }
    if kinds_needed - captured:
        problems.append(f"sites {sorted(kinds_needed - captured)} (captured: {sorted(captured)})")
    layers_needed = set(layers) | {s.layer for p in spec.patch_sets for s, _ in p.entries}
    if layers_needed - set(layout.layers):
        problems.append(
            f"layers {sorted(layers_needed - set(layout.layers))} (captured: {list(layout.layers)})"
        )
    if spec.positions == "all":
        if layout.pos_dim != "pos":
            problems.append(
                "every position (the store captured roles only: re-capture with positions='all' or patch roles)"
            )
        positions = tuple(str(i) for i in range(layout.n_pos))
        if {"clean", "corrupted"} <= set(layout.runs):
            clean_len, corr_len = (
                capture.zarr_array(f"{r}_length")[:] for r in ("clean", "corrupted")
            )
            bad = np.nonzero(clean_len != corr_len)[0]
            if bad.size:
                ids = [str(x) for x in capture.zarr_array("prompt")[:][bad[:5]]]
                raise ConfigError(
                    f"positions='all' patches token index i of the clean run into index i of the corrupted run, but {bad.size} "
                    f"prompt pair(s) have different clean and corrupted token counts (e.g. {ids}). Use role positions "
                    "(e.g. positions=['subject_last', 'last']), which are resolved per run, or make the pairs equal in length."
                )
    else:
        positions = spec.positions
        if set(positions) - set(layout.roles):
            problems.append(
                f"roles {sorted(set(positions) - set(layout.roles))} (captured roles: {list(layout.roles)})"
            )
    set_roles = {str(p) for ps in spec.patch_sets for _, p in ps.entries if p.is_role}
    if set_roles - set(layout.roles):
        problems.append(
            f"patch-set roles {sorted(set_roles - set(layout.roles))} (captured roles: {list(layout.roles)})"
        )
    if problems:
        raise ConfigError(
            f"The capture store at {capture.url!r} lacks what this patch spec needs: "
            + "; ".join(problems)
            + ". Re-capture with those sites, layers and positions, or narrow the patch spec."
        )

    corruption = capture.identity.spec.get("corruption", {"kind": "prompts"})
    noise = std = None
    if corruption.get("kind", "prompts") != "prompts":
        fields = {k: corruption[k] for k in ("span", "scale", "seed") if k in corruption}
        noise, std = NoiseCorruption(**fields, std=corruption["std"]), corruption["std"]

    n_heads = layout.n_heads if spec.heads else 0
    items, targets = patch_items(spec, layers, positions, n_heads)
    return _Context(capture, spec, tuple(layers), positions, n_heads, items, targets, noise, std)


def patch_items(spec: PatchSpec, layers, positions, n_heads: int) -> tuple[list, list]:
    """Every patched run of ``spec``, and where its value goes in the results arrays.

    Returns ``items`` (tuples of :class:`PatchEntry`, one tuple per patched run) and, per item,
    ``(array-name infix, index into the per-prompt block)``: ``""`` for site sweeps
    (site, layer, pos), ``"head_"`` for head sweeps (layer, pos, head), ``"set_"`` for patch sets.
    """
    items, targets = [], []
    layer_ix = {layer: i for i, layer in enumerate(layers)}
    for s_ix, kind in enumerate(spec.sweep_kinds):
        for layer in layers:
            for x_ix, pos in enumerate(positions):
                items.append((PatchEntry(kind, layer, Position.parse(pos)),))
                targets.append(("", (s_ix, layer_ix[layer], x_ix)))
    for layer in layers:
        for x_ix, pos in enumerate(positions):
            for h in range(n_heads):
                items.append((PatchEntry(SiteKind.HEAD, layer, Position.parse(pos), head=h),))
                targets.append(("head_", (layer_ix[layer], x_ix, h)))
    for k, ps in enumerate(spec.patch_sets):
        items.append(tuple(PatchEntry(s.kind, s.layer, p, s.head) for s, p in ps.entries))
        targets.append(("set_", (k,)))
    return items, targets


def plan_work(
    spec: PatchSpec,
    items: list,
    n_layers: int,
    lengths: dict,
    role_pos: dict,
    roles,
    shared: np.ndarray | None = None,
) -> PatchPlan:
    """Count patched runs and block work (token x layer) for the naive and this engine's schedule.

    Parameters
    ----------
    lengths : dict run -> np.ndarray (N,)
        Token count of each prompt in the ``clean`` and ``corrupted`` runs.
    role_pos : dict run -> np.ndarray (N, R)
        Absolute position of each role (-1 where absent), columns in the order of ``roles``.
    shared : np.ndarray (N,), optional
        Leading positions where the two runs are identical (:func:`shared_prefix`); patches
        there are answered by the base run and cost the engine nothing.

    Naive: one full pass (every block, every position) per patched run. Engine: blocks from the
    run's lowest layer, positions from its earliest, plus one base run per prompt and direction.
    """
    roles = list(roles)
    runs = naive = engine = 0
    for d in spec.directions:
        T = np.asarray(lengths[d.base_run], dtype=np.int64)  # (N,)

        def at(run: str, p: Position, T=T) -> np.ndarray:
            if p.is_role:
                return np.asarray(role_pos[run], dtype=np.int64)[:, roles.index(p.role)]
            return np.where(np.asarray(lengths[run]) > p.index, p.index, -1)

        for item in items:
            starts = np.stack([at(d.base_run, e.position) for e in item])  # (entries, N)
            valid = (starts >= 0).all(axis=0)
            p = starts.min(axis=0)
            runs += int(valid.sum())
            naive += int((T[valid] * n_layers).sum())
            computed = valid
            if shared is not None:
                sources = np.stack([at(d.source_run, e.position) for e in item])
                computed = valid & ~((starts == sources) & (starts < shared)).all(axis=0)
            engine += int(((T - p)[computed] * (n_layers - min(e.layer for e in item))).sum())
        engine += int((T * n_layers).sum())  # the base run of every prompt
    return PatchPlan(len(next(iter(lengths.values()))), runs, naive, engine)


def shared_prefix(
    tokens_a: np.ndarray,
    tokens_b: np.ndarray,
    len_a: np.ndarray,
    len_b: np.ndarray,
    noise_first: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) leading positions where two runs of each prompt are identical: the tokens they
    share (up to the shorter run), cut at the first noised position (-1: no noise)."""
    width = min(tokens_a.shape[1], tokens_b.shape[1])
    differ = tokens_a[:, :width] != tokens_b[:, :width]
    first = np.where(differ.any(axis=1), differ.argmax(axis=1), width)
    same = np.minimum(first, np.minimum(len_a, len_b))
    if noise_first is not None:
        same = np.where(noise_first >= 0, np.minimum(same, noise_first), same)
    return same


def plan_patch(
    capture: ActivationStore, spec: PatchSpec, n_layers: int, prompts: np.ndarray | None = None
) -> PatchPlan:
    """:func:`plan_work` for a capture store (``n_layers``: the model's block count).

    ``prompts``: a boolean mask or index array restricting the plan to some prompts (e.g. the
    ones a resumed run still has to do).
    """
    ctx = _context(capture, spec)
    layout = capture.layout
    n = capture.n_prompts
    pick = np.arange(n) if prompts is None else np.arange(n)[prompts]
    lengths = {run: capture.zarr_array(f"{run}_length")[:][pick] for run in layout.runs}
    role_pos = {
        run: capture.zarr_array(f"{run}_role_pos")[:][pick]
        if layout.roles
        else np.zeros((len(pick), 0))
        for run in layout.runs
    }
    tokens = {run: capture.zarr_array(f"{run}_tokens")[:][pick] for run in layout.runs}
    noise_first = None
    if ctx.noise is not None:
        noise_first = role_pos["clean"][:, list(layout.roles).index(f"{ctx.noise.span}_first")]
    shared = None
    if {"clean", "corrupted"} <= set(layout.runs):
        shared = shared_prefix(
            tokens["clean"],
            tokens["corrupted"],
            lengths["clean"],
            lengths["corrupted"],
            noise_first,
        )
    return plan_work(spec, ctx.items, n_layers, lengths, role_pos, layout.roles, shared)


def patch(
    loaded: LoadedModel, capture_url, spec: PatchSpec, results_url, *, progress: bool = True
) -> PatchSummary:
    """Run the patch stage.

    Parameters
    ----------
    loaded : LoadedModel
        The model the capture store was made with (checked by identity).
    capture_url, results_url : str or path
        A complete capture store (opened read-only) and where the results go; an existing
        results store of the same capture and spec is resumed.
    spec : PatchSpec
    progress : bool
        Show a progress bar (patched runs/s, ETA).
    """
    t0 = time.perf_counter()
    capture = ActivationStore.open(capture_url, mode="r")
    found = capture.identity.model
    if Identity(model=found).part_digest("model") != Identity(
        model=loaded.identity["model"]
    ).part_digest("model"):
        raise StoreMismatchError(
            f"The capture store at {capture.url!r} was made with another model (weights sha256 {str(found.get('weights_sha256'))[:12]}), "
            f"not {loaded.path} (weights sha256 {loaded.identity['model']['weights_sha256'][:12]}). Patch with the model that made the capture."
        )
    ctx = _context(capture, spec)
    plan = plan_patch(capture, spec, loaded.adapter.n_layers)
    layout = ResultsLayout(
        n_prompts=capture.n_prompts,
        layers=ctx.layers,
        positions=ctx.positions,
        metrics=tuple(str(m) for m in spec.metrics),
        directions=tuple(str(d) for d in spec.directions),
        sites=tuple(str(k) for k in spec.sweep_kinds),
        n_heads=ctx.n_heads,
        patchsets=tuple(p.name for p in spec.patch_sets),
        meta_columns=tuple(capture.layout.meta_columns),
        chunk_prompts=capture.layout.chunk_prompts,
    )
    ids = [str(x) for x in capture.zarr_array("prompt")[:]]
    meta = {c: [str(x) for x in capture.zarr_array(f"meta_{c}")[:]] for c in layout.meta_columns}
    results = ResultsStore.create_or_resume(
        results_url, layout, source=capture, spec=spec.to_dict(), prompt_ids=ids, meta=meta
    )
    missing = results.missing_chunks()
    check_cpu_speed(loaded.device)
    engine = PatchEngine(loaded.adapter, spec.metrics, spec.max_rows)
    todo = np.zeros(capture.n_prompts, dtype=bool)
    for c in missing:
        todo[results.chunk_slice(c)] = True
    todo_runs = (
        plan_patch(capture, spec, loaded.adapter.n_layers, prompts=todo).patched_runs
        if missing
        else 0
    )
    with (
        StageProgress("patch", total=todo_runs, enabled=progress, unit="patched runs") as bar,
        ChunkWriter(results) as writer,
    ):
        for c in missing:
            rows = results.chunk_slice(c)
            arrays = _patch_chunk(ctx, engine, loaded, rows, lambda n: bar.advance(items=n))
            writer.submit(c, arrays)
    results.finalize()
    done = engine.stats
    return PatchSummary(
        capture.n_prompts,
        len(missing),
        results.n_chunks - len(missing),
        todo_runs,  # done by this call (a resumed run counts only what it computed)
        done["forwards"],
        time.perf_counter() - t0,
        str(results_url),
        plan,
        computed_prompts=int(todo.sum()),
        noop_runs=done["noops"],
    )


def _patch_chunk(
    ctx: _Context, engine: PatchEngine, loaded: LoadedModel, rows: slice, advance
) -> dict[str, np.ndarray]:
    """All results arrays for the prompts in ``rows`` (one results-store chunk)."""
    cap, spec = ctx.capture, ctx.spec
    layout = cap.layout
    n = rows.stop - rows.start
    per_run = {
        run: {
            "tokens": cap.zarr_array(f"{run}_tokens")[rows],
            "length": cap.zarr_array(f"{run}_length")[rows],
        }
        for run in layout.runs
    }
    for run in layout.runs:
        per_run[run]["role_pos"] = (
            cap.zarr_array(f"{run}_role_pos")[rows] if layout.roles else np.zeros((n, 0), np.int32)
        )
    answer = cap.zarr_array("answer_id")[rows].astype(np.int32)
    wrong = cap.zarr_array("wrong_id")[rows].astype(np.int32)
    logits = {
        run: cap.zarr_array(f"{run}_logits")[rows].astype(np.float32)
        for run in ("clean", "corrupted")
    }
    ids = [str(x) for x in cap.zarr_array("prompt")[rows]]
    L, X = len(ctx.layers), len(ctx.positions)
    out: dict[str, np.ndarray] = {}
    for run in ("clean", "corrupted"):
        base = score(
            mx.array(logits[run]),
            mx.array(answer),
            mx.array(wrong),
            mx.array(logits["clean"]),
            spec.metrics,
        )
        for m_ix, m in enumerate(spec.metrics):
            out[f"{run}_{m}"] = np.array(base[:, m_ix])
        out[f"{run}_length"] = per_run[run]["length"].astype(np.int32)
    out["pos_label"] = _pos_labels(
        ctx, loaded, per_run["corrupted"] if "corrupted" in per_run else per_run["clean"]
    )
    role_ix = {r: i for i, r in enumerate(layout.roles)}
    layer_ix = {layer: i for i, layer in enumerate(layout.layers)}
    acts_cache: dict = {}

    def source_acts(run: str, kind: SiteKind, layer: int) -> np.ndarray:
        key = (run, kind)
        if key not in acts_cache:  # (n, L_captured, P, ...) for this chunk, decoded once
            acts_cache[key] = decode_floats(
                cap.zarr_array(f"{run}_{kind}")[rows], cap.storage_dtype
            )
        return acts_cache[key][:, layer_ix[layer]]

    for d in spec.directions:
        src_run, base_run = d.source_run, d.base_run
        blocks = {
            "": (n, len(spec.sweep_kinds), L, X),
            "head_": (n, L, X, ctx.n_heads),
            "set_": (n, len(spec.patch_sets)),
        }
        for suffix, shape in blocks.items():
            if 0 not in shape[1:]:
                for m in spec.metrics:
                    out[f"{d}_{suffix}{m}"] = np.full(shape, np.nan, dtype=np.float32)
        base_tokens_all = per_run[base_run]["tokens"]
        base_len, src_len = per_run[base_run]["length"], per_run[src_run]["length"]
        buckets = defaultdict(list)
        for i in range(n):
            buckets[(int(base_len[i]), int(src_len[i]))].append(i)
        for (T, _), members in sorted(buckets.items()):
            idx = np.array(members)

            def pos_fn(run, idx=idx, T=T):
                role_pos = per_run[run]["role_pos"][idx]

                def resolve(p: Position) -> np.ndarray:
                    if p.is_role:
                        return role_pos[:, role_ix[p.role]].astype(np.int64)
                    return np.full(len(idx), p.index if p.index < T else -1, dtype=np.int64)

                return resolve

            base_pos, source_abs = pos_fn(base_run), pos_fn(src_run)  # absolute positions
            if layout.pos_dim == "pos":
                source_pos = source_abs
            else:  # role-only capture: the source arrays' position axis is the role axis

                def source_pos(p: Position, idx=idx) -> np.ndarray:
                    return np.full(len(idx), role_ix[p.role] if p.is_role else -1, dtype=np.int64)

            noise = None
            if ctx.noise is not None and base_run == "corrupted":
                noise = _noise(
                    ctx, loaded, [ids[i] for i in idx], per_run["clean"]["role_pos"][idx], role_ix
                )
            same = shared_prefix(  # noise runs from the span's first token on, in either run
                per_run[base_run]["tokens"][idx],
                per_run[src_run]["tokens"][idx],
                base_len[idx],
                src_len[idx],
                None
                if ctx.noise is None
                else per_run["clean"]["role_pos"][idx, role_ix[f"{ctx.noise.span}_first"]],
            )

            def noop(p: Position, base_pos=base_pos, source_abs=source_abs, same=same):
                b = base_pos(p)
                return (b >= 0) & (b == source_abs(p)) & (b < same)

            batch = PatchBatch(
                base_tokens=base_tokens_all[idx, :T].astype(np.int32),
                source=lambda kind, layer, idx=idx, src_run=src_run: source_acts(
                    src_run, kind, layer
                )[idx],
                base_pos=base_pos,
                source_pos=source_pos,
                answer=answer[idx],
                wrong=wrong[idx],
                clean_logits=logits["clean"][idx],
                noise=noise,
                noop=noop,
                baseline=np.stack([out[f"{base_run}_{m}"][idx] for m in spec.metrics], axis=1),
            )
            values = engine.run(batch, ctx.items, on_progress=advance).values  # (n_items, B, M)
            for item_ix, (suffix, where) in enumerate(ctx.targets):
                for m_ix, m in enumerate(spec.metrics):
                    out[f"{d}_{suffix}{m}"][(idx, *where)] = values[item_ix, :, m_ix]
    return out


def _noise(
    ctx: _Context, loaded: LoadedModel, ids: list[str], clean_role_pos: np.ndarray, role_ix: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regenerate the capture's noise for these prompts: flat rows, positions (n,), values (n, D).

    The span's tokens are ``{span}_first..{span}_last`` of the clean prompt, as in capture.
    """
    span = ctx.noise.span
    first, last = (
        clean_role_pos[:, role_ix[f"{span}_first"]],
        clean_role_pos[:, role_ix[f"{span}_last"]],
    )
    rows, positions, values = [], [], []
    for b, pid in enumerate(ids):
        if first[b] < 0:
            continue  # this prompt has no such span: no noise, as in capture
        pos = np.arange(first[b], last[b] + 1)
        rows.append(np.full(pos.shape, b))
        positions.append(pos)
        values.append(ctx.noise.noise_for(pid, pos, loaded.adapter.d_model, ctx.noise_std))
    if not rows:
        return None
    return np.concatenate(rows), np.concatenate(positions), np.concatenate(values)


def _pos_labels(ctx: _Context, loaded: LoadedModel, run: dict) -> np.ndarray:
    """The token text at each swept position of each prompt ("" where absent)."""
    tokens, role_pos = run["tokens"], run["role_pos"]
    roles = {r: i for i, r in enumerate(ctx.capture.layout.roles)}
    labels = np.full((tokens.shape[0], len(ctx.positions)), "", dtype=object)
    decode = loaded.tokenizer.decode
    for x, pos in enumerate(ctx.positions):
        p = Position.parse(pos)
        col = role_pos[:, roles[p.role]] if p.is_role else np.full(tokens.shape[0], p.index)
        for i, c in enumerate(col):
            if 0 <= c < tokens.shape[1] and tokens[i, c] >= 0:
                labels[i, x] = decode([int(tokens[i, c])])
    return labels.astype(str)
