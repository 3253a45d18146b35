"""Patch-stage speed: the engine against the naive one-forward-per-patch loop, same process.

A full ``resid_pre`` layer x position sweep (denoising), on
- a GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, vocabulary 50257, so
  unembedding costs what it really costs), 16 prompts of 16 tokens;
- the shipped demo model on one shipped dataset (if ``datasets/demo-model`` exists).

The naive loop is what TransformerLens's ``get_act_patch_resid_pre`` does: one forward pass of
the whole prompt batch per (layer, position), every position unembedded. Both compute the same
numbers (checked here too). FLOPs count 2 x parameters per token per block (for the engine's
last block, whose positions before the answer skip the MLP and output projection: 2 x the
other parameters) plus 2 x d_model x vocab per unembedded position (attention score FLOPs are
<1% at these lengths and left out).

The engine is timed twice: as shipped, and with ``skip_noops=False`` (every patch computed, also
those before the first corrupted token, where a patch cannot change the run: the GPT-2 prompts
are corrupted at token ``tokens // 3``, so a third of the positions are such no-ops).

Engine and naive runs alternate; each figure is the best of ``--repeats`` (GPT-2, default 1:
~2.5 min a pair) or ``--demo-repeats`` (default 5: the demo sweep takes about a second).

Run: ``python benchmarks/bench_patch.py [--prompts 16] [--tokens 16] [--repeats 1] [--skip-naive]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import patchsweep.pipeline  # noqa: F401  (BLAS preload before mlx)

# isort: split
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from patchsweep.pipeline.adapter import Forward, ModelAdapter
from patchsweep.pipeline.compute import matmul_gflops
from patchsweep.pipeline.patch_engine import PatchBatch, PatchEngine, PatchEntry
from patchsweep.pipeline.patch_reference import naive_patch
from patchsweep.stores.metrics import Metric
from patchsweep.stores.sites import Position, SiteKind

METRICS = (Metric.LOGIT_DIFF, Metric.LOGPROB, Metric.KL)


def gpt2_small():
    from mlx_lm.models import gpt2

    args = gpt2.ModelArgs(
        model_type="gpt2",
        n_ctx=1024,
        n_embd=768,
        n_head=12,
        n_layer=12,
        n_positions=1024,
        layer_norm_epsilon=1e-5,
        vocab_size=50257,
    )
    mx.random.seed(0)
    model = gpt2.Model(args)
    mx.eval(model.parameters())
    return model


def make_batch(adapter, clean, corrupted):
    reads = {(SiteKind.RESID_PRE, layer): None for layer in range(adapter.n_layers)}
    res = adapter.forward(mx.array(clean), Forward(reads=reads, unembed="last"))
    mx.eval(res.logits, res.sites)
    sites = {k: np.array(v) for k, v in res.sites.items()}
    B, T = corrupted.shape
    rng = np.random.default_rng(0)
    vocab = adapter.vocab_size
    differ = clean != corrupted
    same = np.where(differ.any(axis=1), differ.argmax(axis=1), T)  # shared prefix per prompt
    return PatchBatch(
        base_tokens=corrupted,
        source=lambda kind, layer: sites[(kind, layer)],
        base_pos=lambda p: np.full(B, p.index if p.index < T else -1),
        source_pos=lambda p: np.full(B, p.index if p.index < T else -1),
        answer=rng.integers(0, vocab, B),
        wrong=rng.integers(0, vocab, B),
        clean_logits=np.array(res.logits[:, 0]),
        noop=lambda p: np.full(B, p.index < T) & (p.index < same),
    )


def bench(name, adapter, clean, corrupted, skip_naive=False, repeats=1):
    """Time a full resid_pre layer x position sweep with the engine and the naive loop.

    With ``repeats`` > 1 the two are timed alternately that many times and the best of each
    is kept (short runs on a shared machine are noisy)."""
    n_params = sum(v.size for _, v in tree_flatten(adapter.model.parameters()))
    L, D, V = adapter.n_layers, adapter.d_model, adapter.vocab_size
    tied = getattr(adapter.model.args, "tie_word_embeddings", True)
    per_token_layer = 2 * (n_params - V * D * (1 if tied else 2)) / L  # block parameters only
    # the last block's other positions compute keys/values and attention only (no MLP, no o_proj)
    block = adapter.block(L - 1)
    skipped = sum(
        v.size
        for module in (
            adapter.output_projection(L - 1),
            *(m.inner for m in block.children().values() if getattr(m, "_kind", None) == "mlp"),
        )
        for _, v in tree_flatten(module.parameters())
    )
    per_token_partial = per_token_layer - 2 * skipped
    batch = make_batch(adapter, clean, corrupted)
    B, T = corrupted.shape
    items = [
        (PatchEntry(SiteKind.RESID_PRE, layer, Position(index=p)),)
        for layer in range(L)
        for p in range(T)
    ]
    engine = PatchEngine(adapter, METRICS, max_rows=256)
    engine.run(batch, items[:2])  # warm-up
    if not skip_naive:
        naive_patch(adapter, batch, items[:1], METRICS)  # warm-up
    plain = PatchEngine(adapter, METRICS, max_rows=256, skip_noops=False)
    plain.run(batch, items[:2])  # warm-up
    engine_times, naive_times, plain_times = [], [], []
    for _ in range(repeats):
        plain.stats = dict.fromkeys(plain.stats, 0)
        t0 = time.perf_counter()
        plain.run(batch, items)
        plain_times.append(time.perf_counter() - t0)
        engine.stats = dict.fromkeys(engine.stats, 0)
        t0 = time.perf_counter()
        fast = engine.run(batch, items).values
        engine_times.append(time.perf_counter() - t0)
        if not skip_naive:
            t0 = time.perf_counter()
            slow = naive_patch(adapter, batch, items, METRICS)
            naive_times.append(time.perf_counter() - t0)
    t_engine, t_plain = min(engine_times), min(plain_times)
    flops_plain = (
        plain.stats["token_layers"] * per_token_layer
        + plain.stats["last_block_partial"] * per_token_partial
        + (plain.stats["rows"] + B) * 2 * D * V
    )
    flops_engine = (
        engine.stats["token_layers"] * per_token_layer
        + engine.stats["last_block_partial"] * per_token_partial
        + (engine.stats["rows"] + B) * 2 * D * V
    )
    flops_naive = len(items) * B * T * (L * per_token_layer + 2 * D * V)
    out = {
        "model": name,
        "prompts": B,
        "tokens": T,
        "patched_runs": len(items) * B,
        "engine_s": round(t_engine, 2),
        "engine_patched_runs_per_s": round(len(items) * B / t_engine, 1),
        "engine_prompts_per_s": round(B / t_engine, 2),
        "engine_gflops_achieved": round(flops_engine / t_engine / 1e9, 1),
        "flop_ratio_naive_over_engine": round(flops_naive / flops_engine, 2),
        "engine_forwards": engine.stats["forwards"],
        "engine_noop_runs": engine.stats["noops"],
        "no_skip_s": round(t_plain, 2),
        "no_skip_gflops_achieved": round(flops_plain / t_plain / 1e9, 1),
        "flop_ratio_naive_over_no_skip": round(flops_naive / flops_plain, 2),
        "repeats": repeats,
        "engine_s_all": [round(t, 2) for t in engine_times],
    }
    if not skip_naive:
        t_naive = min(naive_times)
        out["naive_s_all"] = [round(t, 2) for t in naive_times]
        scale = np.abs(slow).max(axis=(0, 1))
        out.update(
            naive_s=round(t_naive, 2),
            naive_patched_runs_per_s=round(len(items) * B / t_naive, 1),
            naive_gflops_achieved=round(flops_naive / t_naive / 1e9, 1),
            wallclock_speedup=round(t_naive / t_engine, 2),
            wallclock_speedup_no_skip=round(t_naive / t_plain, 2),
            max_rel_diff=float(np.max(np.abs(fast - slow) / scale)),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="GPT-2 sweeps timed (best of)")
    ap.add_argument("--demo-repeats", type=int, default=5, help="demo sweeps timed (best of)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    gflops = matmul_gflops(n=1024, repeats=5)
    print(f"float32 matmul (1024^2, this run): {gflops:.1f} GFLOP/s", flush=True)
    results = {"matmul_gflops": round(gflops, 1), "runs": []}
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 50257, (args.prompts, args.tokens)).astype(np.int32)
    corrupted = clean.copy()
    corrupted[:, args.tokens // 3] = rng.integers(0, 50257, args.prompts)
    r = bench(
        "gpt2-small-shaped (random)",
        ModelAdapter(gpt2_small()),
        clean,
        corrupted,
        args.skip_naive,
        args.repeats,
    )
    results["runs"].append(r)
    print(json.dumps(r), flush=True)

    demo = Path(__file__).resolve().parent.parent / "datasets" / "demo-model"
    if (demo / "config.json").exists():
        from patchsweep.pipeline.datasets import read_dataset
        from patchsweep.pipeline.loading import load_model
        from patchsweep.pipeline.tokenization import tokenize_dataset

        lm = load_model(demo)
        td = tokenize_dataset(read_dataset(demo.parent / "ioi.jsonl"), lm.tokenizer)
        lengths = td.lengths("clean")
        T = int(np.bincount(lengths).argmax())
        idx = np.nonzero((lengths == T) & (td.lengths("corrupted") == T))[0][
            : max(args.prompts, 64)
        ]
        c = np.stack([td.ids("clean", int(i)) for i in idx]).astype(np.int32)
        k = np.stack([td.ids("corrupted", int(i)) for i in idx]).astype(np.int32)
        r = bench("demo model, ioi", lm.adapter, c, k, args.skip_naive, args.demo_repeats)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
