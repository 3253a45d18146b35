"""Capture-store write/read throughput vs this disk's sequential durable write bandwidth.

Measures, in one run:

(a) the disk: ``--disk-gb`` GB written with ``numpy.tofile`` then ``os.fsync`` (durable);
(b) the store: ``ActivationStore.write_chunk`` of activation-like data (gaussian with a few
    massive dimensions and per-token scale, like LLM residual streams) for several storage
    dtypes x codecs x prompt-chunk (shard) sizes, with fsync before each chunk's marker
    (the store's default, durable, mode); then a cold full read (files evicted from the page
    cache with ``posix_fadvise(DONTNEED)``) and cold one-prompt reads.

Write GB/s counts the bytes that reach the disk, so it compares directly with (a);
"vs disk" is that ratio (the issue's goal: >= 50% when capture is write-bound).
Writes a markdown table to ``benchmarks/RESULTS-store.md`` (``--out``).

    python benchmarks/bench_store.py            # ~1-2 min on 2 cores
    python benchmarks/bench_store.py --gb 2 --disk-gb 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from patchsweep.stores.activations import ActivationStore, CaptureLayout
from patchsweep.stores.identity import Identity
from patchsweep.stores.summary import summarize

L, P, D = 12, 64, 768  # GPT-2-small-like: layers, positions, d_model
SITES = ("resid_pre", "mlp_out")  # x 2 runs = 4 activation arrays written per chunk


def disk_bandwidth(folder: Path, gb: float) -> float:
    """GB/s of a sequential write of ``gb`` GB made durable with fsync."""
    block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8)
    n = max(1, int(gb * 1e9 / block.nbytes))
    path = folder / "disk.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(n):
            block.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    path.unlink()
    return n * block.nbytes / dt / 1e9


def activations(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, L, P, D), dtype=np.float32)
    x *= rng.uniform(0.5, 2.0, (rows, 1, P, 1)).astype(np.float32)  # per-token norm
    x *= np.linspace(1, 8, L, dtype=np.float32)[
        None, :, None, None
    ]  # residual norm grows with depth
    x[..., [17, 138, 447]] *= 300.0  # massive activation dimensions
    return x


def evict(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_store(folder: Path, dtype: str, codec: str, chunk_prompts: int, n_prompts: int) -> dict:
    layout = CaptureLayout(
        n_prompts=n_prompts,
        layers=tuple(range(L)),
        n_pos=P,
        d_model=D,
        sites=SITES,
        storage_dtype=dtype,
        codec=codec,
        chunk_prompts=chunk_prompts,
    )
    path = folder / f"{dtype}-{codec}-{chunk_prompts}.zarr"
    store = ActivationStore.create_or_resume(
        path, layout, Identity(spec={"bench": 1}), prompt_ids=[str(i) for i in range(n_prompts)]
    )
    base = {name: activations(chunk_prompts, i) for i, name in enumerate(layout.prompt_bytes)}
    small = {
        "clean_tokens": np.zeros((chunk_prompts, P), np.int32),
        "clean_length": np.full(chunk_prompts, P, np.int32),
        "answer_id": np.zeros(chunk_prompts, np.int32),
        "wrong_id": np.zeros(chunk_prompts, np.int32),
    }
    small |= {k.replace("clean", "corrupted"): v for k, v in small.items() if k.startswith("clean")}

    def chunk(c: int) -> dict:
        n = store.chunk_slice(c).stop - store.chunk_slice(c).start
        return {k: v[:n] for k, v in (base | small).items()}

    t = time.perf_counter()
    for c in store.missing_chunks():
        store.write_chunk(c, chunk(c))
    store.finalize()
    t_write = time.perf_counter() - t
    s = summarize(path)
    act = [a for a in s.arrays if a.name in layout.prompt_bytes]
    stored, logical = sum(a.stored_bytes for a in act), sum(a.logical_bytes for a in act)

    evict(path)
    reader = ActivationStore.open(path)
    t = time.perf_counter()
    for name in layout.prompt_bytes:
        reader.dask(name).sum(dtype="float64").compute()
    t_read = time.perf_counter() - t
    evict(path)
    rng = np.random.default_rng(1)
    times = []
    for i in rng.choice(n_prompts, 15, replace=False):
        t = time.perf_counter()
        reader.read_prompt(int(i), "clean_resid_pre")
        times.append(time.perf_counter() - t)
    shutil.rmtree(path)
    return {
        "dtype": dtype,
        "codec": codec,
        "chunk_prompts": chunk_prompts,
        "shard_mib": chunk_prompts
        * L
        * P
        * D
        * np.dtype("float32" if dtype == "float32" else "float16").itemsize
        / 2**20,
        "write_gbs": s.stored_bytes / t_write / 1e9,
        "write_logical_gbs": logical / t_write / 1e9,
        "read_gbs": logical / t_read / 1e9,
        "ratio": logical / stored,
        "one_prompt_ms": statistics.median(times) * 1e3,
    }


CONFIGS = [
    ("float32", "none", 32),
    ("float32", "none", 8),
    ("float32", "zstd", 32),
    ("float32", "blosc-shuffle", 32),
    ("float32", "blosc-bitshuffle", 32),
    ("float16", "none", 32),
    ("float16", "blosc-shuffle", 32),
    ("bfloat16", "none", 32),
    ("bfloat16", "blosc-shuffle", 32),
    ("bfloat16", "blosc-bitshuffle", 32),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=0.6, help="logical float32 GB per store config")
    parser.add_argument(
        "--disk-gb", type=float, default=1.5, help="GB for the raw disk measurement"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder on the disk to measure (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-store.md"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        disk_before = disk_bandwidth(folder, args.disk_gb)
        print(f"disk sequential durable write: {disk_before:.2f} GB/s", flush=True)
        n_prompts = max(64, int(args.gb * 1e9 / (len(SITES) * 2 * L * P * D * 4)) // 32 * 32)
        rows = []
        for dtype, codec, cp in CONFIGS:
            r = bench_store(folder, dtype, codec, cp, n_prompts)
            rows.append(r)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
        disk_after = disk_bandwidth(folder, args.disk_gb)
        print(f"disk sequential durable write (again): {disk_after:.2f} GB/s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    disk = (disk_before + disk_after) / 2
    lines = [
        "# Capture-store benchmark (`benchmarks/bench_store.py`)",
        "",
        f"zarr-python 3.1.6; {n_prompts} prompts x {len(SITES) * 2} activation arrays of (layer {L}, pos {P}, d_model {D}); "
        f"durable writes (fsync before each chunk marker). Disk sequential durable write: {disk_before:.2f} GB/s before, "
        f"{disk_after:.2f} GB/s after (mean {disk:.2f}). Write GB/s counts bytes on disk; `vs disk` = write / disk mean. "
        "Read: cold (page cache evicted), whole arrays through `store.dask(name)`; one prompt: cold `read_prompt` median.",
        "",
        "| dtype | codec | prompts/shard | shard MiB | write GB/s (disk bytes) | write GB/s (logical) | vs disk | read GB/s | ratio | one-prompt read ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['codec']} | {r['chunk_prompts']} | {r['shard_mib']:.0f} | {r['write_gbs']:.2f} | "
            f"{r['write_logical_gbs']:.2f} | {r['write_gbs'] / disk:.0%} | {r['read_gbs']:.2f} | {r['ratio']:.2f} | {r['one_prompt_ms']:.1f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
