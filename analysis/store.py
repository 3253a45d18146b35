"""Read-only view of a results store (DEVELOPERS.md, "Contract: the results store").

Opens the Zarr v3 group with plain zarr in read-only mode (the analysis never writes into the
store), lists the metric arrays it holds, and exposes each as a lazy dask array chunked along
the prompt axis by the store's own prompt chunks (its shards, when sharded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import zarr
from zarr.storage import FsspecStore, LocalStore

from patchsweep.stores.errors import StoreError, StoreIncompleteError, StoreNotFoundError
from patchsweep.stores.metrics import Metric
from patchsweep.stores.sites import Direction

__all__ = ["MetricArray", "ResultsView", "open_results"]


@dataclass(frozen=True)
class MetricArray:
    """One ``{direction}_[head_|set_]{metric}`` array of the store."""

    name: str
    direction: str
    metric: str
    sweep: str  # "site", "head" or "set"


def _parse_array_name(name: str) -> MetricArray | None:
    direction, sep, rest = name.partition("_")
    if not sep or direction not in {d.value for d in Direction}:
        return None
    sweep = "site"
    for prefix, kind in (("head_", "head"), ("set_", "set")):
        if rest.startswith(prefix):
            sweep, rest = kind, rest[len(prefix) :]
    if rest not in {m.value for m in Metric}:
        return None
    return MetricArray(name, direction, rest, sweep)


def _strings(a: zarr.Array) -> np.ndarray:
    values = a[...]
    return (
        np.array(values.tolist(), dtype=str) if values.size else np.empty(values.shape, dtype=str)
    )


class ResultsView:
    """A results store opened read-only. Use :func:`open_results`."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self.group = group
        self.attrs = dict(group.attrs.get("patchsweep", {}))
        names = set(group.array_keys())
        self.names = names
        self.arrays = sorted(
            (m for m in map(_parse_array_name, names) if m is not None),
            key=lambda m: (m.direction, m.metric, m.sweep),
        )
        self.prompts = _strings(group["prompt"])

        def ints(key: str) -> np.ndarray:
            return (
                np.asarray(group[key][...], dtype=np.int64)
                if key in names
                else np.array([], dtype=np.int64)
            )

        def strs(key: str) -> np.ndarray:
            return _strings(group[key]) if key in names else np.array([], dtype=str)

        self.layers, self.heads = ints("layer"), ints("head")
        self.sites, self.positions, self.patchsets = strs("site"), strs("pos"), strs("patchset")

    @property
    def n_prompts(self) -> int:
        return int(self.prompts.size)

    def identity(self) -> dict:
        """What identifies the store: its ``patchsweep`` attributes minus bulky parts."""
        keep = (
            "kind",
            "format_version",
            "source",
            "metrics",
            "directions",
            "package_version",
            "created",
        )
        return {k: self.attrs[k] for k in keep if k in self.attrs}

    def require_complete(self) -> None:
        if "chunk_written" not in self.names:
            return
        written = np.asarray(self.group["chunk_written"][...])
        missing = np.flatnonzero(written == 0)
        if missing.size:
            raise StoreIncompleteError(
                f"Results store {self.url!r} is incomplete: prompt chunks {missing[:10].tolist()} "
                f"({missing.size} of {written.size}) are not written. Finish the patch stage first."
            )

    def baseline(self, run: str, metric: str) -> np.ndarray:
        """``clean_{metric}`` or ``corrupted_{metric}``, shape (prompt,), float64."""
        name = f"{run}_{metric}"
        if name not in self.names:
            if run == "clean" and Metric.parse(metric).is_distance:
                return np.zeros(self.n_prompts)  # distance to the clean run is 0 by definition
            raise StoreError(
                f"Results store {self.url!r} has no baseline array {name!r}; cannot normalise {metric}."
            )
        return np.asarray(self.group[name][...], dtype=np.float64)

    def meta(self, column: str) -> np.ndarray:
        name = f"meta_{column}"
        if name not in self.names:
            have = sorted(n.removeprefix("meta_") for n in self.names if n.startswith("meta_"))
            raise StoreError(
                f"Results store has no dataset column {column!r}. Expected one of: {have}."
            )
        return _strings(self.group[name])

    def lengths(self) -> np.ndarray | None:
        return (
            np.asarray(self.group["corrupted_length"][...])
            if "corrupted_length" in self.names
            else None
        )

    def position_labels(self, max_prompts: int = 512) -> list[str]:
        """Heatmap tick label per ``pos``: the position plus its most common token text."""
        labels = list(self.positions)
        if "pos_label" not in self.names or not labels:
            return labels
        tokens = _strings(self.group["pos_label"])[:max_prompts] if self.n_prompts else None
        if tokens is None or tokens.size == 0:
            return labels
        out = []
        for j, pos in enumerate(labels):
            col = pd.Series(tokens[:, j])
            col = col[col != ""]
            if not pos.isdigit() or col.empty:
                out.append(pos)
                continue
            top = col.value_counts()
            text = top.index[0].replace("\n", "\\n").strip() or repr(top.index[0])
            share = "" if top.iloc[0] == col.size else "*"  # * = token differs across prompts
            out.append(f"{pos} {text[:12]}{share}")
        return out

    def lazy(self, name: str) -> da.Array:
        """The array as dask, chunked by prompt chunks and whole along every other dim."""
        arr = self.group[name]
        rows = (arr.shards or arr.chunks)[0]
        return da.from_zarr(arr, chunks=(rows, *arr.shape[1:]))

    def components(self, m: MetricArray) -> pd.DataFrame:
        """One row per component of array ``m``, in the order of its flattened trailing dims."""
        if m.sweep == "site":
            s, layer, pos = np.meshgrid(self.sites, self.layers, self.positions, indexing="ij")
            df = pd.DataFrame({"site": s.ravel(), "layer": layer.ravel(), "pos": pos.ravel()})
            df["head"] = pd.NA
            df["patchset"] = None
        elif m.sweep == "head":
            layer, pos, head = np.meshgrid(self.layers, self.positions, self.heads, indexing="ij")
            df = pd.DataFrame(
                {"site": "head", "layer": layer.ravel(), "pos": pos.ravel(), "head": head.ravel()}
            )
            df["patchset"] = None
        else:
            df = pd.DataFrame(
                {
                    "site": "patchset",
                    "layer": pd.NA,
                    "pos": None,
                    "head": pd.NA,
                    "patchset": self.patchsets,
                }
            )
        df.insert(0, "sweep", m.sweep)
        df.insert(0, "metric", m.metric)
        df.insert(0, "direction", m.direction)
        df["layer"] = df["layer"].astype("Int64")
        df["head"] = df["head"].astype("Int64")
        for col in ("direction", "metric", "sweep", "site", "pos", "patchset"):
            df[col] = df[col].astype("string")  # missing = <NA>, stable through Parquet
        return df


def open_results(url: str | os.PathLike, storage_options: dict | None = None) -> ResultsView:
    """Open a results store read-only (a local path or an fsspec URL).

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url``.
    StoreError
        ``url`` holds a Zarr group that is not a patchsweep results store.
    """
    text = os.fspath(url)
    if "://" in text and not text.startswith("file://"):
        store = FsspecStore.from_url(text, read_only=True, storage_options=storage_options or {})
    else:
        path = Path(text.removeprefix("file://"))
        if not (path / "zarr.json").exists():
            raise StoreNotFoundError(
                f"No Zarr store at {text!r} (no zarr.json). Expected a patchsweep results store."
            )
        store = LocalStore(path, read_only=True)
    try:
        group = zarr.open_group(store=store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"No Zarr group at {text!r}: {e}") from None
    kind = dict(group.attrs.get("patchsweep", {})).get("kind")
    if kind != "results":
        raise StoreError(
            f"{text!r} is not a results store: its patchsweep kind is {kind!r}, expected 'results'."
        )
    return ResultsView(text, group)
