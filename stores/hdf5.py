"""Export a store to HDF5 with h5py, and import it back, exactly.

The HDF5 file mirrors the Zarr group: one dataset per array with the same name, dtype and
data (bfloat16 stays ``uint16`` bit patterns tagged ``patchsweep_dtype``), chunked like the
zarr inner chunks and gzip-compressed. Dimension names are kept twice: as a ``dims``
attribute and as HDF5 dimension scales (coordinates such as ``prompt`` and ``layer`` are
attached to the dims they label, so tools that understand ``DIMENSION_LIST`` see labeled
data). Attributes are JSON strings: root ``patchsweep`` (the store's metadata) and, on every
dataset and the root, ``zarr_attributes`` (all zarr attributes) and ``zarr_layout`` (chunks,
shards, codecs, fill value), so :func:`import_hdf5` rebuilds an identical store. Both
directions stream one outer chunk at a time, so memory stays at one shard.

Reading the export needs only h5py::

    import h5py, json
    with h5py.File("capture.h5") as f:
        meta = json.loads(f.attrs["patchsweep"])
        x = f["clean_resid_pre"][0]            # (layer, pos, d_model) of prompt 0
        dims = list(f["clean_resid_pre"].attrs["dims"])
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping

import numpy as np
import zarr

from .errors import ConfigError, StoreError, StoreNotFoundError
from .locations import open_zarr_store

__all__ = ["export_hdf5", "import_hdf5"]

_H5_CHUNK_MAX_BYTES = 4 << 20


def _row_blocks(arr) -> list[slice]:
    """Slices along the first axis, one outer (shard) chunk each."""
    if arr.ndim == 0 or arr.shape[0] == 0:
        return [slice(None)]
    step = (arr.shards or arr.chunks)[0]
    return [slice(i, min(i + step, arr.shape[0])) for i in range(0, arr.shape[0], step)]


def _h5_chunks(arr) -> tuple[int, ...] | None:
    if arr.ndim == 0 or 0 in arr.shape:
        return None
    chunks = list(arr.chunks)
    itemsize = max(arr.dtype.itemsize, 8) if arr.dtype.kind not in "OTU" else 16
    while int(np.prod(chunks)) * itemsize > _H5_CHUNK_MAX_BYTES and max(chunks) > 1:
        i = int(np.argmax(chunks))
        chunks[i] = -(-chunks[i] // 2)
    return tuple(chunks)


def _layout(arr) -> dict:
    meta = arr.metadata.to_dict()
    return {
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "compressors": [c.to_dict() for c in arr.compressors],
        "fill_value": meta["fill_value"],
        "dimension_names": list(arr.metadata.dimension_names or ()),
        "config": {"write_empty_chunks": bool(arr.config.write_empty_chunks)},
    }


def export_hdf5(
    store_url: str | os.PathLike,
    h5_path: str | os.PathLike,
    *,
    compression: str | None = "gzip",
    storage_options: Mapping | None = None,
) -> None:
    """Write the Zarr store at ``store_url`` (capture or results, complete or not) to ``h5_path``.

    ``compression`` is ``"gzip"`` (level 1, readable by every HDF5 tool), ``"lzf"`` (faster,
    h5py only) or ``None``.
    """
    import h5py

    if compression not in ("gzip", "lzf", None):
        raise ConfigError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}.")
    opts = (
        {"compression": compression, "compression_opts": 1}
        if compression == "gzip"
        else {"compression": compression}
    )
    zstore = open_zarr_store(store_url, read_only=True, storage_options=storage_options)
    group = zarr.open_group(zstore, mode="r")
    if "patchsweep" not in group.attrs:
        raise StoreError(
            f"{os.fspath(store_url)!r} is a Zarr group without 'patchsweep' attributes; expected a patchsweep store."
        )
    names = sorted(group.array_keys())
    with h5py.File(h5_path, "w") as f:
        f.attrs["patchsweep"] = json.dumps(group.attrs["patchsweep"])
        f.attrs["zarr_attributes"] = json.dumps(dict(group.attrs))
        f.attrs["zarr_consolidated"] = group.metadata.consolidated_metadata is not None
        for name in names:
            arr = group[name]
            is_str = arr.dtype.kind in "OTU"
            dtype = h5py.string_dtype() if is_str else arr.dtype
            chunks = _h5_chunks(arr)
            ds = f.create_dataset(
                name, shape=arr.shape, dtype=dtype, chunks=chunks, **(opts if chunks else {})
            )
            for rows in _row_blocks(arr):
                block = arr[rows]
                ds[rows] = block.astype(object) if is_str else block
            ds.attrs["dims"] = list(arr.metadata.dimension_names or ())
            ds.attrs["zarr_attributes"] = json.dumps(dict(arr.attrs))
            ds.attrs["zarr_layout"] = json.dumps(_layout(arr))
            for key, value in arr.attrs.items():
                if isinstance(value, str):
                    ds.attrs[key] = value
        coords = {n for n in names if tuple(group[n].metadata.dimension_names or ()) == (n,)}
        for n in coords:
            f[n].make_scale(n)
        for name in names:
            for i, dim in enumerate(group[name].metadata.dimension_names or ()):
                f[name].dims[i].label = dim
                if dim in coords and name != dim:
                    f[name].dims[i].attach_scale(f[dim])


def import_hdf5(
    h5_path: str | os.PathLike,
    store_url: str | os.PathLike,
    *,
    storage_options: Mapping | None = None,
) -> None:
    """Rebuild the Zarr store exported to ``h5_path`` at ``store_url`` (must not exist yet)."""
    import h5py

    if not os.path.exists(h5_path):
        raise StoreNotFoundError(f"No HDF5 file at {os.fspath(h5_path)!r}.")
    zstore = open_zarr_store(store_url, read_only=False, storage_options=storage_options)
    try:
        zarr.open_group(zstore, mode="r")
        raise StoreError(
            f"A Zarr store already exists at {os.fspath(store_url)!r}; import into a new path."
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        pass
    with h5py.File(h5_path, "r") as f:
        if "zarr_attributes" not in f.attrs:
            raise StoreError(
                f"{os.fspath(h5_path)!r} has no 'zarr_attributes'; expected a file written by export_hdf5."
            )
        group = zarr.open_group(zstore, mode="w")
        for name, ds in f.items():
            lay = json.loads(ds.attrs["zarr_layout"])
            is_str = h5py.check_string_dtype(ds.dtype) is not None
            arr = group.create_array(
                name,
                shape=ds.shape,
                dtype=str if is_str else ds.dtype,
                chunks=tuple(lay["chunks"]),
                shards=tuple(lay["shards"]) if lay["shards"] else None,
                compressors=lay["compressors"] or None,
                fill_value=lay["fill_value"],
                dimension_names=tuple(lay["dimension_names"]) or None,
                attributes=json.loads(ds.attrs["zarr_attributes"]),
                config=lay["config"],
            )
            for rows in _row_blocks(arr):
                block = ds.asstr()[rows] if is_str else ds[rows]
                arr[rows] = np.asarray(block, dtype=str) if is_str else block
        group.attrs.update(json.loads(f.attrs["zarr_attributes"]))
        if bool(f.attrs.get("zarr_consolidated", False)):
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Consolidated metadata", category=UserWarning
                )
                zarr.consolidate_metadata(zstore)
