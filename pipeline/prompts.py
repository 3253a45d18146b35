"""Prompt pairs and prompt datasets: the in-memory form of patchsweep's dataset format.

The format itself (fields, file encodings, roles) is documented in
:mod:`patchsweep.pipeline.datasets`. This module holds the frozen values and the one set of
per-row checks that both the constructors and the file readers use: a reader collects every
row's problems before raising, a constructor raises on its own row's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from patchsweep.stores.errors import DatasetError
from patchsweep.stores.identity import sha256_dataset
from patchsweep.stores.sites import ROLE_PATTERN

__all__ = ["RUNS", "FIELDS", "Span", "PromptPair", "PromptDataset", "Problem", "role_names"]

RUNS = ("clean", "corrupted")
REQUIRED = ("id", "clean", "corrupted", "answer")
FIELDS = REQUIRED + ("wrong", "spans", "corrupted_spans")


@dataclass(frozen=True)
class Span:
    """A labeled half-open character span ``text[start:end]`` of a prompt."""

    name: str
    start: int
    end: int

    def to_list(self) -> list[int]:
        return [self.start, self.end]


@dataclass(frozen=True)
class Problem:
    """One reason one row of a dataset file is invalid.

    ``location`` is ``"line 7"`` for JSONL and CSV (1-based physical line of the record; a CSV
    header is line 1) and ``"row 6"`` for Parquet (1-based record index).
    """

    file: str
    location: str
    field: str
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.file else self.location
        who = f" (id {self.id!r})" if self.id is not None else ""
        return f"{where}{who}: field {self.field!r}: {self.reason}"


def role_names(span_names: Sequence[str]) -> tuple[str, ...]:
    """The position roles a set of spans defines: ``last``, then ``<span>_first``, ``<span>_last``."""
    return ("last",) + tuple(f"{s}_{end}" for s in span_names for end in ("first", "last"))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _parse_spans(
    value: Any, text: str | None, key: str
) -> tuple[tuple[Span, ...], list[tuple[str, str]]]:
    """Spans from ``{name: [start, end]}``; problems as (field, reason)."""
    if _is_missing(value):
        return (), []
    if isinstance(value, (tuple, list)) and all(isinstance(s, Span) for s in value):
        value = {s.name: s.to_list() for s in value}
    if not isinstance(value, Mapping):
        return (), [
            (
                key,
                f"expected an object {{name: [start, end]}}, got {type(value).__name__} {value!r}",
            )
        ]
    spans, problems = [], []
    for name, bounds in value.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not ROLE_PATTERN.match(name):
            problems.append(
                (
                    key,
                    f"span name {name!r} is not an identifier (letters, digits, '_', not starting with a digit)",
                )
            )
            continue
        if isinstance(bounds, Mapping):
            bounds = [bounds.get("start"), bounds.get("end")]
        ok = (
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        )
        if not ok:
            problems.append(
                (where, f"expected [start, end] character offsets (integers), got {bounds!r}")
            )
            continue
        start, end = bounds
        if text is not None and not (0 <= start < end <= len(text)):
            problems.append(
                (
                    where,
                    f"span [{start}, {end}) is outside the text or empty; expected 0 <= start < end <= {len(text)} (text length)",
                )
            )
            continue
        if text is not None and not text[start:end].strip():
            problems.append(
                (where, f"span [{start}, {end}) covers only whitespace ({text[start:end]!r})")
            )
            continue
        spans.append(Span(name, start, end))
    return tuple(spans), problems


def check_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate one raw record; return the normalised constructor kwargs and (field, reason)s."""
    problems: list[tuple[str, str]] = []
    kw: dict[str, Any] = {}
    for key in REQUIRED + ("wrong",):
        value = record.get(key)
        if _is_missing(value):
            if key in REQUIRED:
                problems.append((key, "missing field (required: id, clean, corrupted, answer)"))
            kw[key] = None
            continue
        if isinstance(value, (int, float)) and key == "id" and not isinstance(value, bool):
            value = str(value)  # numeric ids from CSV / Parquet are fine; they are compared as text
        if not isinstance(value, str):
            problems.append((key, f"expected text, got {type(value).__name__} {value!r}"))
            kw[key] = None
            continue
        if not value.strip():
            problems.append((key, f"empty text {value!r}; expected non-blank text"))
        kw[key] = value
    if kw.get("answer") is not None and kw.get("answer") == kw.get("wrong"):
        problems.append(
            (
                "wrong",
                f"same as the answer ({kw['answer']!r}); expected the corrupted prompt's different answer, or no 'wrong'",
            )
        )
    blank = {key for key in RUNS if not (kw.get(key) or "").strip()}
    # Spans are checked against their text only when it is there (else one problem is enough).
    kw["spans"], p = _parse_spans(
        record.get("spans"), None if "clean" in blank else kw["clean"], "spans"
    )
    problems += p
    clean_spans_ok = not p
    corrupted_spans = record.get("corrupted_spans")
    if _is_missing(corrupted_spans):
        # Without corrupted_spans, the clean spans must also fit the corrupted text.
        if "corrupted" not in blank and kw["spans"]:
            _, p = _parse_spans(
                {s.name: s.to_list() for s in kw["spans"]}, kw["corrupted"], "spans"
            )
            problems += [
                (
                    f,
                    r
                    + " in the corrupted text (give 'corrupted_spans' when the texts differ there)",
                )
                for f, r in p
            ]
        kw["corrupted_spans"] = None
    else:
        kw["corrupted_spans"], p = _parse_spans(
            corrupted_spans, None if "corrupted" in blank else kw["corrupted"], "corrupted_spans"
        )
        problems += p
        clean_names = sorted(s.name for s in kw["spans"])
        corrupted_names = sorted(s.name for s in kw["corrupted_spans"])
        if not p and clean_spans_ok and clean_names != corrupted_names:
            problems.append(
                (
                    "corrupted_spans",
                    f"names {corrupted_names} differ from the clean spans' {clean_names}; expected the same names",
                )
            )
    meta = []
    for key in sorted(k for k in record if k not in FIELDS):
        if not isinstance(key, str) or not ROLE_PATTERN.match(key):
            problems.append(
                (str(key), "metadata column name is not an identifier (letters, digits, '_')")
            )
            continue
        if not _is_missing(record[key]):  # an empty CSV cell or Parquet null: column absent
            meta.append((key, str(record[key])))
    kw["meta"] = tuple(meta)
    return kw, problems


