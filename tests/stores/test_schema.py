"""Inner-chunk shapes of sharded per-prompt arrays (stores/schema.py)."""

import numpy as np
import pytest
import zarr

from patchsweep.stores.dtypes import Codec, StorageDType
from patchsweep.stores.schema import ArraySpec, _create_array, _inner_chunks

MiB = 1 << 20


@pytest.mark.parametrize(
    ("shape", "outer", "expected"),
    [
        # 128 KiB float32 prompts: 8 share a 1 MiB inner chunk (a divisor of the 128-prompt shard)
        ((512, 4, 32, 256), 128, (8, 4, 32, 256)),
        # 128 KiB prompts, 20-prompt shard: the largest divisor of 20 up to 8 is 5
        ((100, 4, 32, 256), 20, (5, 4, 32, 256)),
        # 600 KiB prompts: one per inner chunk
        ((64, 12, 32, 800), 32, (1, 12, 32, 800)),
        # 4 MiB prompts over the 2 MiB maximum: split along the layer axis (a divisor of 8)
        ((8, 8, 128, 1024), 4, (1, 4, 128, 1024)),
    ],
)
def test_inner_chunks(shape, outer, expected):
    inner = _inner_chunks(shape, 4, max_bytes=2 * MiB, outer=outer, min_bytes=MiB)
    assert inner == expected
    assert outer % inner[0] == 0 and shape[1] % inner[1] == 0  # shards need divisors
    assert inner[0] == 1 or int(np.prod(inner)) * 4 <= MiB  # a grouped inner chunk fits 1 MiB


def test_no_grouping_without_min_bytes():
    assert _inner_chunks((512, 4, 32, 256), 4, max_bytes=2 * MiB, outer=128) == (1, 4, 32, 256)


def test_grouped_inner_chunks_round_trip_with_partial_last_shard():
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    spec = ArraySpec("x", ("prompt", "layer", "pos", "d_model"), (50, 2, 8, 64), "float")
    _create_array(
        group,
        spec,
        storage_dtype=StorageDType.FLOAT32,
        codec=Codec.parse("none"),
        chunk_prompts=16,
        inner_max=2 * MiB,
        inner_min=32 * 1024,
    )
    arr = group["x"]
    assert arr.shards == (16, 2, 8, 64) and arr.chunks == (8, 2, 8, 64)
    data = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    for start in range(0, 50, 16):  # chunk by chunk, as the writer does; the last one is partial
        arr[start : start + 16] = data[start : start + 16]
    np.testing.assert_array_equal(arr[...], data)
    np.testing.assert_array_equal(arr[37], data[37])
