"""What the capture and results stores share: a chunked, resumable Zarr v3 group.

A store is one Zarr v3 group whose per-prompt arrays are cut along the prompt axis into
*prompt chunks* of ``chunk_prompts`` rows. Every per-prompt array's outer chunk (its shard,
when sharded) is exactly one prompt chunk, so writing chunk ``c`` writes one object per array,
and zarr's local store writes each object atomically (a ``*.partial`` file renamed into
place). The ``chunk_written`` array (one element per zarr chunk, so each marker write is
atomic too) records which prompt chunks are complete; a marker is set only after every
array's rows of its chunk are written (and, on local disk, fsynced). Resuming rewrites every
chunk without a marker, whatever its data files hold, so a store killed at any moment ends
identical to an uninterrupted run. Arrays are created at full size up front, never grown.

Storage dtypes: ``float32``, ``float16`` and ``bfloat16``. zarr-python has no bfloat16
(zarr-developers/zarr-python#2656), so bfloat16 is stored as ``uint16`` bit patterns with the
array attribute ``"patchsweep_dtype": "bfloat16"``; readers here decode to float32. float16
overflow raises :class:`Float16OverflowError` instead of saturating to inf.

:class:`ChunkedStore` is the generic engine; :mod:`.activations` and :mod:`.results` only
declare their arrays (:class:`ArraySpec`) and attributes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from .errors import (
    ConfigError,
    Float16OverflowError,
    ReadOnlyStoreError,
    StoreError,
    StoreIncompleteError,
    StoreNotFoundError,
)

__all__ = [
    "FORMAT_VERSION",
    "ArraySpec",
    "ChunkedStore",
    "ChunkWriter",
    "StorageDType",
    "Codec",
    "bfloat16_to_float32",
    "float32_to_bfloat16",
    "encode_floats",
    "open_zarr_store",
    "package_version",
    "refuse_foreign",
    "remove_partials",
]

FORMAT_VERSION = 1
MARKER = "chunk_written"
DTYPE_ATTR = "patchsweep_dtype"
FLOAT16_MAX = 65504.0


class StorageDType(StrEnum):
    """How float activations are stored on disk."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    @property
    def numpy(self) -> np.dtype:
        """The dtype zarr stores (``uint16`` bit patterns for bfloat16)."""
        return np.dtype(
            {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}[self.value]
        )

    @property
    def fill_value(self) -> Any:
        return 0x7FC0 if self is StorageDType.BFLOAT16 else np.nan

    @classmethod
    def parse(cls, text: str) -> StorageDType:
        try:
            return cls(str(text).strip())
        except ValueError:
            raise ConfigError(
                f"Unknown storage dtype {text!r}. Expected one of: float32, float16, bfloat16."
            ) from None


class Codec(StrEnum):
    """Compression of the inner chunks of float arrays (chosen by ``benchmarks/bench_store.py``)."""

    NONE = "none"
    ZSTD = "zstd"  # zstd level 1
    BLOSC_SHUFFLE = "blosc-shuffle"  # blosc zstd level 1, byte shuffle, 1 MiB blocks
    BLOSC_BITSHUFFLE = "blosc-bitshuffle"  # blosc zstd level 1, bit shuffle, 1 MiB blocks

    def compressors(self, itemsize: int) -> tuple:
        if self is Codec.NONE:
            return ()
        if self is Codec.ZSTD:
            return (zarr.codecs.ZstdCodec(level=1),)
        shuffle = "shuffle" if self is Codec.BLOSC_SHUFFLE else "bitshuffle"
        return (
            zarr.codecs.BloscCodec(
                cname="zstd", clevel=1, shuffle=shuffle, typesize=itemsize, blocksize=1 << 20
            ),
        )

    @classmethod
    def parse(cls, text: str) -> Codec:
        try:
            return cls(str(text).strip())
        except ValueError:
            valid = ", ".join(c.value for c in cls)
            raise ConfigError(f"Unknown codec {text!r}. Expected one of: {valid}.") from None


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (``uint16``), rounding to nearest, ties to even.

    NaNs stay NaN (quiet bit set, sign kept); ±inf stay ±inf; values past bfloat16's largest
    finite value round to inf, as IEEE rounding does.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return out


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (``uint16``) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_floats(
    x: np.ndarray, dtype: StorageDType, *, what: str = "array", first_row: int = 0
) -> np.ndarray:
    """Convert float activations to their storage form.

    Raises :class:`Float16OverflowError` if float16 storage would turn a finite value into inf
    (|x| beyond 65504 after rounding); the message names the array and the first bad prompt.
    """
    x = np.asarray(x)
    if dtype is StorageDType.BFLOAT16:
        return float32_to_bfloat16(x)
    if dtype is StorageDType.FLOAT32:
        return x.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        y = x.astype(np.float16)
    bad = np.isinf(y) & np.isfinite(x)
    if bad.any():
        row = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1))) if bad.ndim else 0
        peak = float(np.max(np.abs(x[np.isfinite(x)])))
        raise Float16OverflowError(
            f"{what} has values up to {peak:.6g} (first at prompt {first_row + row}), beyond float16's "
            f"±{FLOAT16_MAX:.0f}; they would be stored as inf. Use storage dtype 'bfloat16' or 'float32'."
        )
    return y


