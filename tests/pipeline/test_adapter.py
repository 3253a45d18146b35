"""ModelAdapter on every supported architecture; expected values come from the unwrapped model's own forward pass."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from patchsweep.pipeline.adapter import Forward, ModelAdapter, PrefixKVCache, SiteWrite
from patchsweep.stores.errors import ModelAdapterError
from patchsweep.stores.sites import SiteKind
from tests.tiny_models import ARCHITECTURES, random_tokens, tiny_model

KINDS = [
    SiteKind.RESID_PRE,
    SiteKind.ATTN_OUT,
    SiteKind.MLP_OUT,
    SiteKind.RESID_POST,
    SiteKind.HEAD,
]
ADDITIVE = {"llama", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox", "starcoder2", "llama_4bit"}
B, L = 3, 9


def close(a, b, tol=2e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-6)
    np.testing.assert_allclose(a, b, atol=tol * scale, rtol=0)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request):
    arch = request.param
    model = tiny_model(arch)
    tokens = random_tokens(B, L, seed=1)
    reference = model(tokens)  # before wrapping
    mx.eval(reference)
    adapter = ModelAdapter(model)
    every = {(k, layer): None for k in KINDS for layer in range(adapter.n_layers)}
    res = adapter.forward(tokens, Forward(reads=every))
    mx.eval(res.logits, res.sites)
    return arch, adapter, tokens, reference, res


def test_forward_reading_sites_leaves_logits_unchanged(setup):
    _, _, _, reference, res = setup
    close(res.logits, reference, tol=1e-6)


def test_forward_records_site_shapes(setup):
    _, adapter, _, _, res = setup
    assert res.sites[(SiteKind.RESID_PRE, 0)].shape == (B, L, adapter.d_model)
    assert res.sites[(SiteKind.HEAD, 1)].shape == (B, L, adapter.n_heads, adapter.d_head)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_overwrite_with_own_value_leaves_logits_unchanged(setup, kind):
    _, adapter, tokens, reference, res = setup
    layer = 1
    acts = res.sites[(kind, layer)]
    rows = mx.array(np.repeat(np.arange(B), L))
    pos = mx.array(np.tile(np.arange(L), B))
    if kind is SiteKind.HEAD:
        head = mx.array(np.full(B * L, adapter.n_heads - 1))
        write = SiteWrite(kind, layer, rows, pos, acts[rows, pos, head], heads=head)
    else:
        write = SiteWrite(kind, layer, rows, pos, acts[rows, pos])
    out = adapter.forward(tokens, Forward(writes=[write])).logits
    close(out, reference, tol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_overwrite_changes_only_its_row_and_later_positions(setup, kind):
    _, adapter, tokens, reference, res = setup
    p = 4
    shape = res.sites[(kind, 1)].shape[2:]
    value = (
        mx.random.normal(
            (1, *shape[1:]) if kind is SiteKind.HEAD else (1, *shape), key=mx.random.key(3)
        )
        * 10
    )
    heads = mx.array([0]) if kind is SiteKind.HEAD else None
    write = SiteWrite(kind, 1, mx.array([1]), mx.array([p]), value, heads=heads)
    out = np.asarray(adapter.forward(tokens, Forward(writes=[write])).logits)
    ref = np.asarray(reference)
    close(out[[0, 2]], ref[[0, 2]], tol=1e-5)  # other rows untouched
    close(out[1, :p], ref[1, :p], tol=1e-5)  # causal: earlier positions untouched
    assert np.abs(out[1, p:] - ref[1, p:]).max() > 1e-3


def test_resid_post_is_pre_plus_attn_plus_mlp(setup):
    arch, adapter, _, _, res = setup
    for layer in range(adapter.n_layers):
        s = {k: res.sites[(k, layer)] for k in KINDS}
        attn, mlp = s[SiteKind.ATTN_OUT], s[SiteKind.MLP_OUT]
        if (
            arch not in ADDITIVE
        ):  # gemma2/gemma3/olmo2: outputs are normalised before the residual add
            block = adapter.block(layer)
            attn, mlp = block.post_attention_layernorm(attn), block.post_feedforward_layernorm(mlp)
        close(s[SiteKind.RESID_POST], s[SiteKind.RESID_PRE] + attn + mlp)


def test_head_contributions_sum_to_attn_out(setup):
    _, adapter, _, _, res = setup
    for layer in range(adapter.n_layers):
        contrib = adapter.head_contributions(layer, res.sites[(SiteKind.HEAD, layer)]).sum(axis=2)
        proj = adapter.output_projection(layer)
        if "bias" in proj:
            contrib = contrib + proj.bias
        close(contrib, res.sites[(SiteKind.ATTN_OUT, layer)])


@pytest.mark.parametrize("start", [0, 1, 2])
def test_forward_start_at_layer_reproduces_logits(setup, start):
    _, adapter, tokens, reference, res = setup
    resid = res.sites[(SiteKind.RESID_PRE, start)]
    dummy = mx.zeros_like(tokens)  # tokens below the start layer are never used
    out = adapter.forward(dummy, Forward(start_layer=start, start_resid=resid)).logits
    close(out, reference)


@pytest.mark.parametrize("cache_kind", ["mlx_lm", "prefix"])
def test_forward_prefix_cache_then_suffix_reproduces_logits(setup, cache_kind):
    _, adapter, tokens, reference, _ = setup
    p = 5
    if cache_kind == "mlx_lm":
        cache = adapter.make_cache()
        adapter.forward(tokens[:, :p], cache=cache)
    else:
        full = [PrefixKVCache() for _ in range(adapter.n_layers)]
        mx.eval(adapter.forward(tokens[:, :p], cache=full).logits)
        cache = [PrefixKVCache(c.keys, c.values) for c in full]
    out = adapter.forward(tokens[:, p:], cache=cache).logits
    close(out, reference[:, p:])


def test_forward_unembed_last_only(setup):
    _, adapter, tokens, reference, _ = setup
    out = adapter.forward(tokens, Forward(unembed="last")).logits
    assert out.shape == (B, 1, reference.shape[-1])
    close(out[:, 0], reference[:, -1])


def _mlp_input_lengths(adapter, layer):
    """Record the sequence length every call of block ``layer``'s MLP sees."""
    hook = next(
        h
        for h in adapter.model.layers[layer].inner.children().values()
        if getattr(h, "_kind", None) == "mlp"
    )
    seen, inner = [], hook.inner

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def __call__(self, x, *args, **kwargs):
            seen.append(x.shape[1])
            return self.inner(x, *args, **kwargs)

    hook.inner = Spy()
    return seen, lambda: setattr(hook, "inner", inner)


