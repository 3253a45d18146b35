"""The results store: the patch stage's metrics per prompt, site, layer and position.

Schema (the contract in DEVELOPERS.md): coordinates ``prompt``, ``site``, ``layer``, ``pos``
(canonical :class:`~patchsweep.stores.sites.Position` strings), ``head``, ``patchset``; per
direction and metric ``{direction}_{metric}`` with dims ``(prompt, site, layer, pos)``,
``{direction}_head_{metric}`` ``(prompt, layer, pos, head)`` and ``{direction}_set_{metric}``
``(prompt, patchset)``; unpatched baselines ``clean_{metric}`` / ``corrupted_{metric}``;
lengths, position labels and dataset metadata columns.

A results store records the capture store it was computed from (its location and the
digest of its identity) and refuses to be resumed from another one. Same chunking, markers,
resume and read API as the capture store (:class:`~patchsweep.stores.zarr_base.ChunkedStore`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .activations import ActivationStore
from .dtypes import Codec, StorageDType
from .errors import ConfigError, StoreMismatchError
from .identity import _plain, dataclass_from_dict, dataclass_to_dict, diff_values
from .locations import _local_path
from .metrics import Metric
from .schema import ArraySpec
from .sites import ROLE_PATTERN, Direction, Position, SiteKind
from .zarr_base import ChunkedStore

__all__ = ["ResultsLayout", "ResultsStore"]

DEFAULT_RESULT_CHUNK_BYTES = 16 << 20


def _names(field: str, values, parse) -> tuple[str, ...]:
    values = [values] if isinstance(values, str) else list(values)
    out = tuple(str(parse(v)) for v in values)
    if len(set(out)) != len(out):
        raise ConfigError(f"ResultsLayout.{field} lists a value twice: {list(out)}.")
    return out


@dataclass(frozen=True)
class ResultsLayout:
    """What a results store holds. Empty ``sites`` / ``n_heads=0`` / empty ``patchsets``
    mean that sweep was not run; ``chunk_prompts=None`` picks about 16 MiB per chunk."""

    n_prompts: int
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    metrics: tuple[str, ...]
    directions: tuple[str, ...] = ("denoise",)
    sites: tuple[str, ...] = ()
    n_heads: int = 0
    patchsets: tuple[str, ...] = ()
    meta_columns: tuple[str, ...] = ()
    chunk_prompts: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for name, minimum in (("n_prompts", 1), ("n_heads", 0)):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < minimum:
                raise ConfigError(
                    f"ResultsLayout.{name} must be an integer >= {minimum}, got {v!r}."
                )
            set_(name, int(v))
        layers = tuple(int(x) for x in self.layers)
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise ConfigError(
                f"ResultsLayout.layers must be distinct layer indices >= 0, got {self.layers!r}."
            )
        set_("layers", layers)
        set_("positions", _names("positions", self.positions, Position.parse))
        set_("metrics", _names("metrics", self.metrics, Metric.parse))
        set_("directions", _names("directions", self.directions, Direction.parse))
        set_("sites", _names("sites", self.sites, SiteKind.parse))
        if SiteKind.HEAD.value in self.sites:
            raise ConfigError(
                "ResultsLayout.sites holds non-head site kinds; head sweeps are set by n_heads."
            )
        for field in ("patchsets", "meta_columns"):
            values = _names(field, getattr(self, field), str)
            if any(not ROLE_PATTERN.match(v) for v in values):
                raise ConfigError(f"ResultsLayout.{field} must be identifiers, got {list(values)}.")
            set_(field, values)
        if not self.positions or not self.metrics or not self.directions:
            raise ConfigError("ResultsLayout needs at least one position, metric and direction.")
        if self.chunk_prompts is None:
            per_prompt = (
                4
                * len(self.metrics)
                * len(self.directions)
                * len(self.positions)
                * len(self.layers)
                * max(len(self.sites), self.n_heads, 1)
            )
            set_(
                "chunk_prompts",
                int(min(self.n_prompts, max(1, DEFAULT_RESULT_CHUNK_BYTES // per_prompt))),
            )
        if not isinstance(self.chunk_prompts, int | np.integer) or self.chunk_prompts < 1:
            raise ConfigError(
                f"ResultsLayout.chunk_prompts must be an integer >= 1, got {self.chunk_prompts!r}."
            )
        set_("chunk_prompts", int(self.chunk_prompts))

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultsLayout:
        return dataclass_from_dict(cls, data)

    def specs(
        self,
        prompt_ids: Sequence[str] | None = None,
        meta: Mapping[str, Sequence[str]] | None = None,
    ) -> list[ArraySpec]:
        N, L, X, H = self.n_prompts, len(self.layers), len(self.positions), self.n_heads
        S, K = len(self.sites), len(self.patchsets)
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
            ArraySpec("pos", ("pos",), (X,), "str", data=list(self.positions)),
        ]
        if S:
            specs.append(ArraySpec("site", ("site",), (S,), "str", data=list(self.sites)))
        if H:
            specs.append(ArraySpec("head", ("head",), (H,), "int32", data=np.arange(H)))
        if K:
            specs.append(
                ArraySpec("patchset", ("patchset",), (K,), "str", data=list(self.patchsets))
            )
        for d in self.directions:
            for m in self.metrics:
                if S:
                    specs.append(
                        ArraySpec(
                            f"{d}_{m}", ("prompt", "site", "layer", "pos"), (N, S, L, X), "float32"
                        )
                    )
                if H:
                    specs.append(
                        ArraySpec(
                            f"{d}_head_{m}",
                            ("prompt", "layer", "pos", "head"),
                            (N, L, X, H),
                            "float32",
                        )
                    )
                if K:
                    specs.append(
                        ArraySpec(f"{d}_set_{m}", ("prompt", "patchset"), (N, K), "float32")
                    )
        for run in ("clean", "corrupted"):
            specs.extend(
                ArraySpec(f"{run}_{m}", ("prompt",), (N,), "float32") for m in self.metrics
            )
            specs.append(ArraySpec(f"{run}_length", ("prompt",), (N,), "int32"))
        specs.append(ArraySpec("pos_label", ("prompt", "pos"), (N, X), "str"))
        for col in self.meta_columns:
            specs.append(
                ArraySpec(f"meta_{col}", ("prompt",), (N,), "str", data=meta.get(col, [""] * N))
            )
        return specs


def _source_of(capture: ActivationStore | Mapping[str, str]) -> dict[str, str]:
    if isinstance(capture, ActivationStore):
        path = _local_path(capture.url)
        return {
            "capture_store": str(path.resolve()) if path is not None else capture.url,
            "capture_digest": capture.identity.digest,
        }
    if isinstance(capture, Mapping) and set(capture) == {"capture_store", "capture_digest"}:
        return {k: str(v) for k, v in capture.items()}
    raise ConfigError(
        f"source must be an ActivationStore or {{'capture_store', 'capture_digest'}}, got {capture!r}."
    )


class ResultsStore(ChunkedStore):
    """The patch stage's output store. Open with :meth:`create_or_resume` or :meth:`open`."""

    KIND = "results"

    @classmethod
    def create_or_resume(
        cls,
        url: str | os.PathLike,
        layout: ResultsLayout,
        source: ActivationStore | Mapping[str, str],
        spec: Mapping[str, Any],
        *,
        prompt_ids: Sequence[str],
        meta: Mapping[str, Sequence[str]] | None = None,
        storage_options: Mapping | None = None,
        durable: bool = True,
    ) -> ResultsStore:
        """Create a results store computed from ``source`` (a capture store), or reopen it.

        Reopening requires the same source capture digest, patch spec and layout, else
        :class:`StoreMismatchError` naming each difference.
        """
        if not isinstance(layout, ResultsLayout):
            raise ConfigError(f"layout must be a ResultsLayout, got {type(layout).__name__}.")
        src = _source_of(source)
        spec = _plain(dict(spec))
        ids = [str(x) for x in prompt_ids]
        if len(ids) != layout.n_prompts:
            raise ConfigError(
                f"prompt_ids has {len(ids)} entries; expected {layout.n_prompts} (one per prompt)."
            )
        meta = (
            {c: [str(v) for v in meta[c]] for c in layout.meta_columns}
            if layout.meta_columns
            else {}
        )
        store = cls._resume(
            url, storage_options, durable, lambda s: s._check_matches(src, spec, layout)
        )
        if store is not None:
            return store
        attrs = {
            "source": src,
            "spec": spec,
            "metrics": list(layout.metrics),
            "directions": list(layout.directions),
        }
        return cls._create(
            url,
            layout,
            layout.specs(ids, meta),
            attrs,
            storage_dtype=StorageDType.FLOAT32,
            codec=Codec.ZSTD,
            storage_options=storage_options,
            durable=durable,
        )

    def _check_matches(self, src: dict, spec: dict, layout: ResultsLayout) -> None:
        self.check_source(src)
        lines = diff_values("spec", self.attrs.get("spec"), spec) + diff_values(
            "layout", self.attrs.get("layout"), layout.to_dict()
        )
        if lines:
            raise StoreMismatchError(
                f"The results store at {self.url!r} was made with a different patch spec or layout:\n  "
                + "\n  ".join(lines)
            )

    @property
    def source(self) -> dict[str, str]:
        return dict(self.attrs["source"])

    @property
    def layout(self) -> ResultsLayout:
        return ResultsLayout.from_dict(self.attrs["layout"])

    def _specs(self) -> list[ArraySpec]:
        return self.layout.specs()

    def check_source(self, capture: ActivationStore | Mapping[str, str]) -> None:
        """Raise :class:`StoreMismatchError` unless ``capture`` is the store these results came from."""
        given, ours = _source_of(capture), self.source
        if given["capture_digest"] != ours["capture_digest"]:
            raise StoreMismatchError(
                f"The results store at {self.url!r} was computed from capture store {ours['capture_store']!r} "
                f"(identity digest {ours['capture_digest'][:12]}), not from {given['capture_store']!r} "
                f"(digest {given['capture_digest'][:12]}); results of different captures are never mixed. "
                "Use a new results path for this capture store."
            )
