"""PatchEngine against the naive one-forward-per-patch reference, on random models and prompts.

Expected values come from :func:`naive_patch` (full float32 forward per patch, in-memory
source activations) and from closed-form known answers (restoring every position of
``resid_pre.0`` gives the clean run; patching nothing gives the base run).
"""

import mlx.core as mx
import numpy as np
import pytest

from patchsweep.pipeline.adapter import Forward, ModelAdapter
from patchsweep.pipeline.patch_engine import PatchBatch, PatchEngine, PatchEntry
from patchsweep.pipeline.patch_reference import naive_patch
from patchsweep.pipeline.scoring import score
from patchsweep.stores.metrics import Metric
from patchsweep.stores.sites import Position, SiteKind
from tests.tiny_models import VOCAB, random_tokens, tiny_model

METRICS = tuple(Metric)
KINDS = [SiteKind.RESID_PRE, SiteKind.ATTN_OUT, SiteKind.MLP_OUT, SiteKind.RESID_POST]
B, T = 3, 7
ROLE = {"subj": np.array([2, 4, 1]), "last": np.full(B, T - 1)}


def run_all(adapter, tokens, noise=None):
    reads = {(k, layer): None for k in [*KINDS, SiteKind.HEAD] for layer in range(adapter.n_layers)}
    writes = []
    if noise is not None:
        from patchsweep.pipeline.patch_engine import noise_write

        writes = noise_write(
            PatchBatch(np.asarray(tokens), None, None, None, None, None, None, noise)
        )
    res = adapter.forward(mx.array(tokens), Forward(reads=reads, writes=writes))
    mx.eval(res.logits, res.sites)
    return {k: np.array(v) for k, v in res.sites.items()}, np.array(res.logits[:, -1])


def positions(p: Position) -> np.ndarray:
    return ROLE[p.role] if p.is_role else np.full(B, p.index if p.index < T else -1)


def make_batch(adapter, direction="denoise", noise=False, seed=0):
    clean = np.array(random_tokens(B, T, seed=seed + 10))
    corrupted = np.array(random_tokens(B, T, seed=seed + 11))
    rng = np.random.default_rng(seed)
    noise_spec = None
    if noise:
        corrupted = clean
        rows = np.array([0, 0, 1, 2, 2, 2])  # spans of different lengths per prompt
        pos = np.array([2, 3, 4, 0, 1, 2])
        noise_spec = (
            rows,
            pos,
            rng.normal(0, 3.0, (len(rows), adapter.d_model)).astype(np.float32),
        )
    clean_sites, clean_logits = run_all(adapter, clean)
    corr_sites, corr_logits = run_all(adapter, corrupted, noise_spec)
    src, base, base_noise = (
        (clean_sites, corrupted, noise_spec)
        if direction == "denoise"
        else (corr_sites, clean, None)
    )
    if direction == "noise" and noise:
        pytest.skip("noising with a noise-corrupted source is not a defined experiment")
    batch = PatchBatch(
        base_tokens=base,
        source=lambda kind, layer: src[(kind, layer)],
        base_pos=positions,
        source_pos=positions,
        answer=rng.integers(0, VOCAB, B),
        wrong=rng.integers(0, VOCAB, B),
        clean_logits=clean_logits,
        noise=base_noise,
    )
    return batch, clean_logits, corr_logits


def sweep_items(adapter, heads=(0, 3)):
    items = [
        (PatchEntry(k, layer, Position(index=p)),)
        for k in KINDS
        for layer in range(adapter.n_layers)
        for p in range(T)
    ]
    items += [
        (PatchEntry(SiteKind.HEAD, layer, Position(index=p), head=h),)
        for layer in range(adapter.n_layers)
        for p in (0, 3, T - 1)
        for h in heads
    ]
    items += [(PatchEntry(k, 1, Position(role="subj")),) for k in KINDS]
    items += [
        (
            PatchEntry(SiteKind.MLP_OUT, 0, Position(role="subj")),
            PatchEntry(SiteKind.MLP_OUT, 1, Position(role="subj")),
        ),
        (
            PatchEntry(SiteKind.RESID_PRE, 2, Position(index=5)),
            PatchEntry(SiteKind.HEAD, 1, Position(index=3), head=1),
            PatchEntry(SiteKind.ATTN_OUT, 0, Position(role="last")),
        ),
    ]
    return items


