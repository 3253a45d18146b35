"""The capture store: clean and corrupted activations of a prompt dataset, in one Zarr v3 group.

Schema (the contract in DEVELOPERS.md): coordinates ``prompt``, ``layer``, ``pos``, ``role``,
``head``; per (run, site) an array ``{run}_{site}`` of dims ``(prompt, layer, pos, d_model)``
(``role`` instead of ``pos`` when only roles are captured), ``{run}_head`` with dims
``(prompt, layer, pos, head, d_head)``, and per prompt the tokens, lengths, role positions,
final-position logits, answer / wrong ids, noise seeds and dataset metadata columns.

Float activation arrays are sharded: one shard per prompt chunk (written whole, in one
write) holding one inner chunk per prompt, so bulk writes are large and sequential while
``read_prompt`` reads a single inner chunk. The capture stage writes it like this::

    layout = CaptureLayout(n_prompts=N, layers=(0, 1), n_pos=P, d_model=D, sites=("resid_pre",))
    store = ActivationStore.create_or_resume(path, layout, identity, prompt_ids=ids)
    with ChunkWriter(store) as writer:
        for c in store.missing_chunks():
            rows = store.chunk_slice(c)
            writer.submit(c, {"clean_resid_pre": ..., "clean_tokens": ..., ...})
    store.finalize()
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import Codec, StorageDType
from .errors import ConfigError, StoreMismatchError
from .identity import (
    Identity,
    check_identity,
    dataclass_from_dict,
    dataclass_to_dict,
    diff_values,
)
from .schema import ArraySpec
from .sites import ROLE_PATTERN, SiteKind
from .zarr_base import ChunkedStore

__all__ = ["ActivationStore", "CaptureLayout", "DEFAULT_CODEC", "DEFAULT_SHARD_BYTES", "RUNS"]

RUNS = ("clean", "corrupted")
DEFAULT_CODEC = "none"  # floats barely compress; see benchmarks/RESULTS-store.md
DEFAULT_SHARD_BYTES = 64 << 20  # bytes of the largest array per prompt chunk


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"CaptureLayout.{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass(frozen=True)
class CaptureLayout:
    """The shape of a capture store: what is captured, how big, how stored.

    ``chunk_prompts=None`` picks the number of prompts whose largest activation array
    fills about ``DEFAULT_SHARD_BYTES``. ``vocab=0`` stores no logits.
    """

    n_prompts: int
    layers: tuple[int, ...]
    n_pos: int
    d_model: int
    sites: tuple[str, ...]
    roles: tuple[str, ...] = ()
    positions: str = "all"  # "all" | "roles"
    n_heads: int = 0
    d_head: int = 0
    vocab: int = 0
    runs: tuple[str, ...] = RUNS
    meta_columns: tuple[str, ...] = ()
    noise_seed: bool = False
    storage_dtype: str = "float32"
    codec: str = DEFAULT_CODEC
    chunk_prompts: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for name, minimum in (
            ("n_prompts", 1),
            ("n_pos", 1),
            ("d_model", 1),
            ("n_heads", 0),
            ("d_head", 0),
            ("vocab", 0),
        ):
            _check_int(name, getattr(self, name), minimum)
            set_(name, int(getattr(self, name)))
        layers = (
            tuple(int(x) for x in self.layers) if not isinstance(self.layers, int | str) else ()
        )
        if not layers or any(x < 0 for x in layers) or len(set(layers)) != len(layers):
            raise ConfigError(
                f"CaptureLayout.layers must be distinct layer indices >= 0, got {self.layers!r}."
            )
        set_("layers", layers)
        sites = tuple(
            SiteKind.parse(s).value
            for s in ([self.sites] if isinstance(self.sites, str) else self.sites)
        )
        if not sites or len(set(sites)) != len(sites):
            raise ConfigError(
                f"CaptureLayout.sites must list distinct site kinds, got {self.sites!r}."
            )
        set_("sites", sites)
        if SiteKind.HEAD.value in sites and (self.n_heads < 1 or self.d_head < 1):
            raise ConfigError(
                f"Capturing 'head' needs n_heads >= 1 and d_head >= 1, got n_heads={self.n_heads}, d_head={self.d_head}."
            )
        roles = tuple(str(r) for r in ([self.roles] if isinstance(self.roles, str) else self.roles))
        bad = [r for r in roles if not ROLE_PATTERN.match(r)]
        if bad or len(set(roles)) != len(roles):
            raise ConfigError(
                f"CaptureLayout.roles must be distinct identifiers, got {self.roles!r}."
            )
        set_("roles", roles)
        if self.positions not in ("all", "roles"):
            raise ConfigError(
                f"CaptureLayout.positions must be 'all' or 'roles', got {self.positions!r}."
            )
        if self.positions == "roles" and not roles:
            raise ConfigError(
                "CaptureLayout.positions='roles' needs at least one role in CaptureLayout.roles."
            )
        runs = tuple(self.runs)
        if not runs or any(r not in RUNS for r in runs) or len(set(runs)) != len(runs):
            raise ConfigError(
                f"CaptureLayout.runs must be distinct values of {RUNS}, got {self.runs!r}."
            )
        set_("runs", runs)
        meta = tuple(str(m) for m in self.meta_columns)
        if any(not ROLE_PATTERN.match(m) for m in meta) or len(set(meta)) != len(meta):
            raise ConfigError(
                f"CaptureLayout.meta_columns must be distinct identifiers, got {self.meta_columns!r}."
            )
        set_("meta_columns", meta)
        set_("noise_seed", bool(self.noise_seed))
        set_("storage_dtype", StorageDType.parse(self.storage_dtype).value)
        set_("codec", Codec.parse(self.codec).value)
        if self.chunk_prompts is None:
            biggest = max(self.prompt_bytes.values())
            set_("chunk_prompts", int(min(self.n_prompts, max(1, DEFAULT_SHARD_BYTES // biggest))))
        _check_int("chunk_prompts", self.chunk_prompts, 1)
        set_("chunk_prompts", int(self.chunk_prompts))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_prompts // self.chunk_prompts)

    @property
    def pos_dim(self) -> str:
        return "role" if self.positions == "roles" else "pos"

    @property
    def n_positions(self) -> int:
        return len(self.roles) if self.positions == "roles" else self.n_pos

    @staticmethod
    def activation_name(run: str, site: str) -> str:
        """``{run}_{site}``, e.g. ``clean_resid_pre`` or ``corrupted_head``."""
        return f"{run}_{SiteKind.parse(site).value}"

    @property
    def prompt_bytes(self) -> dict[str, int]:
        """Stored bytes per prompt of each float activation array (before compression)."""
        itemsize = StorageDType.parse(self.storage_dtype).numpy.itemsize
        out = {}
        for run in self.runs:
            for site in self.sites:
                width = self.n_heads * self.d_head if site == SiteKind.HEAD.value else self.d_model
                out[self.activation_name(run, site)] = (
                    len(self.layers) * self.n_positions * width * itemsize
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptureLayout:
        return dataclass_from_dict(cls, data)

    def specs(
        self,
        prompt_ids: Sequence[str] | None = None,
        meta: Mapping[str, Sequence[str]] | None = None,
    ) -> list[ArraySpec]:
        """The store's arrays (coordinates carry ``data`` when given)."""
        N, L, P, R = self.n_prompts, len(self.layers), self.n_pos, len(self.roles)
        X, pos = self.n_positions, self.pos_dim
        meta = meta or {}
        specs = [
            ArraySpec(
                "prompt",
                ("prompt",),
                (N,),
                "str",
                data=prompt_ids if prompt_ids is not None else [""] * N,
            ),
            ArraySpec("layer", ("layer",), (L,), "int32", data=list(self.layers)),
            ArraySpec("pos", ("pos",), (P,), "int32", data=np.arange(P)),
        ]
        if R:
            specs.append(ArraySpec("role", ("role",), (R,), "str", data=list(self.roles)))
        has_head = SiteKind.HEAD.value in self.sites
        if has_head:
            specs.append(
                ArraySpec("head", ("head",), (self.n_heads,), "int32", data=np.arange(self.n_heads))
            )
        for run in self.runs:
            for site in self.sites:
                name = self.activation_name(run, site)
                if site == SiteKind.HEAD.value:
                    specs.append(
                        ArraySpec(
                            name,
                            ("prompt", "layer", pos, "head", "d_head"),
                            (N, L, X, self.n_heads, self.d_head),
                            "float",
                        )
                    )
                else:
                    specs.append(
                        ArraySpec(
                            name,
                            ("prompt", "layer", pos, "d_model"),
                            (N, L, X, self.d_model),
                            "float",
                        )
                    )
            specs.append(
                ArraySpec(f"{run}_tokens", ("prompt", "pos"), (N, P), "int32", fill_value=-1)
            )
            specs.append(ArraySpec(f"{run}_length", ("prompt",), (N,), "int32"))
            if R:
                specs.append(
                    ArraySpec(f"{run}_role_pos", ("prompt", "role"), (N, R), "int32", fill_value=-1)
                )
            if self.vocab:
                specs.append(
                    ArraySpec(f"{run}_logits", ("prompt", "vocab"), (N, self.vocab), "float32")
                )
        specs.append(ArraySpec("answer_id", ("prompt",), (N,), "int32"))
        specs.append(ArraySpec("wrong_id", ("prompt",), (N,), "int32", fill_value=-1))
        if self.noise_seed:
            specs.append(ArraySpec("noise_seed", ("prompt",), (N,), "uint64"))
        for col in self.meta_columns:
            specs.append(
                ArraySpec(f"meta_{col}", ("prompt",), (N,), "str", data=meta.get(col, [""] * N))
            )
        return specs


