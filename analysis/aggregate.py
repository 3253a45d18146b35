"""The out-of-core engine: per-prompt recovery -> per-component statistics table, on dask.

Two passes, each with bounded memory whatever the number of prompts:

1. *Stage*: every selected metric array is read lazily, one prompt chunk at a time (the store's
   own chunks), turned into encoded recovery (:mod:`.recovery`), split into component blocks
   and written to a scratch Zarr array in the output folder with chunks
   ``(prompt chunk, component block)``. This is the out-of-core transpose: a later read of
   one component block touches only its own small chunks.
2. *Reduce*: each component block -- all prompts x a slice of components, sized by
   ``config.block_mb`` -- is read and reduced to every statistic at once
   (:func:`.blocks.block_statistics`): counts, mean, median, spread, intervals, test.

Memory is about ``workers x (one prompt chunk of one array + one component block)``. The
same graph runs on the local threaded scheduler or on a ``dask.distributed`` cluster (the
scratch folder must then be reachable by the workers); results are identical because each
block's computation is deterministic.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import zarr

from patchsweep.stores.errors import ConfigError, StoreMismatchError
from patchsweep.stores.metrics import Metric

from .blocks import FIELDS, block_statistics
from .config import AnalysisConfig
from .multitest import correct
from .recovery import encode, gap_rule, recovery
from .store import MetricArray, ResultsView

__all__ = [
    "Source",
    "Groups",
    "sources_for",
    "paired_sources",
    "prompt_groups",
    "compute_table",
    "apply_correction",
    "EngineResult",
]


@dataclass(frozen=True)
class Source:
    """One array's encoded per-prompt values, lazily: ``data`` (n_prompts, n_components)."""

    array: MetricArray
    data: da.Array
    components: pd.DataFrame
    n_excluded_prompts: int
    gap_threshold: float


@dataclass(frozen=True)
class Groups:
    """Prompt groups from ``group_by``: a code per prompt and one row of column values per code."""

    codes: np.ndarray  # (prompt,) int64
    levels: pd.DataFrame  # (n_groups, len(group_by))


def _selected(view: ResultsView, config: AnalysisConfig) -> list[MetricArray]:
    chosen = [
        m
        for m in view.arrays
        if (not config.metrics or m.metric in config.metrics)
        and (not config.directions or m.direction in config.directions)
        and m.sweep in config.sweeps
    ]
    if not chosen:
        have = sorted({f"{m.direction}/{m.metric}/{m.sweep}" for m in view.arrays})
        raise ConfigError(
            f"Nothing to analyse: metrics={list(config.metrics) or 'all'}, directions="
            f"{list(config.directions) or 'all'}, sweeps={list(config.sweeps)} match no array. "
            f"The store has: {have}."
        )
    return chosen


def _flat(view: ResultsView, m: MetricArray) -> da.Array:
    x = view.lazy(m.name)  # (prompt, ...) float32
    return x.reshape(x.shape[0], -1)  # (prompt, components); trailing dims are whole chunks


def _encoded(
    view: ResultsView, m: MetricArray, config: AnalysisConfig
) -> tuple[da.Array, np.ndarray, float]:
    clean, corrupted = view.baseline("clean", m.metric), view.baseline("corrupted", m.metric)
    rule = gap_rule(clean, corrupted, m.metric, config.min_gap, config.rel_gap)
    # excluded prompts are masked by encode(); give them a harmless denominator meanwhile
    corrupted = np.where(rule.excluded & ~np.isfinite(corrupted), 0.0, corrupted)
    clean = np.where(rule.excluded, corrupted + 1.0, clean)
    if Metric.parse(m.metric).is_distance:
        corrupted = np.where(rule.excluded, 1.0, corrupted)
    patched = _flat(view, m)
    rows = patched.chunks[0]
    col = lambda v: da.from_array(v[:, None], chunks=(rows, 1))  # noqa: E731
    rec = recovery(patched.astype(np.float64), col(clean), col(corrupted), m.metric)
    return encode(patched, rec, col(rule.excluded)), rule.excluded, rule.threshold


