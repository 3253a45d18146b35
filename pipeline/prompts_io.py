"""Read and write prompt dataset files: JSONL, CSV and Parquet encodings of one format.

Every reader returns raw records with their location (``"line 7"`` / ``"row 6"``) and the
problems it met while decoding, so that validation can report every bad row at once.
In CSV and Parquet the ``spans`` and ``corrupted_spans`` columns hold JSON text
(``{"subject": [4, 16]}``); Parquet may also hold them as a struct or map column.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from patchsweep.stores.errors import DatasetError

from .prompts import Problem, PromptDataset

__all__ = ["FORMATS", "file_format", "read_records", "write_records", "Record"]

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SPAN_COLUMNS = ("spans", "corrupted_spans")

Record = tuple[str, dict[str, Any]]  # (location, raw record)


def file_format(path: str | Path) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DatasetError(
            f"Unknown dataset file type {suffix!r} for {path}. Expected one of: {', '.join(FORMATS)}."
        )
    return FORMATS[suffix]


def read_records(path: str | Path) -> tuple[list[Record], list[Problem]]:
    """Decode a dataset file into (location, record) pairs and decoding problems."""
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset file not found: {path}")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    records, problems = reader(path)
    decoded = []
    for loc, rec in records:
        for key in SPAN_COLUMNS:
            value, reason = _decode_spans(rec.get(key))
            if reason:
                problems.append(Problem(str(path), loc, key, reason, _id(rec)))
                value = None
            rec[key] = value
        decoded.append((loc, rec))
    return decoded, problems


def _id(rec: Mapping[str, Any]) -> str | None:
    value = rec.get("id")
    return None if value is None else str(value)


def _read_jsonl(path: Path) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(
                        str(path),
                        f"line {n}",
                        "<line>",
                        f"not valid JSON ({exc.msg} at column {exc.colno})",
                    )
                )
                continue
            if not isinstance(rec, dict):
                problems.append(
                    Problem(
                        str(path),
                        f"line {n}",
                        "<line>",
                        f"expected a JSON object, got {type(rec).__name__}",
                    )
                )
                continue
            records.append((f"line {n}", rec))
    return records, problems


def _read_csv(path: Path) -> tuple[list[Record], list[Problem]]:
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        start = reader.line_num + 2  # physical line of the first record (header is line 1)
        for row in reader:
            # Empty cells are missing values; keep every other cell as text.
            rec = {k: (v if v != "" else None) for k, v in row.items() if k is not None}
            records.append((f"line {start}", rec))
            start = reader.line_num + 1
    return records, []


def _read_parquet(path: Path) -> tuple[list[Record], list[Problem]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [(f"row {i + 1}", rec) for i, rec in enumerate(rows)], []


def _decode_spans(value: Any) -> tuple[Any, str | None]:
    """Span column value -> mapping (or the value unchanged for the validator to judge)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return (
                None,
                f"not valid JSON ({exc.msg}); expected e.g. '{{\"subject\": [4, 16]}}', got {value!r}",
            )
    if isinstance(value, list) and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        value = dict(value)  # a Parquet map column
    if isinstance(value, dict):
        value = {
            k: v for k, v in value.items() if v is not None
        }  # a Parquet struct's absent fields
        return value or None, None
    return value, None


def write_records(dataset: PromptDataset, path: str | Path) -> None:
    """Write ``dataset`` in the format of ``path``'s suffix (spans as JSON text in CSV/Parquet)."""
    path = Path(path)
    fmt = file_format(path)
    records = [p.to_dict() for p in dataset]
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    flat = [
        {k: json.dumps(rec[k]) if k in SPAN_COLUMNS and k in rec else rec.get(k) for k in columns}
        for rec in records
    ]
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array([r[k] for r in flat], type=pa.string()) for k in columns})
    pq.write_table(table, path)
