"""The capture stage: run a prompt dataset's clean and corrupted prompts, store the activations.

Activation patching (causal tracing; Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", §2.1; Wang et al. 2022, "Interpretability in the Wild") compares two
runs of one model: a *clean* run on the prompt whose behaviour is studied, and a *corrupted*
run where that behaviour is broken. The patch stage later writes activations of one run into
the other, site by site. This stage makes those sources once: every requested site
(``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``, ``head``) of every requested layer,
of both runs, of every prompt, plus what every metric needs (final-position logits in
float32, answer and wrong token ids), into an :class:`~patchsweep.stores.ActivationStore`.

The corrupted run is either the dataset's corrupted prompt (``corruption=None``) or the clean
prompt with Gaussian noise *added* to the residual stream entering layer 0 at the tokens of one
span (ROME's noise corruption, :class:`~patchsweep.pipeline.corruption.NoiseCorruption`). The
noise std, when not given, is measured first over the span tokens of all clean prompts; the
resolved std and one seed per prompt are recorded so the patch stage regenerates the noise.

Engine: the store's prompt chunks are processed in order, skipping chunks already marked
written (so the same call resumes a killed run and recomputes only what is missing). Inside a
chunk, each run's prompts are bucketed by token length and batched without padding, so
batched activations equal one-prompt-at-a-time ones to float32 rounding and absolute position
embeddings never shift. Each batch is one ``mx.eval``; a finished chunk goes to a background
:class:`~patchsweep.stores.chunk_writer.ChunkWriter` while the next one computes. Blocks above
the deepest requested site are never run when no logits are needed, and only the last position
is unembedded when they are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchsweep.stores.activations import DEFAULT_CODEC, ActivationStore, CaptureLayout
from patchsweep.stores.chunk_writer import ChunkWriter
from patchsweep.stores.dtypes import Codec, StorageDType
from patchsweep.stores.errors import ConfigError, Float16OverflowError, StoreError
from patchsweep.stores.identity import Identity, dataclass_from_dict
from patchsweep.stores.sites import ROLE_PATTERN, SiteKind

from .adapter import ModelAdapter
from .batching import _buckets  # noqa: F401  (benchmarks/bench_capture.py imports it from here)
from .capture_engine import _compute_chunk, _Plan
from .capture_noise import _resolve_noise
from .datasets import PromptDataset, TokenizedDataset, tokenize_dataset
from .progress import StageProgress

__all__ = ["CaptureSpec", "CaptureSummary", "capture"]

RUNS = ("clean", "corrupted")


def _parse_names(value: Any, what: str) -> tuple:
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(
            f"CaptureSpec.{what} must be a list, got {type(value).__name__} {value!r}."
        ) from None


@dataclass(frozen=True)
class CaptureSpec:
    """What the capture stage records, and how.

    Parameters
    ----------
    sites : sequence of SiteKind or str
        Site kinds to capture (``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``, ``head``).
    layers : "all" or sequence of int
        Layers to capture (stored sorted); checked against the model at capture time.
    positions : "all" or sequence of str
        ``"all"`` stores every token position (dim ``pos``, NaN past a prompt's end); a list
        of role names (``last``, ``subject_last``, ...) stores only those (dim ``role``).
    storage_dtype : {"float32", "float16", "bfloat16"}
        On-disk dtype of activations (logits are always float32). float16 overflow is an error.
    chunk_prompts : int or None
        Prompts per store chunk (the unit of writing and of resuming); None picks ~64 MiB.
    batch_size : int
        Prompts per forward pass (prompts of one batch have the same token length).
    logits : bool
        Also compute and store both runs' final-position logits (needed by the patch stage).
    codec : str
        Compression of activation chunks (``none``, ``zstd``, ``blosc-shuffle``, ...).
    """

    sites: tuple[SiteKind, ...] = (SiteKind.RESID_PRE,)
    layers: tuple[int, ...] | str = "all"
    positions: tuple[str, ...] | str = "all"
    storage_dtype: str = "float32"
    chunk_prompts: int | None = None
    batch_size: int = 8
    logits: bool = True
    codec: str = DEFAULT_CODEC

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        sites = tuple(SiteKind.parse(s) for s in _parse_names(self.sites, "sites"))
        if not sites or len(set(sites)) != len(sites):
            raise ConfigError(
                f"CaptureSpec.sites must list distinct site kinds, got {self.sites!r}. Expected some of: {', '.join(k.value for k in SiteKind)}."
            )
        set_("sites", tuple(k for k in SiteKind if k in sites))  # canonical order
        if self.layers != "all":
            raw = _parse_names(self.layers, "layers")
            ok = raw and all(
                isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 0 for x in raw
            )
            if not ok or len(set(raw)) != len(raw):
                raise ConfigError(
                    f"CaptureSpec.layers must be 'all' or distinct layer indices >= 0, got {self.layers!r}."
                )
            set_("layers", tuple(sorted(int(x) for x in raw)))
        if self.positions != "all":
            roles = _parse_names(self.positions, "positions")
            bad = [r for r in roles if not isinstance(r, str) or not ROLE_PATTERN.match(r)]
            if not roles or bad or len(set(roles)) != len(roles):
                raise ConfigError(
                    f"CaptureSpec.positions must be 'all' or distinct role names like 'last', 'subject_last', got {self.positions!r}."
                )
            set_("positions", roles)
        set_("storage_dtype", StorageDType.parse(self.storage_dtype).value)
        set_("codec", Codec.parse(self.codec).value)
        for name, value, allow_none in (
            ("chunk_prompts", self.chunk_prompts, True),
            ("batch_size", self.batch_size, False),
        ):
            if value is None and allow_none:
                continue
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"CaptureSpec.{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}."
                )
            set_(name, int(value))
        if not isinstance(self.logits, bool):
            raise ConfigError(f"CaptureSpec.logits must be True or False, got {self.logits!r}.")

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        """The layer indices for a model of ``n_layers`` blocks."""
        if self.layers == "all":
            return tuple(range(n_layers))
        bad = [x for x in self.layers if x >= n_layers]
        if bad:
            raise ConfigError(
                f"CaptureSpec.layers {list(bad)} do not exist; the model has layers 0..{n_layers - 1}."
            )
        return self.layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [k.value for k in self.sites],
            "layers": self.layers if self.layers == "all" else list(self.layers),
            "positions": self.positions if self.positions == "all" else list(self.positions),
            "storage_dtype": self.storage_dtype,
            "chunk_prompts": self.chunk_prompts,
            "batch_size": self.batch_size,
            "logits": self.logits,
            "codec": self.codec,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptureSpec:
        return dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class CaptureSummary:
    """What one :func:`capture` call did.

    ``prompts``/``chunks`` count the whole store; ``computed_*`` and ``tokens`` count this
    call's work (0 when the store was already complete). ``bytes_logical`` is the store's
    uncompressed size, ``bytes_stored`` its size on disk; ``bytes_written`` the logical bytes
    this call wrote.
    """

    store_url: str
    prompts: int
    chunks: int
    computed_prompts: int
    computed_chunks: int
    tokens: int
    bytes_written: int
    bytes_logical: int
    bytes_stored: int
    elapsed_s: float
    noise_std: float | None = None
    write_s: float = (
        0.0  # the writer thread's busy time (encode + write + fsync), overlapping compute
    )

    @property
    def compression_ratio(self) -> float:
        return self.bytes_logical / self.bytes_stored if self.bytes_stored else float("nan")

    def line(self) -> str:
        """One summary line, e.g. for a log or the CLI."""
        rate = self.computed_prompts / self.elapsed_s if self.elapsed_s > 0 else 0.0
        noise = f", noise std {self.noise_std:.4g}" if self.noise_std is not None else ""
        return (
            f"captured {self.computed_prompts}/{self.prompts} prompts ({self.computed_chunks}/{self.chunks} chunks), "
            f"{self.tokens:,} tokens, {self.bytes_written / 2**20:,.1f} MiB written, store {self.bytes_stored / 2**20:,.1f} MiB "
            f"on disk (compression {self.compression_ratio:.2f}x), {self.elapsed_s:.1f} s ({rate:,.1f} prompts/s){noise} -> {self.store_url}"
        )

    def __str__(self) -> str:
        return self.line()


def capture(
    loaded,
    dataset: PromptDataset | TokenizedDataset,
    spec: CaptureSpec,
    store_url: str | os.PathLike,
    corruption=None,
    progress: bool = True,
    *,
    storage_options: Mapping | None = None,
) -> CaptureSummary:
    """Capture a dataset's clean and corrupted activations into a resumable capture store.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`patchsweep.pipeline.loading.load_model` (uses ``.adapter``,
        ``.tokenizer`` and ``.identity``).
    dataset : PromptDataset or TokenizedDataset
        The prompt pairs; a ``PromptDataset`` is tokenised with ``loaded.tokenizer``.
    spec : CaptureSpec
        Sites, layers, positions, storage dtype, chunking, batching, logits.
    store_url : str or path
        A local folder (default) or an fsspec URL zarr supports (``memory://...``). An
        existing store is resumed when made from the same model, tokenizer, dataset, spec and
        corruption, and refused with :class:`StoreMismatchError` naming what differs otherwise.
    corruption : NoiseCorruption or None
        None: the corrupted run is the dataset's corrupted prompt. A noise corruption: the clean
        prompt with Gaussian noise added to ``resid_pre`` of layer 0 at the span's tokens.
    progress : bool
        Show a progress bar (prompts/s, tokens/s, ETA); False is quiet.

    Returns
    -------
    CaptureSummary
        Printable as one line (``str(summary)``).

    Notes
    -----
    Arrays written (DEVELOPERS.md, "the capture store"): ``{run}_{site}`` with dims (prompt,
    layer, pos, d_model) -- (prompt, layer, role, d_model) when ``spec.positions`` lists roles
    -- and ``{run}_head`` (prompt, layer, pos, head, d_head); ``{run}_tokens`` (prompt, pos),
    ``{run}_length``, ``{run}_role_pos`` (prompt, role), ``{run}_logits`` (prompt, vocab)
    float32; ``answer_id``, ``wrong_id``, ``noise_seed`` (noise only) and ``meta_*``. The
    identity's ``spec`` part is ``spec.to_dict()`` plus ``"corruption"``: ``{"kind":
    "prompts"}`` or the noise corruption with its resolved ``std``.
    """
    start = time.perf_counter()
    if not isinstance(spec, CaptureSpec):
        raise ConfigError(f"spec must be a CaptureSpec, got {type(spec).__name__}.")
    adapter: ModelAdapter = loaded.adapter
    layers = spec.resolve_layers(adapter.n_layers)
    td = (
        dataset
        if isinstance(dataset, TokenizedDataset)
        else tokenize_dataset(dataset, loaded.tokenizer)
    )
    roles = td.roles if spec.positions == "all" else spec.positions
    unknown = [r for r in roles if r not in td.roles]
    if unknown:
        raise ConfigError(
            f"CaptureSpec.positions names roles {unknown} that dataset {td.dataset.name!r} does not define; its roles are {list(td.roles)}."
        )
    noise = (
        _resolve_noise(adapter, td, corruption, spec.batch_size) if corruption is not None else None
    )
    with_head = SiteKind.HEAD in spec.sites
    layout = CaptureLayout(
        n_prompts=len(td),
        layers=layers,
        n_pos=td.clean_tokens.shape[1],
        d_model=adapter.d_model,
        sites=tuple(k.value for k in spec.sites),
        roles=tuple(roles),
        positions="all" if spec.positions == "all" else "roles",
        n_heads=adapter.n_heads if with_head else 0,
        d_head=adapter.d_head if with_head else 0,
        vocab=adapter.vocab_size if spec.logits else 0,
        meta_columns=td.dataset.meta_columns,
        noise_seed=noise is not None,
        storage_dtype=spec.storage_dtype,
        codec=spec.codec,
        chunk_prompts=spec.chunk_prompts,
    )
    identity = Identity(
        model=loaded.identity["model"],
        tokenizer=loaded.identity["tokenizer"],
        dataset=_dataset_identity(td),
        spec={
            **spec.to_dict(),
            "corruption": noise.to_dict() if noise is not None else {"kind": "prompts"},
        },
    )
    meta = {col: [p.meta_dict.get(col, "") for p in td.dataset] for col in td.dataset.meta_columns}
    store = ActivationStore.create_or_resume(
        store_url,
        layout,
        identity,
        prompt_ids=list(td.dataset.ids),
        meta=meta,
        storage_options=storage_options,
    )
    plan = _Plan(
        adapter,
        td,
        spec,
        layout,
        np.array([td.roles.index(r) for r in roles], dtype=np.int64),
        noise,
        store.per_prompt_specs(),
    )
    todo = store.missing_chunks()
    n_todo = sum(len(range(*store.chunk_slice(c).indices(layout.n_prompts))) for c in todo)
    written = 0
    try:
        with (
            StageProgress("capture", total=n_todo, enabled=progress) as bar,
            ChunkWriter(store) as writer,
        ):
            for c in todo:
                arrays = _compute_chunk(plan, store.chunk_slice(c), bar)
                writer.submit(c, arrays)
                written += _stored_nbytes(arrays, plan)
        tokens = bar.tokens
        write_s = writer.busy_s
    except StoreError as e:
        if isinstance(e.__cause__, Float16OverflowError):  # raised in the writer thread
            raise Float16OverflowError(
                f"Capture into {store.url!r} stopped: {e.__cause__}"
            ) from None
        raise
    store.finalize()
    logical, stored = _store_sizes(store)
    return CaptureSummary(
        store_url=store.url,
        prompts=layout.n_prompts,
        chunks=layout.n_chunks,
        computed_prompts=n_todo,
        computed_chunks=len(todo),
        tokens=tokens,
        bytes_written=written,
        bytes_logical=logical,
        bytes_stored=stored,
        elapsed_s=time.perf_counter() - start,
        noise_std=noise.std if noise is not None else None,
        write_s=write_s,
    )


def _dataset_identity(td: TokenizedDataset) -> dict[str, Any]:
    # PromptDataset.identity() names its hash "digest", the key Identity.to_dict adds itself
    ds = td.dataset
    return {"name": ds.name, "sha256": ds.digest, "n_pairs": len(ds), "multi_token": td.multi_token}


def _stored_nbytes(arrays: dict[str, np.ndarray], plan: _Plan) -> int:
    """Bytes of a chunk in its storage dtypes (activations in the spec's storage dtype)."""
    itemsize = StorageDType.parse(plan.spec.storage_dtype).numpy.itemsize
    return sum(
        a.size * itemsize if plan.specs[n].kind == "float" else a.nbytes
        for n, a in arrays.items()
        if a.dtype != object
    )


def _store_sizes(store: ActivationStore) -> tuple[int, int]:
    """(uncompressed, on-disk) bytes of the store's numeric arrays."""
    logical = stored = 0
    for name in store.array_names:
        arr = store.zarr_array(name)
        if arr.dtype.kind in "iuf":
            logical += int(arr.nbytes)
            stored += int(arr.nbytes_stored())
    return logical, stored
