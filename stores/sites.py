"""Typed names for the places a patch can touch: sites, positions and patch sets.

Every value here has exactly one canonical string form (``str(value)``) and one parser
(``Type.parse``), and ``Type.parse(str(v)) == v`` for every valid value. The strings are what
the stores record in their attributes and coordinates, so they are part of the file format.

Canonical forms
---------------
- ``SiteKind``: ``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``, ``head``.
- ``Site``: ``resid_pre.3`` (kind, layer) and ``head.3.5`` (layer 3, head 5).
- ``Position``: ``7`` (absolute token index) or a role name such as ``subject_last``.
- ``Direction``: ``denoise`` (source = clean run, patched into the corrupted run) or
  ``noise`` (source = corrupted run, patched into the clean run).
- ``PatchSet``: ``name=resid_pre.3@subject_last+mlp_out.4@subject_last``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConfigError

__all__ = ["SiteKind", "Site", "Position", "Direction", "PatchSet", "ROLE_PATTERN"]

ROLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SiteKind(StrEnum):
    """A kind of activation site inside a decoder block.

    ``resid_pre`` is the input of block ``l``; ``attn_out`` and ``mlp_out`` are the outputs of
    the block's attention and MLP modules; ``resid_post`` is the block's output; ``head`` is
    the slice of the attention output projection's input that belongs to one query head.
    """

    RESID_PRE = "resid_pre"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
    RESID_POST = "resid_post"
    HEAD = "head"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> SiteKind:
        try:
            return cls(str(text).strip())
        except ValueError:
            valid = ", ".join(k.value for k in cls)
            raise ConfigError(f"Unknown site kind {text!r}. Expected one of: {valid}.") from None


@dataclass(frozen=True, order=True)
class Site:
    """One site: a kind at a layer, and for ``head`` sites the head index."""

    kind: SiteKind
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SiteKind.parse(self.kind))
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ConfigError(f"Site layer must be an integer >= 0, got {self.layer!r}.")
        if self.kind is SiteKind.HEAD:
            if not isinstance(self.head, int) or isinstance(self.head, bool) or self.head < 0:
                raise ConfigError(
                    f"A head site needs a head index >= 0, got {self.head!r} (e.g. 'head.3.5')."
                )
        elif self.head is not None:
            raise ConfigError(
                f"Only head sites take a head index; got {self.kind}.{self.layer} with head {self.head}."
            )

    def __str__(self) -> str:
        if self.kind is SiteKind.HEAD:
            return f"head.{self.layer}.{self.head}"
        return f"{self.kind.value}.{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Site:
        parts = str(text).strip().split(".")
        kind = SiteKind.parse(parts[0])
        expected = 3 if kind is SiteKind.HEAD else 2
        if len(parts) != expected or not all(p.isdigit() for p in parts[1:]):
            form = "head.<layer>.<head>" if kind is SiteKind.HEAD else f"{kind.value}.<layer>"
            raise ConfigError(
                f"Cannot parse site {text!r}. Expected {form!r}, e.g. {form.replace('<layer>', '3').replace('<head>', '5')!r}."
            )
        head = int(parts[2]) if kind is SiteKind.HEAD else None
        return cls(kind, int(parts[1]), head)


@dataclass(frozen=True)
class Position:
    """A token position: an absolute index, or a named role resolved per prompt.

    Roles (``last``, ``subject_first``, ``subject_last``, ...) let prompts of different
    lengths be aggregated: the role's absolute index is looked up per prompt.
    """

    index: int | None = None
    role: str | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.role is None):
            raise ConfigError(
                f"A position is either an index or a role, got index={self.index!r}, role={self.role!r}."
            )
        if self.index is not None and (
            not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0
        ):
            raise ConfigError(f"Position index must be an integer >= 0, got {self.index!r}.")
        if self.role is not None and not ROLE_PATTERN.match(self.role):
            raise ConfigError(
                f"Role name {self.role!r} is not an identifier (letters, digits, '_', not starting with a digit)."
            )

    @property
    def is_role(self) -> bool:
        return self.role is not None

    def __str__(self) -> str:
        return self.role if self.role is not None else str(self.index)

    @classmethod
    def parse(cls, text: str | int) -> Position:
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(index=text)
        s = str(text).strip()
        if s.isdigit():
            return cls(index=int(s))
        if ROLE_PATTERN.match(s):
            return cls(role=s)
        raise ConfigError(
            f"Cannot parse position {text!r}. Expected a token index like '7' or a role name like 'subject_last'."
        )


class Direction(StrEnum):
    """Which run is patched with which.

    ``denoise``: clean activations are written into the corrupted run (does the site restore
    the behaviour?). ``noise``: corrupted activations are written into the clean run (does the
    site's corruption destroy it?).
    """

    DENOISE = "denoise"
    NOISE = "noise"

    def __str__(self) -> str:
        return self.value

    @property
    def source_run(self) -> str:
        return "clean" if self is Direction.DENOISE else "corrupted"

    @property
    def base_run(self) -> str:
        return "corrupted" if self is Direction.DENOISE else "clean"

    @classmethod
    def parse(cls, text: str) -> Direction:
        try:
            return cls(str(text).strip())
        except ValueError:
            raise ConfigError(
                f"Unknown direction {text!r}. Expected 'denoise' or 'noise'."
            ) from None


@dataclass(frozen=True)
class PatchSet:
    """Several (site, position) pairs patched together in one run, under a user-given name."""

    name: str
    entries: tuple[tuple[Site, Position], ...]

    def __post_init__(self) -> None:
        if not ROLE_PATTERN.match(self.name):
            raise ConfigError(
                f"Patch set name {self.name!r} must be an identifier (letters, digits, '_')."
            )
        entries = tuple(
            (
                e[0] if isinstance(e[0], Site) else Site.parse(e[0]),
                e[1] if isinstance(e[1], Position) else Position.parse(e[1]),
            )
            for e in self.entries
        )
        if not entries:
            raise ConfigError(
                f"Patch set {self.name!r} has no entries; give at least one 'site@position'."
            )
        if len(set(entries)) != len(entries):
            raise ConfigError(f"Patch set {self.name!r} lists the same site@position twice.")
        object.__setattr__(self, "entries", entries)

    @property
    def min_layer(self) -> int:
        return min(site.layer for site, _ in self.entries)

    def __str__(self) -> str:
        return f"{self.name}=" + "+".join(f"{s}@{p}" for s, p in self.entries)

    @classmethod
    def parse(cls, text: str) -> PatchSet:
        name, sep, body = str(text).strip().partition("=")
        if not sep or not body:
            raise ConfigError(
                f"Cannot parse patch set {text!r}. Expected 'name=site@pos+site@pos', e.g. 'mlp_window=mlp_out.3@subject_last+mlp_out.4@subject_last'."
            )
        entries = []
        for item in body.split("+"):
            site, at, pos = item.partition("@")
            if not at:
                raise ConfigError(
                    f"Patch set entry {item!r} in {text!r} has no '@position'. Expected 'site@position', e.g. 'mlp_out.3@subject_last'."
                )
            entries.append((Site.parse(site), Position.parse(pos)))
        return cls(name.strip(), tuple(entries))

    def to_dict(self) -> dict:
        return {"name": self.name, "entries": [[str(s), str(p)] for s, p in self.entries]}

    @classmethod
    def from_dict(cls, data: dict) -> PatchSet:
        return cls(
            data["name"], tuple((Site.parse(s), Position.parse(p)) for s, p in data["entries"])
        )