def _check_column(name: str, values: Sequence[str] | None, n: int) -> list[str]:
    if values is None:
        raise ConfigError(f"Missing {name}: expected {n} strings, one per prompt.")
    values = [str(v) for v in values]
    if len(values) != n:
        raise ConfigError(f"{name} has {len(values)} entries; expected {n} (one per prompt).")
    return values


class ActivationStore(ChunkedStore):
    """A capture store (see the module docstring). Open with :meth:`create_or_resume` or :meth:`open`."""

    KIND = "capture"

    @classmethod
    def create_or_resume(
        cls,
        url: str | os.PathLike,
        layout: CaptureLayout,
        identity: Identity,
        *,
        prompt_ids: Sequence[str],
        meta: Mapping[str, Sequence[str]] | None = None,
        storage_options: Mapping | None = None,
        durable: bool = True,
    ) -> ActivationStore:
        """Create a capture store at ``url``, or reopen it to resume.

        An existing store is reopened only when its identity, layout and prompt ids equal the
        requested ones (else :class:`StoreMismatchError` naming each difference); orphan
        ``*.partial`` files of a killed writer are removed. ``durable`` fsyncs each chunk's
        files before its marker (local disk). ``meta`` maps each of ``layout.meta_columns`` to
        one string per prompt.
        """
        if not isinstance(layout, CaptureLayout):
            raise ConfigError(f"layout must be a CaptureLayout, got {type(layout).__name__}.")
        if not isinstance(identity, Identity):
            raise ConfigError(f"identity must be an Identity, got {type(identity).__name__}.")
        ids = _check_column("prompt_ids", prompt_ids, layout.n_prompts)
        meta = dict(meta or {})
        extra = sorted(set(meta) - set(layout.meta_columns))
        if extra:
            raise ConfigError(
                f"meta has columns {extra} that layout.meta_columns {list(layout.meta_columns)} does not list."
            )
        cols = {
            c: _check_column(f"meta[{c!r}]", meta.get(c), layout.n_prompts)
            for c in layout.meta_columns
        }
        store = cls._resume(
            url, storage_options, durable, lambda s: s._check_matches(layout, identity, ids)
        )
        if store is not None:
            return store
        return cls._create(
            url,
            layout,
            layout.specs(ids, cols),
            {"identity": identity.to_dict(), "storage_dtype": layout.storage_dtype},
            storage_dtype=StorageDType.parse(layout.storage_dtype),
            codec=Codec.parse(layout.codec),
            storage_options=storage_options,
            durable=durable,
        )

    def _check_matches(self, layout: CaptureLayout, identity: Identity, ids: list[str]) -> None:
        check_identity(identity, self.identity, where=f"The capture store at {self.url!r}")
        lines = diff_values("layout", self.attrs.get("layout"), layout.to_dict())
        if lines:
            raise StoreMismatchError(
                f"The capture store at {self.url!r} has a different layout than requested:\n  "
                + "\n  ".join(lines)
                + "\nUse a new store path, or request the store's original layout."
            )
        stored = [str(x) for x in self.zarr_array("prompt")[:]]
        if stored != ids:
            first = next(i for i, (a, b) in enumerate(zip(stored, ids, strict=True)) if a != b)
            raise StoreMismatchError(
                f"The capture store at {self.url!r} has prompt ids that differ from the requested ones "
                f"(first at prompt {first}: store has {stored[first]!r}, requested {ids[first]!r})."
            )

    def _specs(self) -> list[ArraySpec]:
        return self.layout.specs()

    @property
    def layout(self) -> CaptureLayout:
        if not hasattr(self, "_layout"):
            self._layout = CaptureLayout.from_dict(self.attrs["layout"])
        return self._layout

    @property
    def identity(self) -> Identity:
        return Identity.from_dict(self.attrs["identity"])