def assert_close(got, want, tol=1e-4, scale_from=None):
    """Relative agreement per metric, scaled by the metric's magnitude across all patches
    (or across ``scale_from``, for values that are exactly 0 such as distances to the clean run)."""
    assert np.isnan(got).sum() == np.isnan(want).sum()
    ref = want if scale_from is None else scale_from
    for m in range(got.shape[-1]):
        g, w = got[..., m], want[..., m]
        scale = max(np.nanmax(np.abs(ref[..., m])), 1e-6)
        np.testing.assert_allclose(
            g, w, atol=tol * scale, rtol=tol, equal_nan=True, err_msg=f"metric {METRICS[m]}"
        )


@pytest.fixture(
    scope="module", params=["llama", "gpt2", "gemma2", "llama_4bit", "gemma3_text", "qwen3"]
)
def adapter(request):
    return ModelAdapter(tiny_model(request.param, seed=5))


@pytest.mark.parametrize(
    "direction,noise", [("denoise", False), ("noise", False), ("denoise", True)]
)
def test_engine_matches_naive_reference(adapter, direction, noise):
    batch, _, _ = make_batch(adapter, direction, noise)
    items = sweep_items(adapter)
    engine = PatchEngine(adapter, METRICS, max_rows=16)  # small: forces several forwards per group
    got = engine.run(batch, items).values
    want = naive_patch(adapter, batch, items, METRICS)
    assert_close(got, want)


def test_engine_baseline_is_base_run(adapter):
    batch, clean_logits, corr_logits = make_batch(adapter)
    result = PatchEngine(adapter, METRICS).run(batch, [])
    want = np.array(
        score(
            mx.array(corr_logits),
            mx.array(batch.answer),
            mx.array(batch.wrong),
            mx.array(clean_logits),
            METRICS,
        )
    )
    assert_close(result.baseline[None], want[None])


def test_engine_restoring_all_of_resid_pre_0_gives_clean_run(adapter):
    batch, clean_logits, _ = make_batch(adapter, noise=True)
    item = tuple(PatchEntry(SiteKind.RESID_PRE, 0, Position(index=p)) for p in range(T))
    result = PatchEngine(adapter, METRICS).run(batch, [item])
    want = np.array(
        score(
            mx.array(clean_logits),
            mx.array(batch.answer),
            mx.array(batch.wrong),
            mx.array(clean_logits),
            METRICS,
        )
    )
    assert_close(result.values, want[None], scale_from=np.stack([want, result.baseline])[:, None])
    kl = result.values[0, :, METRICS.index(Metric.KL)]
    assert np.all(np.abs(kl) < 1e-4 * np.abs(result.baseline[:, METRICS.index(Metric.KL)]).max())


def test_engine_marks_missing_positions_nan(adapter):
    batch, _, _ = make_batch(adapter)
    got = (
        PatchEngine(adapter, METRICS)
        .run(batch, [(PatchEntry(SiteKind.RESID_PRE, 0, Position(index=T + 2)),)])
        .values
    )
    assert np.isnan(got).all()