def sources_for(view: ResultsView, config: AnalysisConfig) -> list[Source]:
    """The lazily encoded recovery of every array the config selects."""
    out = []
    for m in _selected(view, config):
        data, excluded, threshold = _encoded(view, m, config)
        out.append(Source(m, data, view.components(m), int(excluded.sum()), threshold))
    return out


def paired_sources(
    view_a: ResultsView, view_b: ResultsView, config: AnalysisConfig
) -> list[Source]:
    """Per-prompt differences ``recovery_a - recovery_b`` over the same prompts and components.

    A prompt excluded in either store is excluded from the difference; a position missing in
    either is not applicable. Prompts are matched by id (store b is reordered to a's order).

    Raises
    ------
    StoreMismatchError
        The stores hold different prompt sets or different components for an array.
    """
    a_ids, b_ids = view_a.prompts, view_b.prompts
    if a_ids.size != b_ids.size or set(a_ids) != set(b_ids) or len(set(a_ids)) != a_ids.size:
        only_a = sorted(set(a_ids) - set(b_ids))[:5]
        only_b = sorted(set(b_ids) - set(a_ids))[:5]
        raise StoreMismatchError(
            f"Paired comparison needs the same prompts in both stores: {a_ids.size} vs {b_ids.size} "
            f"prompts; only in a: {only_a}; only in b: {only_b}."
        )
    order = pd.Index(b_ids).get_indexer(a_ids)
    identity = bool(np.all(order == np.arange(order.size)))
    b_arrays = {m.name: m for m in view_b.arrays}
    out = []
    for m in _selected(view_a, config):
        if m.name not in b_arrays:
            raise StoreMismatchError(f"Store b has no array {m.name!r} to compare with store a's.")
        comps_a, comps_b = view_a.components(m), view_b.components(m)
        if not comps_a.equals(comps_b):
            raise StoreMismatchError(
                f"Array {m.name!r} sweeps different components in the two stores "
                f"({len(comps_a)} vs {len(comps_b)}; sites/layers/positions/heads must match)."
            )
        ea, xa, _ = _encoded(view_a, m, config)
        eb, xb, _ = _encoded(view_b, m, config)
        if not identity:
            eb = eb[order].rechunk(ea.chunks)
            xb = xb[order]
        eb = eb.rechunk(ea.chunks)
        excluded = np.isposinf(ea) | np.isposinf(eb)
        missing = np.isnan(ea) | np.isnan(eb)
        diff = da.where(missing, np.nan, da.where(excluded, np.inf, ea - eb)).astype(np.float32)
        out.append(Source(m, diff, comps_a, int((xa | xb).sum()), float("nan")))
    return out


def prompt_groups(view: ResultsView, config: AnalysisConfig) -> Groups:
    """Group codes of the prompts by the ``group_by`` dataset columns."""
    if not config.group_by:
        return Groups(np.zeros(view.n_prompts, dtype=np.int64), pd.DataFrame(index=[0]))
    cols = list(config.group_by)
    frame = pd.DataFrame({c: view.meta(c) for c in cols})
    codes = frame.groupby(cols, sort=True).ngroup().to_numpy(dtype=np.int64)  # sorted level order
    levels = frame.drop_duplicates().sort_values(cols).reset_index(drop=True)
    return Groups(codes, levels)


