"""Checking a study file's parts: each problem with its TOML key, the bad value, what is accepted.

:class:`StudyProblem` and :class:`StudyError` are what :func:`~.study.load_study` reports.
:func:`_build` constructs a stage's spec from its TOML table and attributes the spec's own
validation errors to key paths; the other helpers resolve and check the model, the datasets,
layers and roles, and token-level dataset problems.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from patchsweep.stores.errors import ConfigError, PatchsweepError

from .datasets import PromptDataset, require_aligned, tokenize_dataset
from .loading import DEMO_MODEL, resolve_model_path
from .patch import PatchSpec
from .study_config import DatasetRef
from .tokenization import tokenization_problems

__all__ = ["SHIPPED_DATASETS", "StudyError", "StudyProblem", "n_layers_of"]

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
#: Dataset names a study file may give instead of a path.
SHIPPED_DATASETS = ("ioi", "facts", "induction")


@dataclass(frozen=True)
class StudyProblem:
    """One problem of a study file: the TOML key path and what is wrong there."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class StudyError(ConfigError):
    """A study file is invalid; ``problems`` lists every problem found, each with its key."""

    def __init__(self, source: str, problems: list[StudyProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n  ".join(map(str, self.problems))
        super().__init__(f"{len(self.problems)} problem(s) in study {source}:\n  {lines}")


def _plain(value: Any) -> Any:
    """TOML arrays as tuples (the specs' canonical sequence type)."""
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def _unknown(key: str, name: str, known) -> StudyProblem:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return StudyProblem(
        f"{key}{name}", f"unknown key.{hint} Expected one of: {', '.join(sorted(known))}."
    )


def _build(
    cls, table: Any, key: str, problems: list[StudyProblem], extra: Mapping[str, Any] | None = None
):
    """``cls(**table)`` with every bad key reported at its key path (the class's own messages).

    The class validates; this only attributes its errors: when the whole table fails, each key
    is tried alone (and each element of a failing array alone) to find every bad one.
    """
    if not isinstance(table, Mapping):
        problems.append(
            StudyProblem(key, f"expected a table ([{key}]), got {type(table).__name__} {table!r}.")
        )
        return None
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for name, value in table.items():
        if name not in known:
            problems.append(_unknown(f"{key}.", name, known))
        else:
            kwargs[name] = _plain(value)
    kwargs.update(extra or {})
    try:
        return cls(**kwargs)
    except PatchsweepError as whole:
        found = []
        for name, value in kwargs.items():
            try:
                cls(**{name: value})
            except PatchsweepError as alone:
                elements = []
                if isinstance(value, tuple) and len(value) > 1:
                    for i, v in enumerate(value):
                        try:
                            cls(**{name: (v,)})
                        except PatchsweepError as e:
                            elements.append(StudyProblem(f"{key}.{name}[{i}]", str(e)))
                found += elements or [StudyProblem(f"{key}.{name}", str(alone))]
            except TypeError:
                pass
        problems.extend(found or [StudyProblem(key, str(whole))])
        return None
    except TypeError as e:  # a value of the wrong TOML type deep in a spec
        problems.append(StudyProblem(key, f"{e}"))
        return None


def _dataset_refs(
    doc: dict, base: Path, problems: list[StudyProblem]
) -> list[tuple[str, DatasetRef]]:
    if "dataset" in doc and "datasets" in doc:
        problems.append(
            StudyProblem(
                "datasets", "give either one [dataset] table or [[datasets]] tables, not both."
            )
        )
        return []
    if "dataset" in doc:
        tables, keys = [doc["dataset"]], ["dataset"]
    elif "datasets" in doc and isinstance(doc["datasets"], list):
        tables, keys = doc["datasets"], [f"datasets[{i}]" for i in range(len(doc["datasets"]))]
    else:
        problems.append(
            StudyProblem(
                "dataset",
                f"missing. Expected a [dataset] table with path = a file or one of {', '.join(SHIPPED_DATASETS)}.",
            )
        )
        return []
    refs = []
    for key, table in zip(keys, tables, strict=True):
        if not isinstance(table, Mapping):
            problems.append(StudyProblem(key, f"expected a table with path = ..., got {table!r}."))
            continue
        problems += [
            _unknown(f"{key}.", k, ("path", "name", "limit"))
            for k in table
            if k not in ("path", "name", "limit")
        ]
        raw = table.get("path")
        if not isinstance(raw, str) or not raw:
            problems.append(
                StudyProblem(
                    f"{key}.path",
                    f"expected a file path or one of {', '.join(SHIPPED_DATASETS)}, got {raw!r}.",
                )
            )
            continue
        path = DATASETS_DIR / f"{raw}.jsonl" if raw in SHIPPED_DATASETS else (base / raw).resolve()
        if not path.is_file():
            problems.append(
                StudyProblem(
                    f"{key}.path",
                    f"no file {str(path)!r}. Expected a .jsonl/.csv/.parquet file (relative to the study file) or one of {', '.join(SHIPPED_DATASETS)}.",
                )
            )
            continue
        try:
            refs.append(
                (key, DatasetRef(str(path), table.get("name", Path(path).stem), table.get("limit")))
            )
        except ConfigError as e:
            problems.append(StudyProblem(key, str(e)))
    return refs


def _model_path(raw: Any, base: Path, problems: list[StudyProblem]) -> tuple[str, dict]:
    """The resolved model folder and its config.json (empty on a problem)."""
    if raw in (None, "demo"):
        raw_path = DEMO_MODEL
    elif isinstance(raw, str) and raw:
        raw_path = base / raw if (base / raw).exists() else raw
    else:
        problems.append(
            StudyProblem(
                "model",
                f"expected 'demo', a model folder or a cached Hugging Face repo id, got {raw!r}.",
            )
        )
        return "", {}
    try:
        path = resolve_model_path(raw_path)
    except PatchsweepError as e:
        problems.append(StudyProblem("model", str(e)))
        return str(raw_path), {}
    try:
        return str(path), json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        problems.append(StudyProblem("model", f"cannot read {path}/config.json: {e}"))
        return str(path), {}


def n_layers_of(config: Mapping[str, Any]) -> int | None:
    """The number of decoder blocks an mlx-lm config.json declares (None if it names none)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _check_against(
    layers: Any,
    positions: Any,
    patch_sets: tuple,
    n_layers: int | None,
    roles: set[str] | None,
    problems: list[StudyProblem],
) -> None:
    """Layers against the model, roles against the datasets' spans (raw values tolerated)."""
    if n_layers is not None and isinstance(layers, tuple):
        for i, layer in enumerate(layers):
            if isinstance(layer, int) and layer >= n_layers:
                problems.append(
                    StudyProblem(
                        f"patch.layers[{i}]",
                        f"layer {layer} does not exist; the model has layers 0..{n_layers - 1}.",
                    )
                )
    for k, ps in enumerate(patch_sets):
        for site, pos in ps.entries:
            if n_layers is not None and site.layer >= n_layers:
                problems.append(
                    StudyProblem(
                        f"patch.patch_sets[{k}]",
                        f"site {site} does not exist; the model has layers 0..{n_layers - 1}.",
                    )
                )
            if roles is not None and pos.is_role and str(pos) not in roles:
                problems.append(
                    StudyProblem(
                        f"patch.patch_sets[{k}]",
                        f"role {str(pos)!r} is not defined by the dataset(s). Expected one of: {', '.join(sorted(roles))}.",
                    )
                )
    if roles is not None and isinstance(positions, tuple):
        for i, role in enumerate(positions):
            if isinstance(role, str) and role not in roles:
                problems.append(
                    StudyProblem(
                        f"patch.positions[{i}]",
                        f"role {role!r} is not defined by the dataset(s). Expected 'all' or some of: {', '.join(sorted(roles))}.",
                    )
                )


def _token_problems(
    key: str, ds: PromptDataset, model: str, patch: PatchSpec, noise: bool
) -> list[StudyProblem]:
    """Token-level dataset checks with the model's tokenizer (no weights are loaded)."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(Path(model))
    found = tokenization_problems(ds, tokenizer)
    if found:
        return [StudyProblem(f"{key}.path", str(p)) for p in found]
    absolute = patch.positions == "all" or any(
        not p.is_role for ps in patch.patch_sets for _, p in ps.entries
    )
    if absolute and not noise:  # noise corruption keeps the clean tokens: always aligned
        try:
            require_aligned(tokenize_dataset(ds, tokenizer), "positions = 'all'")
        except PatchsweepError as e:
            return [
                StudyProblem(
                    "patch.positions",
                    f"{e} Expected role positions for this dataset, e.g. positions = {list(ds.roles)!r}.",
                )
            ]
    return []