@dataclass(frozen=True)
class PromptPair:
    """A clean prompt, its corrupted counterpart, and the answers the model should give.

    Parameters
    ----------
    id : str
        Unique within its dataset.
    clean, corrupted : str
        The two prompts; the model's next token after each is scored.
    answer : str
        The clean prompt's correct continuation, exactly as it follows the prompt (usually with
        a leading space, e.g. ``" Mary"``).
    wrong : str, optional
        The corrupted prompt's answer (for logit differences); ``None`` when there is none.
    spans : tuple of Span or mapping name -> (start, end)
        Labeled character spans of the clean text.
    corrupted_spans : same, optional
        The same labels in the corrupted text; ``None`` means the clean offsets apply to it.
    meta : tuple of (column, value) or mapping
        Extra columns (``task``, ``template``, ...), kept as text.
    """

    id: str
    clean: str
    corrupted: str
    answer: str
    wrong: str | None = None
    spans: tuple[Span, ...] = ()
    corrupted_spans: tuple[Span, ...] | None = None
    meta: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        record = {
            "id": self.id,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "answer": self.answer,
            "wrong": self.wrong,
            "spans": self.spans,
            "corrupted_spans": self.corrupted_spans,
            **dict(self.meta.items() if isinstance(self.meta, Mapping) else self.meta),
        }
        kw, problems = check_record(record)
        if problems:
            lines = "\n  ".join(str(Problem("", "pair", f, r, self.id)) for f, r in problems)
            raise DatasetError(f"Invalid prompt pair:\n  {lines}")
        for key, value in kw.items():
            object.__setattr__(self, key, value)

    @property
    def span_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.spans)

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)

    def text(self, run: str) -> str:
        """The prompt of ``run`` (``clean`` or ``corrupted``)."""
        return {"clean": self.clean, "corrupted": self.corrupted}[run]

    def spans_for(self, run: str) -> tuple[Span, ...]:
        """The labeled spans in ``run``'s text (the clean offsets when no corrupted ones)."""
        if run == "corrupted" and self.corrupted_spans is not None:
            by_name = {s.name: s for s in self.corrupted_spans}
            return tuple(by_name[n] for n in self.span_names)
        return self.spans

    def to_dict(self) -> dict[str, Any]:
        """The record form written to files (JSON types only)."""
        d: dict[str, Any] = {
            "id": self.id,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "answer": self.answer,
        }
        if self.wrong is not None:
            d["wrong"] = self.wrong
        if self.spans:
            d["spans"] = {s.name: s.to_list() for s in self.spans}
        if self.corrupted_spans is not None:
            d["corrupted_spans"] = {s.name: s.to_list() for s in self.corrupted_spans}
        d.update(self.meta)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptPair:
        kw, problems = check_record(data)
        if problems:
            lines = "\n  ".join(str(Problem("", "pair", f, r, kw.get("id"))) for f, r in problems)
            raise DatasetError(f"Invalid prompt pair:\n  {lines}")
        return cls(**kw)