def test_forward_unembed_last_runs_last_mlp_on_last_position_only(setup):
    _, adapter, tokens, reference, res = setup
    last = adapter.n_layers - 1
    seen, restore = _mlp_input_lengths(adapter, last)
    try:
        out = adapter.forward(tokens, Forward(unembed="last")).logits
        mx.eval(out)
        assert seen == [1]
        close(out[:, 0], reference[:, -1])
        # a read in the last block needs every position: no pruning, exact sites
        got = adapter.forward(
            tokens, Forward(reads={(SiteKind.MLP_OUT, last): None}, unembed="last")
        )
        mx.eval(got.logits, got.sites)
        assert seen == [1, L]
        close(got.sites[(SiteKind.MLP_OUT, last)], res.sites[(SiteKind.MLP_OUT, last)], tol=1e-6)
        close(got.logits[:, 0], reference[:, -1])
    finally:
        restore()


def test_forward_without_logits_stops_after_deepest_site(setup):
    _, adapter, tokens, _, res = setup
    got = adapter.forward(tokens, Forward(reads={(SiteKind.MLP_OUT, 0): None}, logits=False))
    assert got.logits is None
    close(got.sites[(SiteKind.MLP_OUT, 0)], res.sites[(SiteKind.MLP_OUT, 0)], tol=1e-6)


def test_forward_reads_selected_positions(setup):
    _, adapter, tokens, _, res = setup
    idx = mx.array([[0, 8], [3, 3], [7, 1]])
    got = adapter.forward(
        tokens,
        Forward(reads={(SiteKind.RESID_POST, 2): idx, (SiteKind.HEAD, 2): idx}, logits=False),
    ).sites
    full = np.asarray(res.sites[(SiteKind.RESID_POST, 2)])
    close(
        got[(SiteKind.RESID_POST, 2)],
        np.stack([full[b, np.asarray(idx[b])] for b in range(B)]),
        tol=1e-6,
    )
    assert got[(SiteKind.HEAD, 2)].shape == (B, 2, adapter.n_heads, adapter.d_head)


def test_adapter_rejects_model_without_layers():
    class NoLayers(nn.Module):
        pass

    with pytest.raises(ModelAdapterError, match="no `layers` list"):
        ModelAdapter(NoLayers())


def test_adapter_rejects_block_without_attention():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = nn.Linear(4, 4)
            self.mlp = nn.Linear(4, 4)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [Block()]

    with pytest.raises(ModelAdapterError, match="has no attention module"):
        ModelAdapter(Odd())


def test_forward_rejects_site_below_start_layer(setup):
    _, adapter, tokens, _, res = setup
    with pytest.raises(ModelAdapterError, match="below start_layer"):
        adapter.forward(
            tokens,
            Forward(
                reads={(SiteKind.MLP_OUT, 0): None},
                start_layer=1,
                start_resid=res.sites[(SiteKind.RESID_PRE, 1)],
            ),
        )
