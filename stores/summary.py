"""``inspect``-style summaries of a store: arrays, chunking, bytes on disk, completeness, identity."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import zarr

from .dtypes import DTYPE_ATTR
from .errors import StoreError
from .locations import open_zarr_store
from .zarr_base import MARKER

__all__ = ["ArraySummary", "StoreSummary", "summarize"]


@dataclass(frozen=True)
class ArraySummary:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str  # logical dtype: "bfloat16" for uint16-coded bfloat16
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    codecs: tuple[str, ...]
    logical_bytes: int
    stored_bytes: int

    @property
    def compression_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else float("nan")


@dataclass(frozen=True)
class StoreSummary:
    """What :func:`summarize` reports. ``digests`` holds the identity part digests (capture
    stores) or the source capture digest (results stores)."""

    url: str
    kind: str
    format_version: int
    storage_dtype: str
    digests: dict[str, str]
    arrays: tuple[ArraySummary, ...]
    chunks_written: int
    chunks_total: int
    created: str
    package_version: str

    @property
    def logical_bytes(self) -> int:
        return sum(a.logical_bytes for a in self.arrays)

    @property
    def stored_bytes(self) -> int:
        return sum(a.stored_bytes for a in self.arrays)

    @property
    def compression_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else float("nan")

    @property
    def is_complete(self) -> bool:
        return self.chunks_written == self.chunks_total

    def to_dict(self) -> dict:
        return asdict(self) | {
            "logical_bytes": self.logical_bytes,
            "stored_bytes": self.stored_bytes,
            "compression_ratio": self.compression_ratio,
        }

    def render(self) -> str:
        """A plain-text report (what ``patchsweep inspect`` prints)."""
        lines = [
            f"{self.kind} store {self.url}",
            f"  format {self.format_version}, storage dtype {self.storage_dtype}, created {self.created}, patchsweep {self.package_version}",
            f"  complete: {self.chunks_written}/{self.chunks_total} prompt chunks"
            + ("" if self.is_complete else "  (INCOMPLETE)"),
            f"  size: {_size(self.stored_bytes)} on disk, {_size(self.logical_bytes)} logical, ratio {self.compression_ratio:.2f}x",
        ]
        lines += [f"  {part} digest: {d}" for part, d in self.digests.items()]
        head = ("array", "dims", "shape", "dtype", "chunks", "shards", "codecs", "stored", "ratio")
        rows = [head] + [
            (
                a.name,
                ",".join(a.dims),
                "x".join(map(str, a.shape)),
                a.dtype,
                "x".join(map(str, a.chunks)),
                "x".join(map(str, a.shards)) if a.shards else "-",
                "+".join(a.codecs) or "-",
                _size(a.stored_bytes),
                f"{a.compression_ratio:.2f}",
            )
            for a in self.arrays
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __rich__(self):
        from rich.text import Text

        return Text(self.render())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _codec_names(arr) -> tuple[str, ...]:
    names = []
    for c in arr.compressors:
        d = c.to_dict()
        conf = d.get("configuration", {})
        extra = conf.get("shuffle") if d["name"] == "blosc" else None
        names.append(f"{d['name']}({extra})" if extra else d["name"])
    return tuple(names)


def summarize(url: str | os.PathLike, *, storage_options: Mapping | None = None) -> StoreSummary:
    """Summarise the store at ``url`` without modifying it (opened read-only, incomplete allowed)."""
    zstore = open_zarr_store(url, read_only=True, storage_options=storage_options)
    group = zarr.open_group(zstore, mode="r")
    meta = dict(group.attrs.get("patchsweep", {}))
    if meta.get("kind") not in ("capture", "results"):
        raise StoreError(
            f"{os.fspath(url)!r} is not a patchsweep store (kind {meta.get('kind')!r}); expected 'capture' or 'results'."
        )
    arrays = []
    for name in sorted(group.array_keys()):
        arr = group[name]
        tag = arr.attrs.get(DTYPE_ATTR)
        arrays.append(
            ArraySummary(
                name=name,
                dims=tuple(arr.metadata.dimension_names or ()),
                shape=tuple(arr.shape),
                dtype=tag if tag == "bfloat16" else str(arr.dtype),
                chunks=tuple(arr.chunks),
                shards=tuple(arr.shards) if arr.shards else None,
                codecs=_codec_names(arr),
                logical_bytes=int(arr.nbytes),
                stored_bytes=int(arr.nbytes_stored()),
            )
        )
    marker = group[MARKER][:]
    if meta["kind"] == "capture":
        digests = {
            part: value.get("digest", "") for part, value in meta.get("identity", {}).items()
        }
    else:
        digests = {"source capture": meta.get("source", {}).get("capture_digest", "")}
    return StoreSummary(
        url=os.fspath(url),
        kind=meta["kind"],
        format_version=int(meta.get("format_version", 0)),
        storage_dtype=str(meta.get("storage_dtype", "float32")),
        digests=digests,
        arrays=tuple(arrays),
        chunks_written=int(np.count_nonzero(marker == 1)),
        chunks_total=int(marker.size),
        created=str(meta.get("created", "")),
        package_version=str(meta.get("package_version", "")),
    )