def _block_columns(n_prompts: int, n_components: int, config: AnalysisConfig) -> int:
    # ~10 float64 working copies of a block (values, sorted, ranks, argsort, ...) per statistic
    per_column = max(n_prompts, 1) * 8 * 10
    return int(max(1, min(n_components, config.block_mb * 2**20 // per_column)))


def _scheduler(client):
    if client is None:
        return "threads"
    return client


@dataclass(frozen=True)
class EngineResult:
    """The corrected table and the per-prompt values of its top components (long format)."""

    table: pd.DataFrame
    top_values: pd.DataFrame  # columns: component, recovery


def compute_table(
    sources: list[Source],
    groups: Groups,
    config: AnalysisConfig,
    scratch: Path,
    client=None,
    top_k: int = 8,
) -> EngineResult:
    """Run both passes, correct, and return the tidy per-component table.

    Parameters
    ----------
    sources : list of Source
    groups : Groups
    config : AnalysisConfig
    scratch : Path
        Folder for the scratch Zarr array; created and removed here.
    client : dask.distributed.Client, optional
        Run on this cluster instead of the local threaded scheduler.
    top_k : int
        How many top components (smallest q, then largest |mean|) to return per-prompt values for.
    """
    data = da.concatenate([s.data for s in sources], axis=1)  # (prompt, components)
    P, C = data.shape
    rows = max(data.chunks[0])
    cb = _block_columns(P, C, config)
    staged = data.rechunk((rows, cb))  # splits each prompt chunk into component blocks
    path = Path(scratch) / "recovery.zarr"
    shutil.rmtree(path, ignore_errors=True)
    G = len(groups.levels)
    try:
        target = zarr.create_array(
            store=str(path),
            shape=(P, C),
            chunks=(rows, cb),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=("prompt", "component"),
            compressors=None,
        )
        dask.compute(
            da.store(staged, target, lock=False, compute=False), scheduler=_scheduler(client)
        )
        blocks = da.from_zarr(
            zarr.open_array(str(path), mode="r"), chunks=(P, cb)
        )  # (prompt, block)
        stats = da.map_blocks(
            block_statistics,
            blocks,
            groups.codes,
            G,
            config,
            dtype=np.float64,
            drop_axis=0,
            new_axis=[0, 1],
            chunks=((G,), (len(FIELDS),), blocks.chunks[1]),
        )
        (values,) = dask.compute(stats, scheduler=_scheduler(client))  # (G, fields, C)
        table = apply_correction(_table(sources, groups, values), config)
        top = _top_values(table, zarr.open_array(str(path), mode="r"), groups, C, top_k)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return EngineResult(table, top)


def _table(sources: list[Source], groups: Groups, values: np.ndarray) -> pd.DataFrame:
    comps = pd.concat([s.components for s in sources], ignore_index=True)
    frames = []
    for g in range(len(groups.levels)):
        frame = comps.copy()
        for col in groups.levels.columns:
            frame[col] = groups.levels.iloc[g][col]
        for k, name in enumerate(FIELDS):
            frame[name] = values[g, k]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    for name in ("n", "n_excluded", "n_not_applicable"):
        table[name] = table[name].astype(np.int64)
    return table


def _top_values(
    table: pd.DataFrame, scratch: zarr.Array, groups: Groups, C: int, k: int
) -> pd.DataFrame:
    from .figures import component_label

    ranked = table.assign(_abs=table["mean"].abs()).sort_values(
        ["q", "_abs"], ascending=[True, False], na_position="last"
    )
    ranked = ranked[ranked["n"] > 0].head(k)
    frames = []
    for idx, row in ranked.iterrows():
        g, col = divmod(int(idx), C)
        x = np.asarray(scratch[:, col], dtype=np.float64)  # one component: (prompt,)
        keep = np.isfinite(x) & ((groups.codes == g) if len(groups.levels) > 1 else True)
        label = component_label(row)
        if len(groups.levels) > 1:
            label += " [" + ",".join(str(row[c]) for c in groups.levels.columns) + "]"
        label = f"{row['direction']}/{row['metric']}: {label}"
        frames.append(pd.DataFrame({"component": label, "recovery": x[keep]}))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"component": [], "recovery": []})
    )


def apply_correction(table: pd.DataFrame, config: AnalysisConfig) -> pd.DataFrame:
    """Add ``q`` (adjusted p) and ``significant`` columns, correcting within ``config.family``."""
    family = None
    if config.family:
        family = table[list(config.family)].astype(str).agg("|".join, axis=1).to_numpy()
    res = correct(table["p"].to_numpy(), config.correction, config.alpha, family)
    out = table.copy()
    out["q"] = res.adjusted
    out["significant"] = res.significant
    return out
