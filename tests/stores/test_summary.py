import numpy as np
import pytest

from patchsweep.stores.errors import StoreError
from patchsweep.stores.summary import summarize

from .conftest import chunk_arrays, make_identity, new_store


def test_summarize_counts_bytes_and_completeness(tmp_path):
    store = new_store(tmp_path / "s.zarr", storage_dtype="bfloat16")
    store.write_chunk(0, chunk_arrays(store, 0))
    s = summarize(tmp_path / "s.zarr")
    assert (s.kind, s.chunks_written, s.chunks_total, s.is_complete) == ("capture", 1, 3, False)
    assert s.digests == make_identity().digests
    head = next(a for a in s.arrays if a.name == "clean_head")
    assert (
        head.dtype == "bfloat16"
        and head.shape == (10, 2, 6, 2, 4)
        and head.shards == (4, 2, 6, 2, 4)
    )
    assert head.logical_bytes == 10 * 2 * 6 * 2 * 4 * 2  # uint16 bit patterns
    on_disk = sum(
        p.stat().st_size for p in (tmp_path / "s.zarr" / "clean_head").rglob("*") if p.is_file()
    )  # metadata included
    assert head.stored_bytes == on_disk
    assert s.stored_bytes == sum(a.stored_bytes for a in s.arrays)
    assert np.isclose(s.compression_ratio, s.logical_bytes / s.stored_bytes)
    text = s.render()
    assert "1/3 prompt chunks  (INCOMPLETE)" in text and "clean_head" in text and "bfloat16" in text


def test_summarize_complete_store(capture):
    s = summarize(capture.url)
    assert s.is_complete and "(INCOMPLETE)" not in str(s)


def test_summarize_refuses_non_store(tmp_path):
    import zarr

    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreError, match="not a patchsweep store"):
        summarize(tmp_path / "plain.zarr")
