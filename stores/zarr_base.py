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

:class:`ChunkedStore` is the generic engine; :mod:`.activations` and :mod:`.results` only
declare their arrays (:class:`~.schema.ArraySpec`) and attributes. Storage dtypes and their
conversions live in :mod:`.dtypes`, locations (paths, URLs) in :mod:`.locations`, the
background writer in :mod:`.chunk_writer`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import numpy as np
import zarr

from .chunk_writer import ChunkWriter
from .dtypes import (
    DTYPE_ATTR,
    Codec,
    StorageDType,
    bfloat16_to_float32,
    decode_floats,
    encode_floats,
    float32_to_bfloat16,
)
from .errors import (
    ConfigError,
    ReadOnlyStoreError,
    StoreError,
    StoreIncompleteError,
    StoreNotFoundError,
)
from .locations import _local_path, open_zarr_store, refuse_foreign, remove_partials
from .schema import ArraySpec, _create_array

# ChunkWriter and the dtype names are re-exported: tests and the patch stage import them here.
__all__ = [
    "FORMAT_VERSION",
    "ArraySpec",
    "ChunkedStore",
    "ChunkWriter",
    "StorageDType",
    "Codec",
    "bfloat16_to_float32",
    "decode_floats",
    "float32_to_bfloat16",
    "encode_floats",
    "package_version",
]

FORMAT_VERSION = 1
MARKER = "chunk_written"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("patchsweep")
    except PackageNotFoundError:
        return "unknown"


class ChunkedStore:
    """Generic engine of a prompt-chunked Zarr v3 store; see the module docstring.

    Subclasses set ``KIND`` and implement ``_specs()`` (the schema, from ``self.layout``).
    Use the subclasses' ``create_or_resume`` and ``open``; do not call ``__init__`` directly.
    """

    KIND = ""
    INNER_CHUNK_MAX_BYTES = 32 << 20  # one-prompt reads stay in the tens of ms
    INNER_CHUNK_MIN_BYTES = 1 << 20  # small prompts share an inner chunk up to this size
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
        layout,
        specs: Sequence[ArraySpec],
        attrs: dict,
        *,
        storage_dtype: StorageDType,
        codec: Codec,
        storage_options=None,
        durable: bool = True,
    ):
        """Create the store: every array of ``specs``, the chunk markers, then the root
        attributes every store kind shares around the kind's own ``attrs``.

        ``layout`` is the kind's layout dataclass (``n_prompts``, ``chunk_prompts``,
        ``to_dict()``).
        """
        from datetime import UTC, datetime

        chunk_prompts, n_prompts = layout.chunk_prompts, layout.n_prompts
        root_attrs = {
            "format_version": FORMAT_VERSION,
            "kind": cls.KIND,
            **attrs,
            "package_version": package_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "chunk_prompts": chunk_prompts,
            "layout": layout.to_dict(),
        }
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
                inner_min=cls.INNER_CHUNK_MIN_BYTES,
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
    def _resume(
        cls, url, storage_options, durable: bool, check: Callable[[Self], None]
    ) -> Self | None:
        """The fully created store at ``url``, reopened for writing once ``check(store)`` (which
        raises on a mismatch) passes, its orphan ``*.partial`` files removed; None when there is
        no store yet (a non-empty folder that is not a store is refused)."""
        existing = cls._existing(url, storage_options)
        if existing is None:
            refuse_foreign(url)
            return None
        zstore, group, _ = existing
        store = cls(url, zstore, group, read_only=False, durable=durable)
        check(store)
        remove_partials(url)
        return store

    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        mode: str = "r",
        *,
        allow_incomplete: bool = False,
        storage_options: Mapping | None = None,
    ) -> Self:
        """Open an existing store of this kind; ``mode="r"`` (default) refuses every write.

        Raises :class:`StoreIncompleteError` if some chunk is unwritten, unless
        ``allow_incomplete``.
        """
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
        checked = self._validate_chunk(rows, arrays)
        marker = self.zarr_array(MARKER)
        if marker[c] == 1:
            marker[c] = 0
        pool = self._executor()  # encode (dtype casts release the GIL) and write, array by array
        futures = [
            pool.submit(self._encode_and_write, name, spec, value, rows)
            for name, (spec, value) in checked.items()
        ]
        for future in futures:
            future.result()  # the first error (e.g. float16 overflow) leaves the chunk unmarked
        if self.durable:
            self._fsync_chunk(c, checked)
        marker[c] = 1
        if self.durable:
            self._fsync_chunk(c, {MARKER: None})

    def _write_rows(self, name: str, rows: slice, value: np.ndarray) -> None:
        self.zarr_array(name)[rows] = value

    def _encode_and_write(self, name: str, spec, value: np.ndarray, rows: slice) -> None:
        self._write_rows(name, rows, self._encode(name, spec, value, rows))

    def _encode(self, name: str, spec, value: np.ndarray, rows: slice) -> np.ndarray:
        """One array's rows in their storage form (floats in the storage dtype)."""
        if spec.kind == "float":
            return encode_floats(
                value, self.storage_dtype, what=f"Array {name!r}", first_row=rows.start
            )
        if spec.kind == "str":
            return value.astype(str)
        return value.astype(np.dtype(spec.kind), copy=False)

    def _validate_chunk(self, rows: slice, arrays: Mapping[str, np.ndarray]) -> dict[str, tuple]:
        """Check names, shapes and dtypes of a chunk's arrays: ``{name: (spec, array)}``."""
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
            if spec.kind not in ("float", "str"):
                target = np.dtype(spec.kind)
                if not np.can_cast(value.dtype, target, casting="same_kind"):
                    raise ConfigError(
                        f"Array {name!r} has dtype {value.dtype}; expected values castable to {target}."
                    )
            out[name] = (spec, value)
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
