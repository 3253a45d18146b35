"""What a store was made from: hashes and the identity record, and the mismatch message.

A capture store is only valid for the exact model weights, tokenizer, prompt dataset and
capture spec it was computed from. :class:`Identity` holds those four parts as plain JSON
dicts; each part is summarised by the sha256 of its canonical JSON (sorted keys, no
whitespace), so two identities agree exactly when their four digests agree.
:func:`check_identity` compares a requested identity with the one a store recorded and names
every differing part and key (``spec.layers: store has [0, 1], requested [0, 1, 2]``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from .errors import ConfigError, StoreError, StoreMismatchError

__all__ = [
    "IDENTITY_PARTS",
    "Identity",
    "canonical_json",
    "check_identity",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "sha256_arrays",
    "sha256_dataset",
    "sha256_file",
    "sha256_files",
    "sha256_json",
]

IDENTITY_PARTS = ("model", "tokenizer", "dataset", "spec")
_READ_BYTES = 1 << 22


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: one string per value (tuples read as lists)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def sha256_json(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: str | PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[str | PathLike]) -> str:
    """sha256 over several files (e.g. safetensors shards), in the order given.

    Each file contributes its own digest, so the result does not depend on file names.
    """
    h = hashlib.sha256()
    for path in paths:
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def sha256_arrays(arrays: Mapping[str, Any]) -> str:
    """sha256 over named arrays (e.g. model weights), sorted by name.

    Each array contributes its name, dtype, shape and C-order bytes, so a renamed, reshaped or
    re-typed weight changes the digest. Values must convert with ``np.asarray``.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(canonical_json([name, a.dtype.str, list(a.shape)]).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def sha256_dataset(records: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over dataset records in order: one canonical JSON line per record."""
    h = hashlib.sha256()
    for record in records:
        h.update(canonical_json(dict(record)).encode())
        h.update(b"\n")
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    """The JSON form of ``obj`` (tuples -> lists), so stored and fresh values compare equal."""
    return json.loads(canonical_json(obj))


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """A flat dataclass (specs, layouts) as stored JSON: tuples become lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}


def dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """The inverse of :func:`dataclass_to_dict` (lists become tuples); an unknown key is a
    :class:`ConfigError` naming it and the accepted fields."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"Unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(known)}."
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Identity:
    """The four parts a store was made from, each a JSON-serialisable dict.

    ``model`` holds the config and a weights hash (``sha256_files`` / ``sha256_arrays``),
    ``tokenizer`` a hash of the tokenizer files, ``dataset`` a dataset hash
    (``sha256_dataset``) and name, ``spec`` the capture spec's ``to_dict()``.
    """

    model: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in IDENTITY_PARTS:
            value = getattr(self, part)
            if not isinstance(value, Mapping):
                raise StoreMismatchError(
                    f"Identity part {part!r} must be a dict, got {type(value).__name__}."
                )
            if "digest" in value:
                raise StoreMismatchError(
                    f"Identity part {part!r} uses the reserved key 'digest' (the store adds each part's "
                    "digest under that key); name the field differently, e.g. 'sha256'."
                )
            try:
                object.__setattr__(self, part, _plain(dict(value)))
            except (TypeError, ValueError) as e:
                raise StoreMismatchError(
                    f"Identity part {part!r} is not JSON-serialisable: {e}."
                ) from None

    def part_digest(self, part: str) -> str:
        return sha256_json(getattr(self, part))

    @property
    def digests(self) -> dict[str, str]:
        """``{part: sha256}`` for the four parts."""
        return {part: self.part_digest(part) for part in IDENTITY_PARTS}

    @property
    def digest(self) -> str:
        """One sha256 over the four part digests: what a results store records as its source."""
        return sha256_json(self.digests)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{part: {"digest": sha256, **content}}``, the form stored in a store's attributes."""
        return {
            part: {"digest": self.part_digest(part), **getattr(self, part)}
            for part in IDENTITY_PARTS
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        """Inverse of :meth:`to_dict`; checks each stored digest against its content."""
        missing = [p for p in IDENTITY_PARTS if p not in data]
        if missing:
            raise StoreError(
                f"Stored identity lacks parts {missing}; expected {list(IDENTITY_PARTS)}."
            )
        parts = {p: {k: v for k, v in data[p].items() if k != "digest"} for p in IDENTITY_PARTS}
        identity = cls(**parts)
        for part in IDENTITY_PARTS:
            stored = data[part].get("digest")
            if stored is not None and stored != identity.part_digest(part):
                raise StoreError(
                    f"Stored identity part {part!r} has digest {stored} but its content hashes to "
                    f"{identity.part_digest(part)}; the store's attributes were edited or damaged."
                )
        return identity


def _short(value: Any, limit: int = 80) -> str:
    text = canonical_json(value) if not isinstance(value, str) else repr(value)
    text = text.replace(",", ", ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def diff_values(path: str, found: Any, expected: Any) -> list[str]:
    """Lines ``path.key: store has X, requested Y`` for every leaf that differs."""
    if isinstance(found, dict) and isinstance(expected, dict):
        lines: list[str] = []
        for key in sorted(set(found) | set(expected)):
            sub = f"{path}.{key}"
            if key not in found:
                lines.append(f"{sub}: store has nothing, requested {_short(expected[key])}")
            elif key not in expected:
                lines.append(f"{sub}: store has {_short(found[key])}, requested nothing")
            else:
                lines.extend(diff_values(sub, found[key], expected[key]))
        return lines
    if found == expected:
        return []
    return [f"{path}: store has {_short(found)}, requested {_short(expected)}"]


def check_identity(expected: Identity, found: Identity, *, where: str = "the store") -> None:
    """Raise :class:`StoreMismatchError` unless ``found`` (a store's) equals ``expected``.

    The message names each differing part (model, tokenizer, dataset, spec) and, inside it,
    each differing key with both values.
    """
    differing = [p for p in IDENTITY_PARTS if expected.part_digest(p) != found.part_digest(p)]
    if not differing:
        return
    lines = []
    for part in differing:
        lines.extend(diff_values(part, getattr(found, part), getattr(expected, part)))
    raise StoreMismatchError(
        f"{where} was made with a different {', '.join(differing)} than requested:\n  "
        + "\n  ".join(lines)
        + "\nUse a new store path for the new inputs, or request the store's original inputs."
    )
