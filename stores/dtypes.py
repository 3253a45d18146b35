"""Storage dtypes and codecs of float arrays, and the float16/bfloat16 conversions.

Storage dtypes: ``float32``, ``float16`` and ``bfloat16``. zarr-python has no bfloat16
(zarr-developers/zarr-python#2656), so bfloat16 is stored as ``uint16`` bit patterns with the
array attribute ``"patchsweep_dtype": "bfloat16"``; readers here decode to float32. float16
overflow raises :class:`Float16OverflowError` instead of saturating to inf.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np
import zarr

from .errors import ConfigError, Float16OverflowError

__all__ = [
    "DTYPE_ATTR",
    "FLOAT16_MAX",
    "Codec",
    "StorageDType",
    "bfloat16_to_float32",
    "decode_floats",
    "encode_floats",
    "float32_to_bfloat16",
]

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
    if not np.isinf(y).any():  # fast path: one pass over the half-size result
        return y
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