@pytest.mark.parametrize("noise", [False, True])
def test_engine_skips_noop_patches_before_the_first_difference(adapter, noise):
    """Prompts whose runs share a prefix (different per prompt): patches inside it are answered
    with the base run's metrics, not computed, and still match the naive reference."""
    batch, _, _ = make_batch(adapter, "denoise", noise, seed=3)
    if noise:  # runs differ from each prompt's first noised position on (rows 0, 1, 2: 2, 4, 0)
        same = np.array([2, 4, 0])
    else:  # corrupt one token per prompt, at positions 3, 5, 1
        clean = np.array(random_tokens(B, T, seed=13))
        same = np.array([3, 5, 1])
        corrupted = clean.copy()
        corrupted[np.arange(B), same] = (corrupted[np.arange(B), same] + 1) % VOCAB
        clean_sites, clean_logits = run_all(adapter, clean)
        batch.base_tokens, batch.clean_logits = corrupted, clean_logits
        batch.source = lambda kind, layer: clean_sites[(kind, layer)]
    batch.noop = lambda p: (positions(p) >= 0) & (positions(p) < same)
    items = sweep_items(adapter)
    engine = PatchEngine(adapter, METRICS, max_rows=16)
    got = engine.run(batch, items)
    want = naive_patch(adapter, batch, items, METRICS)
    assert_close(got.values, want)
    full = PatchEngine(adapter, METRICS, max_rows=16, skip_noops=False)
    computed = full.run(batch, items)
    assert_close(got.values, computed.values)
    # the skipped pairs are exactly the (item, prompt) pairs inside each prompt's shared prefix
    expected = sum(
        int(np.all([batch.noop(e.position)[b] for e in item])) for item in items for b in range(B)
    )
    assert engine.stats["noops"] == expected > 0
    assert engine.stats["rows"] == full.stats["rows"] - expected
    assert engine.stats["token_layers"] < full.stats["token_layers"]
    noop_pairs = [
        (i, b)
        for i, item in enumerate(items)
        for b in range(B)
        if all(batch.noop(e.position)[b] for e in item)
    ]
    for i, b in noop_pairs:
        np.testing.assert_array_equal(got.values[i, b], got.baseline[b])
    # a caller's recorded baseline (e.g. scored from captured logits) is returned exactly
    batch.baseline = got.baseline + np.float32(1e-3)
    again = PatchEngine(adapter, METRICS, max_rows=16).run(batch, items).values
    for i, b in noop_pairs:
        np.testing.assert_array_equal(again[i, b], batch.baseline[b])


def test_engine_computes_fewer_token_layers_than_naive(adapter):
    batch, _, _ = make_batch(adapter)
    items = [
        (PatchEntry(SiteKind.RESID_PRE, layer, Position(index=p)),)
        for layer in range(adapter.n_layers)
        for p in range(T)
    ]
    engine = PatchEngine(adapter, METRICS)
    engine.run(batch, items)
    naive = len(items) * B * T * adapter.n_layers
    assert engine.stats["token_layers"] < 0.75 * naive


@pytest.mark.parametrize("dataset", ["ioi", "facts", "induction"])
def test_engine_matches_naive_reference_on_the_demo_model(dataset):
    """The shipped demo model on real prompts of each shipped dataset (one same-length bucket)."""
    from patchsweep.pipeline.datasets import read_dataset
    from patchsweep.pipeline.loading import DEMO_MODEL, load_model
    from patchsweep.pipeline.tokenization import tokenize_dataset

    lm = load_model(DEMO_MODEL)
    td = tokenize_dataset(read_dataset(DEMO_MODEL.parent / f"{dataset}.jsonl"), lm.tokenizer)
    lengths = td.lengths("clean")
    T = int(np.bincount(lengths).argmax())
    idx = np.nonzero((lengths == T) & (td.lengths("corrupted") == T))[0][:4]
    clean = np.stack([td.ids("clean", int(i)) for i in idx])
    corrupted = np.stack([td.ids("corrupted", int(i)) for i in idx])
    adapter = lm.adapter
    clean_sites, clean_logits = run_all(adapter, clean)
    role_pos = td.role_pos("clean")[idx]

    def pos(p):
        return (
            role_pos[:, td.roles.index(p.role)]
            if p.is_role
            else np.full(len(idx), p.index if p.index < T else -1)
        )

    batch = PatchBatch(
        corrupted,
        lambda k, layer: clean_sites[(k, layer)],
        pos,
        pos,
        td.answer_id[idx],
        td.wrong_id[idx],
        clean_logits,
    )
    L = adapter.n_layers
    items = [
        (PatchEntry(k, layer, Position(index=p)),)
        for k in KINDS
        for layer in range(L)
        for p in range(T)
    ]
    items += [
        (PatchEntry(SiteKind.HEAD, layer, Position(role="last"), head=h),)
        for layer in range(L)
        for h in range(adapter.n_heads)
    ]
    items += [(PatchEntry(SiteKind.RESID_PRE, 0, Position(role=r)),) for r in td.roles]
    got = PatchEngine(adapter, METRICS, max_rows=64).run(batch, items).values
    want = naive_patch(adapter, batch, items, METRICS)
    assert_close(got, want)
