"""Capture-stage speed: (1) overhead over plain forward passes, (2) write throughput vs the disk.

(1) Compute-bound: a small random llama (d_model 256, 4 layers, vocab 2048), 512 prompts of
    28-32 tokens (random ids; ``--prompts``). ``capture`` (resid_pre + mlp_out of every layer, all positions,
    float16, logits) is timed end to end (store creation, forward passes, stores writes,
    finalisation) against the same forward passes alone: the same length buckets and batches,
    through the same adapter with ``unembed="last"`` and one ``mx.eval`` per batch, nothing
    read or written. Overhead = capture / plain - 1 (goal <= 15%). The plain passes with
    full-sequence logits (``model(tokens)``) are printed too.
(2) Write-bound: a tiny random llama (d_model 128, 4 layers; 128 prompts of 64 tokens) capturing all five site kinds of
    every layer at every position in float32 (~20x more bytes per FLOP). Write throughput =
    bytes the capture wrote (storage dtype) / the writer thread's busy time (encode, write,
    fsync, mark: ``CaptureSummary.write_s``, measured while compute runs beside it on the same
    cores), against this disk's sequential durable write bandwidth (``bench_store.disk_bandwidth``:
    numpy ``tofile`` + ``fsync``) measured just before and after in the same folder (goal >= 50%).
    The end-to-end rate (bytes / capture wall time) is printed too: on a CPU, MLX produces a tiny
    model's activations slower than this disk takes them, so there the capture as a whole is
    compute-bound and the writer idles part of the time.

    python benchmarks/bench_capture.py           # ~1-2 min on 2 CPU cores
    python benchmarks/bench_capture.py --folder /some/disk
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import patchsweep.pipeline  # noqa: F401  (BLAS preload must precede any mlx import)

# isort: split
import mlx.core as mx
import numpy as np

from patchsweep.pipeline import blas
from patchsweep.pipeline.adapter import Forward, ModelAdapter  # noqa: E402
from patchsweep.pipeline.capture import CaptureSpec, _buckets, capture  # noqa: E402
from patchsweep.pipeline.compute import matmul_gflops
from patchsweep.pipeline.datasets import PromptDataset, PromptPair, TokenizedDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import disk_bandwidth  # noqa: E402


class _Loaded:
    """The three things ``capture`` uses from a LoadedModel."""

    def __init__(self, model, name: str):
        self.model = model
        self.adapter = ModelAdapter(model)
        self.tokenizer = None
        self.identity = {"model": {"name": name}, "tokenizer": {"name": "random-ids"}}


def random_llama(d: int, layers: int, vocab: int, seed: int = 0) -> _Loaded:
    module = importlib.import_module("mlx_lm.models.llama")
    args = {
        "model_type": "llama",
        "hidden_size": d,
        "num_hidden_layers": layers,
        "intermediate_size": 4 * d,
        "num_attention_heads": d // 64,
        "num_key_value_heads": d // 128 or 1,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(args))
    mx.eval(model.parameters())
    return _Loaded(model, f"random-llama-d{d}-l{layers}")


def random_prompts(n: int, vocab: int, lo: int, hi: int, seed: int = 0) -> TokenizedDataset:
    """Tokenised random prompts (no tokenizer): lengths in [lo, hi], roles ``last`` only."""
    rng = np.random.default_rng(seed)
    pairs = tuple(PromptPair(f"r{i:05d}", "x", "y", " a", None) for i in range(n))
    lengths = {run: rng.integers(lo, hi + 1, n).astype(np.int32) for run in ("clean", "corrupted")}
    tokens = {run: np.full((n, hi), -1, np.int32) for run in lengths}
    for run in lengths:
        for i, length in enumerate(lengths[run]):
            tokens[run][i, :length] = rng.integers(4, vocab, length)
    return TokenizedDataset(
        PromptDataset(pairs, name=f"random-{n}"),
        ("last",),
        tokens["clean"],
        tokens["corrupted"],
        lengths["clean"],
        lengths["corrupted"],
        (lengths["clean"] - 1)[:, None],
        (lengths["corrupted"] - 1)[:, None],
        rng.integers(4, vocab, n).astype(np.int32),
        np.full(n, -1, np.int32),
    )


def plain_forward(
    lm: _Loaded, td: TokenizedDataset, batch_size: int, chunk_prompts: int, full_logits: bool
) -> float:
    """Seconds for the forward passes capture makes (same chunks, buckets, batches), nothing stored."""
    t = time.perf_counter()
    for start in range(0, len(td), chunk_prompts):
        rows = slice(start, min(start + chunk_prompts, len(td)))
        for run in ("clean", "corrupted"):
            lengths = td.lengths(run)[rows]
            for batch in _buckets(lengths, batch_size):
                tokens = mx.array(td.tokens(run)[start + batch, : lengths[batch[0]]])
                if full_logits:
                    mx.eval(lm.model(tokens))
                else:
                    mx.eval(lm.adapter.forward(tokens, Forward(unembed="last")).logits)
    return time.perf_counter() - t


def overhead_run(
    lm: _Loaded, td: TokenizedDataset, spec: CaptureSpec, stem: Path, label: str
) -> None:
    """Capture vs the same forward passes alone, interleaved, best of two each."""
    plain_forward(lm, td, spec.batch_size, spec.chunk_prompts, False)  # warm-up
    plains, runs = [], []
    for k in range(2):  # interleaved, best of two: the machine is shared
        plains.append(plain_forward(lm, td, spec.batch_size, spec.chunk_prompts, False))
        summary = capture(lm, td, spec, f"{stem}-{k}.zarr", progress=False)
        runs.append(summary.elapsed_s)
    plain, cap = min(plains), min(runs)
    full = plain_forward(lm, td, spec.batch_size, spec.chunk_prompts, True)
    print(
        f"(1) capture overhead over plain forward passes: {label}, float16, logits, durable store"
    )
    print(f"    plain forward, same batches, last-position logits: {plain:6.2f} s")
    print(f"    plain forward, same batches, full logits:          {full:6.2f} s")
    print(
        f"    capture:                                           {cap:6.2f} s (writer busy {summary.write_s:.2f} s)"
    )
    print(
        f"    -> overhead {100 * (cap / plain - 1):+.1f}% vs last-position passes (goal <= 15%), "
        f"{100 * (cap / full - 1):+.1f}% vs full-logit passes"
    )
    print(f"    {summary}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where stores are written (default: a temp folder)",
    )
    ap.add_argument("--disk-gb", type=float, default=1.0)
    ap.add_argument("--prompts", type=int, default=512, help="prompts in the overhead run")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.folder, prefix="bench-capture-"))
    status = blas.status()
    print(
        f"compute: {mx.default_device()}, BLAS {'OpenBLAS' if status.loaded else 'MLX bundled'}"
        f" ({status.reason}), float32 1024^2 matmul {matmul_gflops():.1f} GFLOP/s"
    )
    try:
        # (1) overhead over plain forward passes: a GPT-2-small-shaped model, then a toy one
        overhead_run(
            random_llama(768, 12, 50257),
            random_prompts(args.prompts // 4, 50257, 28, 32),
            CaptureSpec(
                sites=("resid_pre", "attn_out", "mlp_out"),
                storage_dtype="float16",
                batch_size=16,
                chunk_prompts=32,
            ),
            folder / "gpt2",
            "GPT-2-small-shaped random llama (d768 x 12 layers, vocab 50257); "
            f"{args.prompts // 4} prompts, 28-32 tokens; resid_pre+attn_out+mlp_out",
        )
        overhead_run(
            random_llama(256, 4, 2048),
            random_prompts(args.prompts, 2048, 28, 32),
            CaptureSpec(
                sites=("resid_pre", "mlp_out"),
                storage_dtype="float16",
                batch_size=16,
                chunk_prompts=128,  # 8 MiB shards: 4 chunks, so writes overlap compute
            ),
            folder / "toy",
            f"toy random llama (d256 x 4 layers, vocab 2048); {args.prompts} prompts, 28-32 tokens; "
            "resid_pre+mlp_out",
        )

        # (2) write-bound throughput vs disk
        disk_before = disk_bandwidth(folder, args.disk_gb)
        lm = random_llama(128, 4, 512)
        td = random_prompts(128, 512, 64, 64, seed=1)
        spec = CaptureSpec(
            sites=("resid_pre", "attn_out", "mlp_out", "resid_post", "head"),
            storage_dtype="float32",
            batch_size=32,
            chunk_prompts=32,
            logits=False,
        )
        summary = capture(lm, td, spec, folder / "write-bound.zarr", progress=False)
        disk_after = disk_bandwidth(folder, args.disk_gb)
        disk = (disk_before + disk_after) / 2
        rate = summary.bytes_written / summary.elapsed_s / 1e9
        writer = summary.bytes_written / summary.write_s / 1e9
        print(
            "(2) write-bound capture (random llama d128 x 4 layers; 128 prompts of 64 tokens; 5 site kinds, all layers/positions, float32)"
        )
        print(
            f"    disk sequential durable write: {disk_before:.2f} GB/s before, {disk_after:.2f} GB/s after"
        )
        print(
            f"    store writer: {summary.bytes_written / 1e9:.2f} GB in {summary.write_s:.2f} s busy = {writer:.2f} GB/s "
            f"-> {100 * writer / disk:.0f}% of the disk (goal >= 50%)"
        )
        print(
            f"    end to end: {summary.elapsed_s:.2f} s = {rate:.2f} GB/s ({100 * rate / disk:.0f}% of the disk; "
            "compute-bound when below the writer's rate)"
        )
        print(f"    {summary}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
