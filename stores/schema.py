"""A store's schema: :class:`ArraySpec` (one array) and how each array is created in zarr.

Per-prompt arrays get one prompt chunk per outer chunk (a shard for large float arrays, with
inner chunks of one prompt, or of several small prompts up to ~1 MiB, split along the second
dim only when a prompt is too big); the
others (coordinates) are written whole at creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from .dtypes import DTYPE_ATTR, Codec, StorageDType

__all__ = ["ArraySpec"]


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


def _inner_chunks(
    shape: tuple[int, ...], itemsize: int, max_bytes: int, outer: int, min_bytes: int = 0
) -> tuple[int, ...]:
    """Inner chunks of a shard of ``outer`` prompts.

    Small prompts are grouped: as many prompts per inner chunk as fit in ``min_bytes`` (a
    divisor of ``outer``; zarr's sharding costs ~0.25 ms per inner chunk, which dominates
    writes of tiny ones), so a one-prompt read decodes at most ~``min_bytes``. A prompt larger
    than ``max_bytes`` is split along the second dim.
    """
    prompt_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    group = max(
        k
        for k in range(1, outer + 1)
        if outer % k == 0 and (k == 1 or k * prompt_bytes <= min_bytes)
    )
    if group > 1:
        return (group, *shape[1:])
    inner = [1, *shape[1:]]
    rest = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
    if len(shape) > 2 and shape[1] > 1:
        fits = max(1, max_bytes // max(rest, 1))
        inner[1] = max(
            k for k in range(1, shape[1] + 1) if shape[1] % k == 0 and k <= fits
        )  # shards need divisors
    return tuple(inner)


def _create_array(
    group: zarr.Group,
    spec: ArraySpec,
    *,
    storage_dtype: StorageDType,
    codec: Codec,
    chunk_prompts: int,
    inner_max: int,
    inner_min: int = 0,
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
        inner = _inner_chunks(spec.shape, itemsize, inner_max, outer[0], inner_min)
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
