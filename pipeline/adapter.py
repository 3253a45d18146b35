"""Read and overwrite activation sites of any mlx-lm decoder model, architecture-agnostically.

The adapter never re-implements a model. It wraps four kinds of module in place, once:

- each decoder block (``model.layers[l]``): its input is ``resid_pre`` and its output
  ``resid_post``;
- the block's attention module (``self_attn`` / ``attn`` / ``attention``): output ``attn_out``;
- the block's MLP (``mlp`` / ``feed_forward``): output ``mlp_out``;
- the attention output projection (``o_proj`` / ``c_proj`` / ``dense`` / ``out_proj``): its
  input, viewed as ``(B, L, n_heads, d_head)``, is the ``head`` site. Head ``h``'s contribution
  to ``attn_out`` is that slice times the projection's columns ``h*d_head:(h+1)*d_head``; with
  grouped-query attention, query head ``h`` reads key/value head ``h // (n_heads/n_kv_heads)``.

The model's own ``__call__`` then runs unchanged (embedding scaling, position embeddings,
masks, final norm, logit soft-capping all stay the model's), and the wrappers, when a
:class:`Forward` request is active, read sites, overwrite rows of them, skip the blocks below
a start layer (the forward pass then *starts* at layer ``l`` from a given residual stream),
stop after the deepest block a request needs, and cut the last block's output to the
positions that must be unembedded, so the final norm and unembedding run on those alone.
When only the last position is unembedded (and nothing is read in the last block), the last
block's MLP and attention output projection run on that position alone: the other positions'
outputs of the last block feed nothing (their keys and values, computed from the block's
input, are still computed for the last position's attention).

Where the block is of the form ``x + attn(.) + mlp(.)`` (llama, qwen, phi3, gpt2, gpt_neox,
starcoder2), ``resid_post = resid_pre + attn_out + mlp_out``. Blocks with post-norms (gemma2,
gemma3, olmo2) add a normalised ``attn_out``; there ``attn_out`` is still the attention
module's own output, as in TransformerLens.

Positions given to reads and writes index the *current input window*: with a KV cache of
``offset`` earlier positions, window index ``i`` is absolute position ``offset + i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from patchsweep.stores.errors import ModelAdapterError
from patchsweep.stores.sites import SiteKind

from .compute import dense_weight

__all__ = ["ModelAdapter", "Forward", "SiteWrite", "ForwardResult", "PrefixKVCache"]

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_OPROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj", "wo")


@dataclass(frozen=True)
class SiteWrite:
    """Overwrite (or add to) rows of one site during a forward pass.

    Parameters
    ----------
    kind, layer
        The site.
    rows : mx.array, int, shape (n,)
        Batch rows written.
    positions : mx.array, int, shape (n,)
        Window positions written, one per row entry.
    values : mx.array, shape (n, d_model) or, for ``head``, (n, d_head)
        The new values (one vector per entry: different per batch row).
    heads : mx.array, int, shape (n,), optional
        Head index per entry; required for ``head`` writes.
    add : bool
        Add ``values`` instead of replacing (used for noise corruption).
    """

    kind: SiteKind
    layer: int
    rows: mx.array
    positions: mx.array
    values: mx.array
    heads: mx.array | None = None
    add: bool = False


@dataclass
class Forward:
    """One forward request.

    Parameters
    ----------
    reads : dict (kind, layer) -> positions or None
        Sites to record. ``None`` records every window position, shape (B, L, D) (or
        (B, L, H, d_head) for heads); an int array of shape (B, k) records those positions
        per row, shape (B, k, D).
    writes : list of SiteWrite
    start_layer, start_resid : int, mx.array (B, L, D)
        Start the pass at block ``start_layer`` with ``start_resid`` as its input; blocks
        below are skipped (their KV caches, if any, are left as given).
    joins : dict layer -> mx.array (R_l, L, D)
        Staggered start, the general form of ``start_layer``/``start_resid``: rows
        ``joins[l]`` enter the batch at block ``l``, appended after the rows already running,
        so block ``j`` computes every row that joined at or below ``j``. Each block's KV cache
        must hold exactly those rows. Row indices of writes and reads refer to this final
        order (rows joining lower come first).
    unembed : None | "last" | mx.array (B, k)
        Which window positions reach the final norm and unembedding. ``None``: all.
    logits : bool
        False stops after the deepest block a read or write needs (no logits computed).
    """

    reads: dict = field(default_factory=dict)
    writes: list = field(default_factory=list)
    start_layer: int = 0
    start_resid: mx.array | None = None
    joins: dict = field(default_factory=dict)
    unembed: object = None
    logits: bool = True
    recorded: dict = field(default_factory=dict)
    _writes_at: dict = field(default_factory=dict)
    _joins: dict = field(default_factory=dict)
    _first: int = 0
    _prune_last: bool = False
    stop_after: int | None = None


@dataclass(frozen=True)
class ForwardResult:
    """Logits (B, k, vocab), or None when not computed, and the recorded sites."""

    logits: mx.array | None
    sites: dict


class _Stop(Exception):
    """Raised inside the model once every requested site is computed and no logits are needed."""


class PrefixKVCache(KVCache):
    """A KV cache holding a fixed prefix; new keys/values are concatenated, never padded.

    mlx-lm's ``KVCache`` grows in steps of 256 positions (zero-filled); for the patch stage's
    many short suffix passes over a shared prefix that allocation dominates, so this cache
    appends exactly. ``keys``/``values``: (B, n_kv_heads, offset, d_head).
    """

    def __init__(self, keys: mx.array | None = None, values: mx.array | None = None):
        super().__init__()
        if keys is not None and keys.shape[2] > 0:
            self.keys, self.values, self.offset = keys, values, keys.shape[2]

    def update_and_fetch(self, keys, values):
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self.offset = self.keys.shape[2]
        return self.keys, self.values


def _set_rows(x: mx.array, w: SiteWrite, value: mx.array) -> mx.array:
    out = mx.array(x)  # copy: setitem on mlx arrays mutates every alias of the object
    if w.heads is None:
        out[w.rows, w.positions] = out[w.rows, w.positions] + value if w.add else value
    else:
        out[w.rows, w.positions, w.heads] = (
            out[w.rows, w.positions, w.heads] + value if w.add else value
        )
    return out


class _Hook(nn.Module):
    """Pass-through wrapper around one module; active only while a Forward is installed."""

    def __init__(self, inner: nn.Module, adapter: ModelAdapter, kind: str, layer: int):
        super().__init__()
        self.inner = inner
        self._adapter = adapter
        self._kind = kind
        self._layer = layer

    def __getattr__(self, key: str):
        # Model loops read block attributes (e.g. `layer.use_sliding`): delegate to the wrapped module.
        try:
            return super().__getattr__(key)
        except AttributeError:
            if "inner" not in self:
                raise
            return getattr(self["inner"], key)

    def __call__(self, *args, **kwargs):
        fwd = self._adapter._active
        if fwd is None:
            return self.inner(*args, **kwargs)
        return getattr(self, f"_call_{self._kind}")(fwd, *args, **kwargs)

    def _call_block(self, fwd: Forward, x, *args, **kwargs):
        layer = self._layer
        if fwd._joins:
            if layer < fwd._first:
                return x  # skipped: nothing runs below the first joining rows
            if layer == fwd._first:
                x = fwd._joins[layer]
            elif layer in fwd._joins:
                x = mx.concatenate([x, fwd._joins[layer]], axis=0)  # (R_{<=l}, L, D)
        x = self._adapter._visit(fwd, SiteKind.RESID_PRE, layer, x)
        out = self.inner(x, *args, **kwargs)
        out = self._adapter._visit(fwd, SiteKind.RESID_POST, layer, out)
        if fwd.stop_after is not None and layer >= fwd.stop_after:
            raise _Stop
        if layer == self._adapter.n_layers - 1 and fwd.unembed is not None:
            out = _take_positions(out, fwd.unembed)
        return out

    def _call_attn(self, fwd: Forward, *args, **kwargs):
        return self._adapter._visit(
            fwd, SiteKind.ATTN_OUT, self._layer, self.inner(*args, **kwargs)
        )

    def _call_mlp(self, fwd: Forward, x, *args, **kwargs):
        y = self._last_only(fwd, x, *args, **kwargs)
        return self._adapter._visit(fwd, SiteKind.MLP_OUT, self._layer, y)

    def _last_only(self, fwd: Forward, x, *args, **kwargs):
        """The wrapped position-wise module on ``x`` (B, L, ...), computed at the last position
        alone (zeros elsewhere) when the request's last block needs only that position."""
        L = x.shape[1]
        if not (fwd._prune_last and self._layer == self._adapter.n_layers - 1 and L > 1):
            return self.inner(x, *args, **kwargs)
        y = self.inner(x[:, -1:], *args, **kwargs)  # (B, 1, D)
        return mx.concatenate([mx.zeros((y.shape[0], L - 1, *y.shape[2:]), y.dtype), y], axis=1)

    def _call_oproj(self, fwd: Forward, x, *args, **kwargs):
        key = (SiteKind.HEAD, self._layer)
        if key in fwd.reads or key in fwd._writes_at:
            B, L, _ = x.shape
            heads = x.reshape(B, L, self._adapter.n_heads, -1)  # (B, L, H, d_head)
            heads = self._adapter._visit(fwd, SiteKind.HEAD, self._layer, heads)
            x = heads.reshape(B, L, -1)
        return self._last_only(fwd, x, *args, **kwargs)


