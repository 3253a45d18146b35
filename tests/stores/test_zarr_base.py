import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from patchsweep.stores.activations import ActivationStore
from patchsweep.stores.errors import (
    ConfigError,
    Float16OverflowError,
    ReadOnlyStoreError,
    StoreError,
    StoreIncompleteError,
    StoreNotFoundError,
)
from patchsweep.stores.zarr_base import (
    ChunkWriter,
    StorageDType,
    bfloat16_to_float32,
    encode_floats,
    float32_to_bfloat16,
)

from .conftest import chunk_arrays, new_store, write_all


def _reference_bfloat16(x: np.ndarray) -> np.ndarray:
    """Naive round-to-nearest-even: pick the closer of the two bfloat16 neighbours in float64."""
    out = np.empty(x.shape, np.uint16)
    for i, v in enumerate(x.astype(np.float64)):
        bits = int(np.float32(v).view(np.uint32))
        lo = bits >> 16
        hi = lo + 1
        lo_v = float(np.uint32(lo << 16).view(np.float32))
        hi_v = (
            float(np.uint32(hi << 16).view(np.float32))
            if (hi & 0x7FFF) != 0x7F80
            else np.copysign(2.0**128, v)
        )
        d_lo, d_hi = abs(v - lo_v), abs(v - hi_v)
        out[i] = lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else hi
    return out


def test_float32_to_bfloat16_matches_naive_reference():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, 2000, dtype=np.uint32) << 16) | 0x8000  # exact halfway cases
    special = np.array(
        [0.0, -0.0, 1.0, 3.0e38, 3.4028235e38, -3.4028235e38, 1e-40, -1e-45, 65504.0], np.float32
    )
    x = np.concatenate([bits.view(np.float32), ties.view(np.float32), special])
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(float32_to_bfloat16(x), _reference_bfloat16(x))


def test_bfloat16_round_trip_exhaustive():
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    decoded = bfloat16_to_float32(patterns)
    finite_or_inf = ~np.isnan(decoded)
    np.testing.assert_array_equal(
        float32_to_bfloat16(decoded)[finite_or_inf], patterns[finite_or_inf]
    )
    nan_in = np.array([np.nan, -np.nan], np.float32)
    assert np.isnan(bfloat16_to_float32(float32_to_bfloat16(nan_in))).all()


@pytest.mark.parametrize("value", [65504.0, -65504.0, 65519.0, np.inf, np.nan])
def test_encode_floats_float16_in_range(value):
    y = encode_floats(np.array([[value, 1.0]], np.float32), StorageDType.FLOAT16)
    assert y.dtype == np.float16 and (np.isinf(y[0, 0]) == np.isinf(value))


@pytest.mark.parametrize("value", [65520.0, -1e5, 3e38])
def test_encode_floats_float16_overflow(value):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = value
    with pytest.raises(
        Float16OverflowError,
        match=r"acts has values up to .* \(first at prompt 12\).*'bfloat16' or 'float32'",
    ):
        encode_floats(x, StorageDType.FLOAT16, what="acts", first_row=10)


def test_write_chunk_float16_overflow_names_array(tmp_path):
    store = new_store(tmp_path / "s.zarr", storage_dtype="float16")
    arrays = chunk_arrays(store, 1)
    arrays["corrupted_mlp_out"][1, 0, 0, 3] = 1e5
    with pytest.raises(Float16OverflowError, match=r"Array 'corrupted_mlp_out' .* prompt 5\)"):
        store.write_chunk(1, arrays)
    assert store.missing_chunks() == [0, 1, 2]


def test_open_missing_path(tmp_path):
    with pytest.raises(StoreNotFoundError, match="No Zarr store"):
        ActivationStore.open(tmp_path / "nothing.zarr")


def test_create_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a Zarr store; refusing to overwrite"):
        new_store(tmp_path / "mine")


