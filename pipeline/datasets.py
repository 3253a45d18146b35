"""Prompt datasets: the one format, its readers, validation, tokenisation and position roles.

A dataset is a list of clean/corrupted prompt pairs. The capture stage runs both prompts;
the patch stage writes one run's activations into the other and scores the next token.

Format
------
One record per pair, with these fields (the same in every encoding):

=================== ======== =============================================================
field               required meaning
=================== ======== =============================================================
``id``              yes      unique text id of the pair
``clean``           yes      the clean prompt
``corrupted``       yes      the corrupted prompt
``answer``          yes      the clean prompt's correct continuation, exactly as it follows
                             the prompt (usually with its leading space: ``" Mary"``); it must
                             be one token (see :mod:`.tokenization` for how it is tokenised)
``wrong``           no       the corrupted prompt's answer, for logit differences
``spans``           no       labeled character spans of the clean text,
                             ``{"subject": [start, end]}`` (half-open, 0-based)
``corrupted_spans`` no       the same labels in the corrupted text, when their offsets differ
                             there (without it the clean offsets apply to both prompts)
any other column    no       metadata (``task``, ``template``, ...), kept as text and copied
                             into the stores as ``meta_<column>``; names are identifiers
=================== ======== =============================================================

Encodings, chosen by file suffix: JSONL (``.jsonl``, one JSON object per line, spans as
objects), CSV (``.csv``, a header row; ``spans`` / ``corrupted_spans`` cells hold the JSON
text ``{"subject": [4, 16]}``; empty cells are missing) and Parquet (``.parquet``; span
columns as JSON text, or as a struct or map column).

Position roles
--------------
Each pair defines, per run, the roles ``last`` (the last prompt token, whose next-token
prediction is scored) and, for each span label ``s``, ``s_first`` and ``s_last`` (the first and
last token that overlaps the span). Roles let pairs of different lengths be aggregated and
patched position by position; absolute positions need equal clean and corrupted token counts
(:func:`require_aligned`).

Validation
----------
:func:`read_dataset` checks every row and raises one :class:`DatasetError` listing all bad
rows (file, line or row, field, reason): missing field, text that is not text, empty text,
duplicate id, span malformed, empty, outside its text or naming other labels than the clean
spans, ``wrong`` equal to ``answer``, bad metadata column name. :func:`tokenize_dataset` adds
the token-level checks: answers that are not one token, over-length or empty prompts, spans
that cover no token. :func:`validate_file` runs both and returns the problems instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchsweep.stores.errors import DatasetError

from .prompts import (
    FIELDS,
    RUNS,
    Problem,
    PromptDataset,
    PromptPair,
    Span,
    check_record,
    role_names,
)
from .prompts_io import FORMATS, file_format, read_records, write_records
from .tokenization import (
    MultiToken,
    TokenizedDataset,
    require_aligned,
    tokenization_problems,
    tokenize_dataset,
)

__all__ = [
    "FIELDS",
    "FORMATS",
    "RUNS",
    "Problem",
    "PromptDataset",
    "PromptPair",
    "Span",
    "TokenizedDataset",
    "file_format",
    "read_dataset",
    "require_aligned",
    "role_names",
    "tokenize_dataset",
    "validate_file",
    "write_dataset",
]


def _parse_file(path: Path, name: str | None) -> tuple[PromptDataset | None, list[Problem]]:
    records, problems = read_records(path)
    pairs, locations, first_seen = [], [], {}
    for loc, rec in records:
        kw, row_problems = check_record(rec)
        rid = kw.get("id")
        problems += [Problem(str(path), loc, f, r, rid) for f, r in row_problems]
        if rid is not None:
            if rid in first_seen:
                problems.append(
                    Problem(
                        str(path),
                        loc,
                        "id",
                        f"duplicate id {rid!r} (first used at {first_seen[rid]})",
                        rid,
                    )
                )
            first_seen.setdefault(rid, loc)
        if not row_problems:
            pairs.append(PromptPair(**kw))
            locations.append(loc)
    problems.sort(
        key=lambda p: int(p.location.split()[-1]) if p.location.split()[-1].isdigit() else 0
    )
    if problems:
        return None, problems
    if not pairs:
        return None, [
            Problem(str(path), "file", "<file>", "no records; expected at least one prompt pair")
        ]
    dataset = PromptDataset(
        tuple(pairs),
        name=name if name is not None else path.stem,
        source=str(path),
        locations=tuple(locations),
    )
    return dataset, []


def read_dataset(path: str | Path, name: str | None = None) -> PromptDataset:
    """Read a JSONL, CSV or Parquet dataset file, checking every row.

    Parameters
    ----------
    path : str or Path
        ``.jsonl``, ``.ndjson``, ``.csv``, ``.parquet`` or ``.pq``.
    name : str, optional
        Dataset name recorded in stores; default: the file name without suffix.

    Raises
    ------
    DatasetError
        One error listing every bad row (see the module docstring for the checks).
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = Path(path)
    dataset, problems = _parse_file(path, name)
    if problems:
        raise DatasetError(
            f"{len(problems)} problem(s) in dataset {path}:\n  " + "\n  ".join(map(str, problems))
        )
    return dataset


def write_dataset(dataset: PromptDataset, path: str | Path) -> None:
    """Write ``dataset`` as JSONL, CSV or Parquet, chosen by ``path``'s suffix."""
    write_records(dataset, path)


def validate_file(
    path: str | Path,
    tokenizer: Any = None,
    max_length: int | None = None,
    multi_token: MultiToken = "error",
) -> list[Problem]:
    """Every problem of a dataset file, row checks first, then (with a tokenizer) token checks.

    Token-level checks run only when the rows themselves are valid. Returns an empty list for
    a valid file; raises only when the file is missing or of an unknown type.
    """
    path = Path(path)
    dataset, problems = _parse_file(path, None)
    if problems or tokenizer is None:
        return problems
    return tokenization_problems(dataset, tokenizer, max_length, multi_token)