@dataclass(frozen=True)
class PromptDataset:
    """An ordered collection of prompt pairs with unique ids.

    ``digest`` (sha256 over the pairs' canonical records, in order) identifies the content;
    ``name``, ``source`` and the per-pair ``locations`` (e.g. ``"line 7"``) are provenance
    and do not enter it.
    """

    pairs: tuple[PromptPair, ...]
    name: str = ""
    source: str | None = field(default=None, compare=False)
    locations: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        if not self.locations:
            object.__setattr__(
                self, "locations", tuple(f"pair {i + 1}" for i in range(len(self.pairs)))
            )
        if len(self.locations) != len(self.pairs):
            raise DatasetError(
                f"Got {len(self.locations)} locations for {len(self.pairs)} pairs; expected one per pair."
            )
        seen: dict[str, str] = {}
        dups = []
        for pair, loc in zip(self.pairs, self.locations, strict=True):
            if pair.id in seen:
                dups.append(f"{loc}: duplicate id {pair.id!r} (first at {seen[pair.id]})")
            seen.setdefault(pair.id, loc)
        if dups:
            raise DatasetError("Prompt ids must be unique:\n  " + "\n  ".join(dups))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PromptPair]:
        return iter(self.pairs)

    def __getitem__(self, i: int) -> PromptPair:
        return self.pairs[i]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.pairs)

    @property
    def span_names(self) -> tuple[str, ...]:
        """Every span label, in order of first appearance."""
        return tuple(dict.fromkeys(n for p in self.pairs for n in p.span_names))

    @property
    def roles(self) -> tuple[str, ...]:
        """``last``, then ``<span>_first`` and ``<span>_last`` for each span label."""
        return role_names(self.span_names)

    @property
    def meta_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for p in self.pairs for k, _ in p.meta))

    @cached_property
    def digest(self) -> str:
        """sha256 over the pairs' ``to_dict()`` records in order (``stores.identity.sha256_dataset``)."""
        return sha256_dataset(p.to_dict() for p in self.pairs)

    def identity(self) -> dict[str, Any]:
        """The dataset part of a store's identity record."""
        return {"name": self.name, "sha256": self.digest, "n_pairs": len(self.pairs)}

    def where(self, i: int) -> str:
        """Where pair ``i`` came from, e.g. ``"ioi.jsonl: line 7"``."""
        return f"{self.source}: {self.locations[i]}" if self.source else self.locations[i]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pairs": [p.to_dict() for p in self.pairs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptDataset:
        return cls(tuple(PromptPair.from_dict(p) for p in data["pairs"]), name=data.get("name", ""))