def _take_positions(x: mx.array, positions) -> mx.array:
    if isinstance(positions, str):  # "last"
        return x[:, -1:, :]
    idx = positions.astype(mx.int32)  # (B, k)
    return mx.take_along_axis(x, idx[..., None], axis=1)  # (B, k, D)


def _layer_storage(model: nn.Module, layers: list) -> list:
    """The list object that really holds the blocks (``model.layers`` may return a fresh slice)."""
    stack = [model]
    while stack:
        module = stack.pop()
        for child in module.values():  # the module's own dict: children() returns copies
            if isinstance(child, list) and any(c is layers[0] for c in child):
                return child
            if isinstance(child, nn.Module):
                stack.append(child)
    raise ModelAdapterError(
        f"Cannot adapt {type(model).__name__}: its `layers` are not held in any sub-module list."
    )


def _find(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = module.children()
    return next((n for n in names if n in children and isinstance(children[n], nn.Module)), None)


class ModelAdapter:
    """Site access for one mlx-lm decoder model (wraps its modules in place, once).

    Parameters
    ----------
    model : nn.Module
        An mlx-lm ``Model`` (anything with ``.layers`` and ``__call__(tokens, cache=...)``).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._active: Forward | None = None
        layers = getattr(model, "layers", None)
        model_type = getattr(getattr(model, "args", None), "model_type", type(model).__module__)
        if not isinstance(layers, list) or not layers:
            raise ModelAdapterError(
                f"Cannot adapt model type {model_type!r}: it has no `layers` list of decoder blocks."
            )
        self.model_type = model_type
        self.n_layers = len(layers)
        self.n_heads = self.n_kv_heads = self.d_head = None
        storage = _layer_storage(model, layers)
        for i, block in enumerate(list(layers)):
            if isinstance(block, _Hook):
                raise ModelAdapterError(
                    "This model is already wrapped by a ModelAdapter; reuse that adapter."
                )
            attn_name, mlp_name = _find(block, _ATTN_NAMES), _find(block, _MLP_NAMES)
            missing = [
                what
                for what, name in (("attention module", attn_name), ("MLP module", mlp_name))
                if name is None
            ]
            attn = block.children()[attn_name] if attn_name else None
            oproj_name = _find(attn, _OPROJ_NAMES) if attn is not None else None
            if attn is not None and oproj_name is None:
                missing.append("attention output projection")
            if missing:
                raise ModelAdapterError(
                    f"Cannot adapt model type {model_type!r}: block {i} ({type(block).__name__}) has no {', no '.join(missing)}. "
                    f"Looked for attention in {_ATTN_NAMES}, MLP in {_MLP_NAMES}, output projection in {_OPROJ_NAMES}; "
                    f"block children are {sorted(block.children())}."
                )
            if i == 0:
                self._read_head_shape(attn, attn.children()[oproj_name], model_type)
            setattr(attn, oproj_name, _Hook(attn.children()[oproj_name], self, "oproj", i))
            setattr(block, attn_name, _Hook(attn, self, "attn", i))
            setattr(block, mlp_name, _Hook(block.children()[mlp_name], self, "mlp", i))
            storage[next(j for j, b in enumerate(storage) if b is block)] = _Hook(
                block, self, "block", i
            )
        self.d_model = self._embedding_dim()

    def _read_head_shape(self, attn: nn.Module, oproj: nn.Module, model_type: str) -> None:
        args = getattr(self.model, "args", None)
        n_heads = next(
            (
                getattr(src, n)
                for src in (attn, args)
                for n in ("n_heads", "num_heads", "num_attention_heads", "n_head")
                if isinstance(getattr(src, n, None), int)
            ),
            None,
        )
        if n_heads is None:
            raise ModelAdapterError(
                f"Cannot adapt model type {model_type!r}: found no head count (n_heads / num_attention_heads) on its attention module or args."
            )
        n_kv = next(
            (
                getattr(src, n)
                for src in (attn, args)
                for n in ("n_kv_heads", "num_key_value_heads", "num_kv_heads")
                if isinstance(getattr(src, n, None), int)
            ),
            n_heads,
        )
        in_dim = _in_features(oproj)
        if in_dim % n_heads:
            raise ModelAdapterError(
                f"Cannot adapt model type {model_type!r}: output projection input {in_dim} is not divisible by {n_heads} heads."
            )
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv, in_dim // n_heads

    def _embedding_dim(self) -> int:
        args = getattr(self.model, "args", None)
        for name in ("hidden_size", "n_embd", "d_model", "dim"):
            if isinstance(getattr(args, name, None), int):
                return getattr(args, name)
        raise ModelAdapterError(
            f"Cannot adapt model type {self.model_type!r}: found no model width (hidden_size / n_embd) in its args."
        )

    @property
    def vocab_size(self) -> int:
        args = self.model.args
        return getattr(args, "vocab_size", None) or args.n_vocab

    def block(self, layer: int) -> nn.Module:
        """The original (unwrapped) decoder block ``layer``."""
        return self.model.layers[layer].inner

    def output_projection(self, layer: int) -> nn.Module:
        """The original attention output projection of block ``layer`` (for head contributions)."""
        for hook in self.model.layers[layer].inner.children().values():
            if isinstance(hook, _Hook) and hook._kind == "attn":
                for sub in hook.inner.children().values():
                    if isinstance(sub, _Hook) and sub._kind == "oproj":
                        return sub.inner
        raise ModelAdapterError(f"block {layer} has no wrapped output projection")

    def head_contributions(self, layer: int, heads: mx.array) -> mx.array:
        """Each head's contribution to ``attn_out``: (B, L, H, d_head) -> (B, L, H, d_model).

        Their sum over heads plus the projection's bias equals the projection's output.
        """
        proj = self.output_projection(layer)
        B, L, H, dh = heads.shape
        w = dense_weight(proj).reshape(-1, H, dh)  # (D, H, dh)
        return mx.einsum("blhe,dhe->blhd", heads, w)

    def make_cache(self) -> list:
        """A fresh mlx-lm prompt cache for this model (a list, one entry per block)."""
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.model)

    def forward(
        self, tokens: mx.array, request: Forward | None = None, cache: list | None = None
    ) -> ForwardResult:
        """Run the model on ``tokens`` (B, L) under ``request``.

        Returns logits for the unembedded positions (B, k, vocab) and the recorded sites.
        Nothing is evaluated here: the caller batches ``mx.eval`` over its outputs.
        """
        request = request or Forward()
        self._validate(request, tokens)
        request.recorded = {}
        request._writes_at = {}
        request._joins = dict(request.joins)
        if request.start_resid is not None:
            request._joins[request.start_layer] = request.start_resid
        request._first = min(request._joins) if request._joins else 0
        for w in request.writes:
            request._writes_at.setdefault((SiteKind(w.kind), w.layer), []).append(w)
        if not request.logits:
            needed = [layer for _, layer in (*request.reads, *request._writes_at)]
            request.stop_after = max(needed) if needed else request._first
        last = self.n_layers - 1
        request._prune_last = (
            request.logits
            and isinstance(request.unembed, str)  # "last"
            and not any(
                layer == last and kind != SiteKind.RESID_PRE for kind, layer in request.reads
            )
        )
        self._active = request
        try:
            logits = self.model(tokens, cache=cache)
        except _Stop:
            logits = None
        finally:
            self._active = None
        return ForwardResult(logits=logits, sites=request.recorded)

    def _validate(self, request: Forward, tokens: mx.array) -> None:
        if request.joins and (request.start_resid is not None or request.start_layer):
            raise ModelAdapterError("Give either joins or start_layer/start_resid, not both.")
        starts = list(request.joins) or [request.start_layer]
        if not all(0 <= s < self.n_layers for s in starts):
            raise ModelAdapterError(f"start layer(s) {starts} outside 0..{self.n_layers - 1}.")
        if request.start_layer > 0 and request.start_resid is None:
            raise ModelAdapterError(
                f"start_layer {request.start_layer} needs start_resid, the residual stream entering that block."
            )
        first = min(starts)
        for kind, layer in (*request.reads, *((w.kind, w.layer) for w in request.writes)):
            if not 0 <= layer < self.n_layers:
                raise ModelAdapterError(
                    f"site {kind}.{layer} is outside layers 0..{self.n_layers - 1}."
                )
            if layer < first:
                raise ModelAdapterError(
                    f"site {kind}.{layer} lies below start_layer {first}; it is never computed."
                )

    def _visit(self, fwd: Forward, kind: SiteKind, layer: int, x: mx.array) -> mx.array:
        for w in fwd._writes_at.get((kind, layer), ()):
            x = _set_rows(x, w, w.values.astype(x.dtype))
        key = (kind, layer)
        if key in fwd.reads:
            positions = fwd.reads[key]
            if positions is None:
                fwd.recorded[key] = x
            else:
                idx = positions.astype(mx.int32)  # (B, k)
                extra = (1,) * (x.ndim - 2)
                fwd.recorded[key] = mx.take_along_axis(x, idx.reshape(*idx.shape, *extra), axis=1)
        return x


def _in_features(linear: nn.Module) -> int:
    if isinstance(linear, nn.QuantizedLinear):
        return linear.weight.shape[1] * 32 // linear.bits
    return linear.weight.shape[1]