def _tree(path: Path) -> dict[str, tuple[float, bytes]]:
    return {
        str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_read_only_refuses_writes_and_reads_change_nothing(capture):
    path = Path(capture.url)
    before = _tree(path)
    store = ActivationStore.open(path)
    with pytest.raises(ReadOnlyStoreError, match="open read-only"):
        store.write_chunk(0, chunk_arrays(store, 0))
    with pytest.raises(ReadOnlyStoreError):
        store.finalize()
    with pytest.raises(ReadOnlyStoreError):
        ChunkWriter(store)
    store.read_prompt(3, "clean_resid_pre")
    store.dask("clean_head").sum().compute()
    store.xarray().load()
    assert _tree(path) == before


def test_open_incomplete_refused_unless_allowed(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    store.write_chunk(0, chunk_arrays(store, 0))
    with pytest.raises(
        StoreIncompleteError, match=r"2 of 3 prompt chunks .* chunk 1, prompts 4\.\.7"
    ):
        ActivationStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreIncompleteError):
        store.finalize()
    assert ActivationStore.open(tmp_path / "s.zarr", allow_incomplete=True).missing_chunks() == [
        1,
        2,
    ]


def test_missing_chunks_ignores_rows_without_marker(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    rows = store.chunk_slice(1)
    for name, value in chunk_arrays(
        store, 1
    ).items():  # data written, marker never set: a kill before the marker
        store.zarr_array(name)[rows] = (
            encode_floats(value, StorageDType.FLOAT32) if value.dtype.kind == "f" else value
        )
    (Path(store.url) / "clean_resid_pre" / "c" / "orphan.abc.partial").write_bytes(b"half")
    resumed = new_store(tmp_path / "s.zarr")
    assert resumed.missing_chunks() == [0, 1, 2]
    assert not list(Path(store.url).rglob("*.partial"))


def test_memory_store_round_trip():
    url = f"memory://patchsweep-test-{os.getpid()}/cap.zarr"
    store = new_store(url, storage_dtype="bfloat16")
    write_all(store)
    store.finalize()
    back = ActivationStore.open(url)
    expected = float32_to_bfloat16(chunk_arrays(back, 0)["clean_head"][1])
    np.testing.assert_array_equal(float32_to_bfloat16(back.read_prompt(1, "clean_head")), expected)
    assert back.xarray()["clean_head"].dims == ("prompt", "layer", "pos", "head", "d_head")


def test_chunk_writer_surfaces_thread_errors(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    bad = chunk_arrays(store, 0)
    bad["clean_tokens"] = bad["clean_tokens"][:, :2]
    with pytest.raises(
        StoreError,
        match=r"writer thread: Array 'clean_tokens' .* shape \(4, 2\); expected \(4, 6\)",
    ):
        with ChunkWriter(store, max_pending=1) as writer:
            writer.submit(0, bad)
            writer.submit(1, chunk_arrays(store, 1))
            writer.submit(2, chunk_arrays(store, 2))
    assert 0 in store.missing_chunks()


def test_chunk_writer_writes_everything(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    with ChunkWriter(store) as writer:
        for c in store.missing_chunks():
            writer.submit(c, chunk_arrays(store, c))
    assert store.is_complete and writer.chunks_written == 3


def test_write_chunk_rejects_wrong_keys(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    arrays = chunk_arrays(store, 0)
    del arrays["answer_id"]
    with pytest.raises(ConfigError, match=r"missing \['answer_id'\]"):
        store.write_chunk(0, arrays)
    with pytest.raises(IndexError, match="chunks 0..2"):
        store.chunk_slice(3)


_WRITER = textwrap.dedent(
    """
    import sys
    from patchsweep.stores.activations import ActivationStore
    from tests.stores.conftest import chunk_arrays, new_store
    store = new_store(sys.argv[1], n_prompts=60, n_pos=16, d_model=64, chunk_prompts=2, storage_dtype=sys.argv[2])
    print("start", len(store.missing_chunks()), flush=True)
    for c in store.missing_chunks():
        store.write_chunk(c, chunk_arrays(store, c))
    store.finalize()
    print("done", flush=True)
    """
)


def _data_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, dtype):
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(root)}

    def run(out):
        return subprocess.Popen(
            [sys.executable, str(script), str(out), dtype],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    reference = run(tmp_path / "ref.zarr")
    assert reference.wait(timeout=120) == 0
    rng = np.random.default_rng(3)
    killed = 0
    for _ in range(4):
        proc = run(tmp_path / "killed.zarr")
        assert proc.stdout.readline().startswith("start")  # imports done, store opened
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        proc.stdout.close()
    assert killed >= 3
    partial = ActivationStore.open(tmp_path / "killed.zarr", allow_incomplete=True)
    assert 0 < len(partial.missing_chunks()) < partial.n_chunks  # the kills landed mid-run
    final = run(tmp_path / "killed.zarr")
    assert final.wait(timeout=120) == 0
    final.stdout.close()
    reference.stdout.close()
    assert _data_files(tmp_path / "killed.zarr") == _data_files(tmp_path / "ref.zarr")
    assert ActivationStore.open(tmp_path / "killed.zarr").is_complete