def decode_floats(raw: np.ndarray, dtype: StorageDType | None) -> np.ndarray:
    """Storage form -> float32 (bfloat16 decoded); non-float arrays pass through."""
    if dtype is StorageDType.BFLOAT16:
        return bfloat16_to_float32(raw)
    if dtype is not None:
        return np.asarray(raw, dtype=np.float32)
    return raw


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("patchsweep")
    except PackageNotFoundError:
        return "unknown"


def refuse_foreign(url) -> None:
    """Refuse to create a store over a non-empty folder that is not a half-made store."""
    path = _local_path(url)
    if path is None or not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"{str(path)!r} exists and is a file; expected a folder for a Zarr store.")
    if any(path.iterdir()) and not (path / "zarr.json").exists():
        raise StoreError(
            f"{str(path)!r} is a non-empty folder that is not a Zarr store; refusing to overwrite it. "
            "Choose an empty or new path."
        )


def _is_url(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _local_path(url: str | os.PathLike) -> Path | None:
    url = os.fspath(url)
    if _is_url(url):
        return None
    return Path(url.removeprefix("file://"))


def open_zarr_store(
    url: str | os.PathLike, *, read_only: bool, storage_options: Mapping | None = None
):
    """A zarr store for a local path (default) or any fsspec URL zarr supports (``memory://``)."""
    path = _local_path(url)
    if path is not None:
        if read_only and not (path / "zarr.json").exists():
            raise StoreNotFoundError(
                f"No Zarr store at {str(path)!r} (no zarr.json). Expected a store made by patchsweep."
            )
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(
        os.fspath(url), read_only=read_only, storage_options=dict(storage_options or {})
    )


def remove_partials(url: str | os.PathLike) -> list[Path]:
    """Delete orphan ``*.partial`` files left by a killed writer (local stores only)."""
    path = _local_path(url)
    if path is None or not path.exists():
        return []
    removed = sorted(path.rglob("*.partial"))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store's schema.

    ``kind`` is ``"float"`` (stored in the store's storage dtype), ``"float32"``, an integer
    dtype name, or ``"str"``. Per-prompt arrays (first dim ``prompt``) are written chunk by
    chunk; the others (coordinates) are written once at creation from ``data``.
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str
    fill_value: Any = None
    data: Any = field(default=None, compare=False, repr=False)

    @property
    def per_prompt(self) -> bool:
        return self.data is None and self.dims[0] == "prompt"


def _inner_chunks(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> tuple[int, ...]:
    """One prompt per inner chunk, split along the second dim only when a prompt is too big."""
    inner = [1, *shape[1:]]
    rest = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
    if len(shape) > 2 and shape[1] > 1:
        fits = max(1, max_bytes // max(rest, 1))
        inner[1] = max(
            k for k in range(1, shape[1] + 1) if shape[1] % k == 0 and k <= fits
        )  # shards need divisors
    return tuple(inner)


class ChunkedStore:
    """Generic engine of a prompt-chunked Zarr v3 store; see the module docstring.

    Subclasses set ``KIND`` and implement ``_specs()`` (the schema, from ``self.layout``).
    Use the subclasses' ``create_or_resume`` / ``open``; do not call ``__init__`` directly.
    """

    KIND = ""
    INNER_CHUNK_MAX_BYTES = 32 << 20  # one-prompt reads stay in the tens of ms
    WRITE_THREADS = 4

    def __init__(
        self, url, zstore, group: zarr.Group, *, read_only: bool, durable: bool = True
    ) -> None:
        self.url = os.fspath(url)
        self._zstore = zstore
        self._group = group
        self.read_only = read_only
        self.durable = durable and _local_path(url) is not None
        self._pool: ThreadPoolExecutor | None = None
        self._arrays: dict[str, zarr.Array] = {}
        meta = dict(group.attrs.get("patchsweep", {}))
        if meta.get("kind") != self.KIND:
            raise StoreError(
                f"{self.url!r} is not a patchsweep {self.KIND} store (found kind {meta.get('kind')!r}); "
                f"expected a store made by {type(self).__name__}.create_or_resume."
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.url!r} has format_version {meta.get('format_version')!r}; this patchsweep reads {FORMAT_VERSION}."
            )
        self.attrs: dict[str, Any] = meta
        self.chunk_prompts: int = int(meta["chunk_prompts"])

    # -- schema hooks -------------------------------------------------------------------
    def _specs(self) -> list[ArraySpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def storage_dtype(self) -> StorageDType:
        return StorageDType.parse(self.attrs.get("storage_dtype", "float32"))

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def _create(
        cls,
        url,
        specs: Sequence[ArraySpec],
        root_attrs: dict,
        *,
        storage_dtype: StorageDType,
        codec: Codec,
        chunk_prompts: int,
        n_prompts: int,
        storage_options=None,
        durable: bool = True,
    ):
        path = _local_path(url)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        zstore = open_zarr_store(url, read_only=False, storage_options=storage_options)
        group = zarr.open_group(zstore, mode="w")
        for spec in specs:
            _create_array(
                group,
                spec,
                storage_dtype=storage_dtype,
                codec=codec,
                chunk_prompts=chunk_prompts,
                inner_max=cls.INNER_CHUNK_MAX_BYTES,
            )
        n_chunks = -(-n_prompts // chunk_prompts)
        group.create_array(
            MARKER,
            shape=(n_chunks,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            dimension_names=("chunk",),
            compressors=None,
            config={"write_empty_chunks": True},
        )
        group.attrs["patchsweep"] = root_attrs  # last: a group without it is a half-made store
        return cls(
            url, zstore, zarr.open_group(zstore, mode="r+"), read_only=False, durable=durable
        )

    @staticmethod
    def _existing(url, storage_options=None):
        """``(zstore, group, attrs)`` of an existing, fully created store, or None."""
        path = _local_path(url)
        if path is not None and not (path / "zarr.json").exists():
            return None
        zstore = open_zarr_store(url, read_only=False, storage_options=storage_options)
        try:
            group = zarr.open_group(zstore, mode="r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return None
        meta = group.attrs.get("patchsweep")
        if not meta:
            return None
        return zstore, group, dict(meta)

    @classmethod
    def _open(cls, url, *, mode: str, allow_incomplete: bool, storage_options=None):
        if mode not in ("r", "r+"):
            raise ConfigError(
                f"Store mode must be 'r' (read-only) or 'r+' (read-write), got {mode!r}."
            )
        read_only = mode == "r"
        zstore = open_zarr_store(url, read_only=read_only, storage_options=storage_options)
        try:
            group = zarr.open_group(zstore, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreNotFoundError(f"No Zarr store at {os.fspath(url)!r} ({e}).") from None
        store = cls(url, zstore, group, read_only=read_only)
        if not allow_incomplete:
            store.require_complete()
        return store

    # -- chunks and markers -------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return int(self.zarr_array("prompt").shape[0])

    @property
    def n_chunks(self) -> int:
        return int(self.zarr_array(MARKER).shape[0])

    def chunk_slice(self, c: int) -> slice:
        """The prompt rows of chunk ``c``."""
        if not (isinstance(c, int | np.integer) and 0 <= c < self.n_chunks):
            raise IndexError(
                f"Chunk index {c!r} out of range; the store has chunks 0..{self.n_chunks - 1}."
            )
        start = int(c) * self.chunk_prompts
        return slice(start, min(start + self.chunk_prompts, self.n_prompts))

    def written_chunks(self) -> np.ndarray:
        """Boolean per chunk: True once its marker is set."""
        return self.zarr_array(MARKER)[:] == 1

    def missing_chunks(self) -> list[int]:
        """Chunks without a completeness marker (whatever their data files hold)."""
        return [int(c) for c in np.flatnonzero(~self.written_chunks())]

    @property
    def is_complete(self) -> bool:
        return bool(self.written_chunks().all())

    def require_complete(self) -> None:
        missing = self.missing_chunks()
        if missing:
            first = self.chunk_slice(missing[0])
            raise StoreIncompleteError(
                f"Store {self.url!r} is incomplete: {len(missing)} of {self.n_chunks} prompt chunks are not "
                f"written (first missing: chunk {missing[0]}, prompts {first.start}..{first.stop - 1}). "
                "Resume the run that makes it, or open with allow_incomplete=True."
            )

    # -- writing ------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"Store {self.url!r} is open read-only (mode='r'); writes are refused. Open it with mode='r+' to write."
            )

    def per_prompt_specs(self) -> dict[str, ArraySpec]:
        return {s.name: s for s in self._specs() if s.per_prompt}

    def write_chunk(self, c: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every per-prompt array's rows of chunk ``c``, then its completeness marker.

        ``arrays`` maps each per-prompt array name to its rows ``chunk_slice(c)`` (shape
        ``(rows, *shape[1:])``); float arrays are given in float32 and converted to the
        storage dtype here. A chunk already marked is unmarked first, then rewritten.
        """
        self._check_writable()
        rows = self.chunk_slice(c)
        encoded = self._validate_chunk(rows, arrays)
        marker = self.zarr_array(MARKER)
        if marker[c] == 1:
            marker[c] = 0
        pool = self._executor()
        futures = [
            pool.submit(self._write_rows, name, rows, value) for name, value in encoded.items()
        ]
        for future in futures:
            future.result()
        if self.durable:
            self._fsync_chunk(c, encoded)
        marker[c] = 1
        if self.durable:
            self._fsync_chunk(c, {MARKER: None})

    def _write_rows(self, name: str, rows: slice, value: np.ndarray) -> None:
        self.zarr_array(name)[rows] = value

    def _validate_chunk(
        self, rows: slice, arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        specs = self.per_prompt_specs()
        missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
        if missing or extra:
            raise ConfigError(
                f"write_chunk got arrays {sorted(arrays)}; missing {missing}, unexpected {extra}. "
                f"Expected exactly: {sorted(specs)}."
            )
        n = rows.stop - rows.start
        out = {}
        for name, spec in specs.items():
            value = np.asarray(arrays[name])
            want = (n, *spec.shape[1:])
            if value.shape != want:
                raise ConfigError(
                    f"Array {name!r} for prompts {rows.start}..{rows.stop - 1} has shape {value.shape}; expected {want} {spec.dims}."
                )
            if spec.kind == "float":
                out[name] = encode_floats(
                    value, self.storage_dtype, what=f"Array {name!r}", first_row=rows.start
                )
            elif spec.kind == "str":
                out[name] = value.astype(str)
            else:
                target = np.dtype(spec.kind)
                if not np.can_cast(value.dtype, target, casting="same_kind"):
                    raise ConfigError(
                        f"Array {name!r} has dtype {value.dtype}; expected values castable to {target}."
                    )
                out[name] = value.astype(target, copy=False)
        return out

    def _fsync_chunk(self, c: int, names) -> None:
        root = _local_path(self.url)
        dirs = set()
        for name in names:
            arr = self.zarr_array(name)
            key = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
            path = root / name / key
            if path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(path.parent)
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.WRITE_THREADS, thread_name_prefix="patchsweep-write"
            )
        return self._pool

    def finalize(self) -> None:
        """Check every chunk is written, then consolidate the metadata (one read to open)."""
        self._check_writable()
        self.require_complete()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(self._zstore)
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------
    @property
    def array_names(self) -> list[str]:
        return sorted(self._group.array_keys())

    def zarr_array(self, name: str) -> zarr.Array:
        """The raw zarr array (bfloat16 arrays hold ``uint16`` bit patterns)."""
        if name not in self._arrays:
            if name not in self._group:
                raise KeyError(
                    f"No array {name!r} in store {self.url!r}. Arrays: {', '.join(self.array_names)}."
                )
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def _float_dtype(self, arr: zarr.Array) -> StorageDType | None:
        tag = arr.attrs.get(DTYPE_ATTR)
        return StorageDType.parse(tag) if tag else None

    def read_prompt(self, i: int, name: str) -> np.ndarray:
        """One prompt's rows of ``name`` (floats as float32, bfloat16 decoded); one inner-chunk read."""
        arr = self.zarr_array(name)
        if arr.metadata.dimension_names[0] != "prompt":
            raise KeyError(
                f"Array {name!r} has dims {arr.metadata.dimension_names}; read_prompt needs a per-prompt array."
            )
        if not (isinstance(i, int | np.integer) and 0 <= i < arr.shape[0]):
            raise IndexError(f"Prompt index {i!r} out of range 0..{arr.shape[0] - 1}.")
        return decode_floats(arr[int(i)], self._float_dtype(arr))

    def dask(self, name: str):
        """A lazy dask array of ``name``, one dask chunk per prompt chunk (bfloat16 -> float32)."""
        import dask.array as da

        arr = self.zarr_array(name)
        chunks = arr.shards or arr.chunks
        lazy = da.from_zarr(arr, chunks=chunks)
        dtype = self._float_dtype(arr)
        if dtype is StorageDType.BFLOAT16:
            lazy = lazy.map_blocks(bfloat16_to_float32, dtype=np.float32)
        return lazy

    def xarray(self):
        """The whole store as an ``xarray.Dataset`` (lazy, via ``xr.open_zarr``; bfloat16 decoded)."""
        import xarray as xr

        consolidated = self._group.metadata.consolidated_metadata is not None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            ds = xr.open_zarr(
                self._zstore,
                consolidated=consolidated,
                mask_and_scale=False,
                chunks={"prompt": self.chunk_prompts},
            )
        for name in list(ds.data_vars):
            if ds[name].attrs.get(DTYPE_ATTR) == StorageDType.BFLOAT16.value:
                var = ds[name]
                ds[name] = var.copy(data=var.data.map_blocks(bfloat16_to_float32, dtype=np.float32))
        return ds


def _create_array(
    group: zarr.Group,
    spec: ArraySpec,
    *,
    storage_dtype: StorageDType,
    codec: Codec,
    chunk_prompts: int,
    inner_max: int,
) -> None:
    attrs: dict[str, Any] = {}
    if spec.kind == "float":
        dtype, fill = storage_dtype.numpy, storage_dtype.fill_value
        attrs[DTYPE_ATTR] = storage_dtype.value
    elif spec.kind == "str":
        dtype, fill = str, ""
    else:
        dtype = np.dtype(spec.kind)
        fill = (
            spec.fill_value if spec.fill_value is not None else (np.nan if dtype.kind == "f" else 0)
        )
    if spec.kind == "float32":
        attrs[DTYPE_ATTR] = "float32"
    common = dict(
        shape=spec.shape,
        dtype=dtype,
        fill_value=fill,
        dimension_names=spec.dims,
        attributes=attrs,
        config={"write_empty_chunks": True},
    )
    if not spec.per_prompt:
        chunks = (
            spec.shape
            if spec.dims[0] != "prompt"
            else (min(chunk_prompts, spec.shape[0]), *spec.shape[1:])
        )
        arr = group.create_array(spec.name, chunks=chunks, compressors=None, **common)
        if spec.data is not None and spec.shape[0] > 0:
            arr[...] = np.asarray(spec.data, dtype=dtype if spec.kind != "str" else str)
        return
    outer = (min(chunk_prompts, spec.shape[0]), *spec.shape[1:])
    itemsize = np.dtype(dtype).itemsize if spec.kind != "str" else 0
    big = spec.kind in ("float", "float32") and len(spec.shape) > 2
    if big:
        inner = _inner_chunks(spec.shape, itemsize, inner_max)
        group.create_array(
            spec.name, chunks=inner, shards=outer, compressors=codec.compressors(itemsize), **common
        )
    else:
        group.create_array(
            spec.name,
            chunks=outer,
            compressors=None if spec.kind == "str" else (zarr.codecs.ZstdCodec(level=1),),
            **common,
        )


class ChunkWriter:
    """Writes chunks on one background thread so the caller's compute overlaps the I/O.

    ``submit`` queues ``store.write_chunk(c, arrays)`` and blocks only while ``max_pending``
    chunks are already queued (bounded memory). An error in the writer thread is raised in
    the caller by the next ``submit`` or by ``close`` (``with`` block exit); chunks queued after
    a failure are dropped, unmarked, so a resume rewrites them. The caller must not modify
    submitted arrays.

    Example
    -------
    >>> with ChunkWriter(store) as writer:                       # doctest: +SKIP
    ...     for c in store.missing_chunks():
    ...         writer.submit(c, compute_chunk(store.chunk_slice(c)))
    """

    _STOP = object()

    def __init__(self, store: ChunkedStore, max_pending: int = 2) -> None:
        import queue
        import threading

        store._check_writable()
        if not (isinstance(max_pending, int) and max_pending >= 1):
            raise ConfigError(f"max_pending must be an integer >= 1, got {max_pending!r}.")
        self.store = store
        self.chunks_written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="patchsweep-chunk-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None:
                continue  # drain so the caller never blocks on a dead writer
            c, arrays = item
            try:
                self.store.write_chunk(c, arrays)
                self.chunks_written += 1
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise StoreError(
                f"Writing a chunk to {self.store.url!r} failed in the writer thread: {error}"
            ) from error

    def submit(self, c: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Queue chunk ``c`` for writing; raises an earlier chunk's write error, if any."""
        self._raise_pending()
        if not self._thread.is_alive():
            raise StoreError("ChunkWriter is closed; create a new one to write more chunks.")
        self._queue.put((c, arrays))

    def close(self) -> None:
        """Wait for every queued chunk, stop the thread, raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except StoreError:
            pass  # the caller's own exception is the one to see
