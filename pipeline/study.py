"""Study files: one TOML file that describes a whole patching study, validated up front.

A study is the three stages run on one model and one or more prompt datasets: capture (both
runs' activations into a capture store), patch (results store), analysis (table, figures,
report). The study file names every choice; :func:`load_study` checks all of it *before* any
heavy work and reports every problem at once, each with its TOML key, the bad value and what
is accepted. The :class:`Study` is built from the stages' own frozen specs
(:class:`~.capture.CaptureSpec`, :class:`~.patch.PatchSpec`,
:class:`~patchsweep.analysis.AnalysisConfig`, :class:`~.corruption.NoiseCorruption`,
:class:`~.compute.ComputeConfig`); their validation is reused, never repeated here.

Schema (every table and key is optional except ``dataset.path``)::

    name = "ioi"                  # study name; default: the file name without .toml
    model = "demo"                # "demo" (shipped), an mlx-lm folder, or a cached HF repo id
    output = "runs/ioi"           # default: runs/<name>

    [dataset]                     # or [[datasets]] tables, one per dataset
    path = "ioi"                  # a shipped name (ioi, facts, induction) or a .jsonl/.csv/.parquet
    limit = 64                    # optional: only the first `limit` pairs

    [corruption]                  # default: the dataset's corrupted prompts
    kind = "noise"                # "prompts" or "noise" (ROME: Gaussian noise on a span)
    span = "subject"; scale = 3.0; seed = 0   # std = ... (default: measured)

    [patch]                       # PatchSpec
    sites = ["resid_pre", "attn_out", "mlp_out"]; layers = "all"; positions = "all"
    directions = ["denoise"]; metrics = ["logit_diff"]
    patch_sets = ["window=mlp_out.1@subject_last+mlp_out.2@subject_last"]

    [capture]                     # CaptureSpec; sites/layers/positions default to what [patch] needs
    storage_dtype = "float32"; batch_size = 8

    [statistics]                  # AnalysisConfig
    test = "t"; alternative = "two-sided"; family = ["site"]; correction = "bh"; alpha = 0.05

    [compute]                     # ComputeConfig
    device = "auto"; dtype = "auto"

    [stores]                      # default: <output>/<dataset>/{capture,results}.zarr
    capture = "/scratch/{study}/{dataset}/capture.zarr"

Paths of inputs (``model``, ``dataset.path``) are relative to the study file's folder;
``output`` and ``stores`` paths are relative to the directory patchsweep runs in.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from patchsweep.analysis.config import AnalysisConfig
from patchsweep.stores.errors import ConfigError, PatchsweepError
from patchsweep.stores.identity import sha256_json
from patchsweep.stores.sites import SiteKind

from .capture import CaptureSpec
from .compute import ComputeConfig
from .corruption import NoiseCorruption
from .datasets import PromptDataset, read_dataset, require_aligned, tokenize_dataset
from .loading import DEMO_MODEL, resolve_model_path
from .patch import PatchSpec
from .tokenization import tokenization_problems

__all__ = [
    "DatasetRef",
    "Study",
    "StudyError",
    "StudyPaths",
    "StudyProblem",
    "load_study",
    "SHIPPED_DATASETS",
]

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
#: Dataset names a study file may give instead of a path.
SHIPPED_DATASETS = ("ioi", "facts", "induction")
_TOP_KEYS = (
    "name",
    "model",
    "output",
    "dataset",
    "datasets",
    "corruption",
    "capture",
    "patch",
    "statistics",
    "compute",
    "stores",
)
_CORRUPTION_KINDS = ("prompts", "noise")


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


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of a study: a file, its name in the stores, and an optional row limit."""

    path: str
    name: str
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (
            not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1
        ):
            raise ConfigError(f"dataset limit must be an integer >= 1, got {self.limit!r}.")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"dataset name {self.name!r} must be non-empty letters, digits, '-', '_' or '.' (it names folders)."
            )

    def load(self) -> PromptDataset:
        """Read and check the file; keep the first ``limit`` pairs."""
        ds = read_dataset(self.path, name=self.name)
        if self.limit is None or self.limit >= len(ds):
            return ds
        return PromptDataset(
            ds.pairs[: self.limit],
            name=ds.name,
            source=ds.source,
            locations=ds.locations[: self.limit],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "limit": self.limit}


@dataclass(frozen=True)
class StudyPaths:
    """Where one dataset's stores and analysis outputs go."""

    capture: str
    results: str
    analysis: Path


@dataclass(frozen=True)
class Study:
    """A whole study, checked: model, datasets, corruption and the stages' specs.

    Build it with :func:`load_study` (from a TOML file) or :meth:`from_dict` (from a store's
    attributes). ``to_dict`` gives plain JSON types, stored in every store a study makes.
    """

    name: str
    model: str
    datasets: tuple[DatasetRef, ...]
    capture: CaptureSpec
    patch: PatchSpec
    analysis: AnalysisConfig
    compute: ComputeConfig = ComputeConfig()
    corruption: NoiseCorruption | None = None
    output: str = "runs/study"
    capture_store: str = "{output}/{dataset}/capture.zarr"
    results_store: str = "{output}/{dataset}/results.zarr"

    def __post_init__(self) -> None:
        for name, cls in (
            ("capture", CaptureSpec),
            ("patch", PatchSpec),
            ("analysis", AnalysisConfig),
            ("compute", ComputeConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"Study.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}."
                )
        if self.corruption is not None and not isinstance(self.corruption, NoiseCorruption):
            raise ConfigError(
                f"Study.corruption must be a NoiseCorruption or None, got {type(self.corruption).__name__}."
            )
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if not self.datasets:
            raise ConfigError("A study needs at least one dataset ([dataset] path = ...).")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"Study datasets must have distinct names (they name the store folders), got {names}."
            )
        missing = _capture_gaps(self.capture, self.patch)
        if missing:
            raise ConfigError(
                "The capture spec lacks what the patch spec needs: " + "; ".join(missing) + "."
            )

    def paths(self, dataset: DatasetRef | str) -> StudyPaths:
        """Store locations and analysis folder of one of the study's datasets."""
        name = dataset if isinstance(dataset, str) else dataset.name
        fill = {"output": self.output, "dataset": name, "study": self.name}
        return StudyPaths(
            self.capture_store.format(**fill),
            self.results_store.format(**fill),
            Path(self.output) / name / "analysis",
        )

    @property
    def digest(self) -> str:
        """sha256 of :meth:`to_dict`: two studies with the same digest do the same work."""
        return sha256_json(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "datasets": [d.to_dict() for d in self.datasets],
            "corruption": self.corruption.to_dict()
            if self.corruption is not None
            else {"kind": "prompts"},
            "capture": self.capture.to_dict(),
            "patch": self.patch.to_dict(),
            "analysis": self.analysis.to_dict(),
            "compute": self.compute.to_dict(),
            "output": self.output,
            "capture_store": self.capture_store,
            "results_store": self.results_store,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Study:
        data = dict(data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"Unknown Study field(s) {unknown}; expected some of {sorted(f.name for f in fields(cls))}."
            )
        corruption = dict(data.pop("corruption", {"kind": "prompts"}))
        return cls(
            datasets=tuple(DatasetRef(**d) for d in data.pop("datasets")),
            corruption=None
            if corruption.get("kind") == "prompts"
            else NoiseCorruption.from_dict(corruption),
            capture=CaptureSpec.from_dict(data.pop("capture")),
            patch=PatchSpec.from_dict(data.pop("patch")),
            analysis=AnalysisConfig.from_dict(data.pop("analysis")),
            compute=ComputeConfig.from_dict(data.pop("compute", {})),
            **data,
        )


# -- the capture a patch spec needs ----------------------------------------------------------


def _needed_by(
    patch: PatchSpec,
) -> tuple[tuple[SiteKind, ...], tuple[int, ...] | str, tuple[str, ...] | str]:
    """(site kinds, layers, positions) a capture store must hold for ``patch``."""
    set_entries = [e for ps in patch.patch_sets for e in ps.entries]
    kinds = set(patch.sites) | {site.kind for site, _ in set_entries}
    sites = tuple(k for k in SiteKind if k in kinds)
    layers = (
        "all"
        if patch.layers is None
        else tuple(sorted(set(patch.layers) | {site.layer for site, _ in set_entries}))
    )
    if patch.positions == "all" or any(not p.is_role for _, p in set_entries):
        positions = "all"
    else:
        positions = tuple(dict.fromkeys([*patch.positions, *(str(p) for _, p in set_entries)]))
    return sites, layers, positions


def _capture_gaps(capture: CaptureSpec, patch: PatchSpec) -> list[str]:
    sites, layers, positions = _needed_by(patch)
    gaps = []
    if set(sites) - set(capture.sites):
        gaps.append(
            f"capture.sites lacks {sorted(str(k) for k in set(sites) - set(capture.sites))}"
        )
    if capture.layers != "all" and (layers == "all" or set(layers) - set(capture.layers)):
        need = "every layer" if layers == "all" else sorted(set(layers) - set(capture.layers))
        gaps.append(f"capture.layers lacks {need}")
    if capture.positions != "all" and (
        positions == "all" or set(positions) - set(capture.positions)
    ):
        need = (
            "every position"
            if positions == "all"
            else sorted(set(positions) - set(capture.positions))
        )
        gaps.append(f"capture.positions lacks {need}")
    if not capture.logits:
        gaps.append("capture.logits must be true (every metric needs the final logits)")
    return gaps


# -- loading a study file ----------------------------------------------------------------------


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


def load_study(path: str | Path, *, output: str | None = None, check_data: bool = True) -> Study:
    """Read, resolve and check a study file; every problem is reported at once.

    Parameters
    ----------
    path : str or Path
        The TOML study file.
    output : str, optional
        Overrides the file's ``output`` folder.
    check_data : bool
        Also read each dataset (every row checked) and check roles and layers against the
        datasets and the model's config.json. No model weights are loaded.

    Raises
    ------
    StudyError
        Listing every problem as ``key: message`` (a :class:`ConfigError`).
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            str(path),
            [
                StudyProblem(
                    "<file>",
                    f"no study file {str(path)!r}; expected a .toml file (see datasets/studies/).",
                )
            ],
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StudyError(str(path), [StudyProblem("<toml>", f"not valid TOML: {e}")]) from None
    base = path.resolve().parent
    problems = [_unknown("", k, _TOP_KEYS) for k in doc if k not in _TOP_KEYS]

    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        problems.append(StudyProblem("name", f"expected a non-empty string, got {name!r}."))
        name = path.stem
    model, config = _model_path(doc.get("model"), base, problems)
    refs = _dataset_refs(doc, base, problems)

    corruption = None
    table = doc.get("corruption", {})
    kind = table.get("kind", "prompts") if isinstance(table, Mapping) else None
    if kind not in _CORRUPTION_KINDS:
        problems.append(
            StudyProblem(
                "corruption.kind",
                f"unknown corruption kind {kind!r}. Expected one of: {', '.join(_CORRUPTION_KINDS)}.",
            )
        )
    elif kind == "noise":
        corruption = _build(
            NoiseCorruption, {k: v for k, v in table.items() if k != "kind"}, "corruption", problems
        )
    elif set(table) - {"kind"}:
        problems.append(
            StudyProblem(
                "corruption", f"keys {sorted(set(table) - {'kind'})} apply only to kind = 'noise'."
            )
        )

    patch_table = doc.get("patch", {})
    if isinstance(patch_table, Mapping) and patch_table.get("layers") == "all":  # TOML has no null
        patch_table = {k: v for k, v in patch_table.items() if k != "layers"}
    patch = _build(PatchSpec, patch_table, "patch", problems)
    capture_table = doc.get("capture", {})
    capture = None
    if patch is not None:
        sites, layers, positions = _needed_by(patch)
        derived = {"sites": sites, "layers": layers, "positions": positions}
        extra = {
            k: v
            for k, v in derived.items()
            if not (isinstance(capture_table, Mapping) and k in capture_table)
        }
        capture = _build(CaptureSpec, capture_table, "capture", problems, extra)
        if capture is not None:
            problems += [StudyProblem("capture", gap) for gap in _capture_gaps(capture, patch)]
    else:
        _build(CaptureSpec, capture_table, "capture", problems)
    analysis = _build(AnalysisConfig, doc.get("statistics", {}), "statistics", problems)
    compute = _build(ComputeConfig, doc.get("compute", {}), "compute", problems)

    out = output if output is not None else doc.get("output", f"runs/{name}")
    if not isinstance(out, str) or not out:
        problems.append(StudyProblem("output", f"expected a folder path, got {out!r}."))
        out = f"runs/{name}"
    stores = doc.get("stores", {})
    store_paths = {
        "capture": "{output}/{dataset}/capture.zarr",
        "results": "{output}/{dataset}/results.zarr",
    }
    if not isinstance(stores, Mapping):
        problems.append(
            StudyProblem(
                "stores", f"expected a table with capture = ..., results = ..., got {stores!r}."
            )
        )
    else:
        for k, v in stores.items():
            if k not in store_paths:
                problems.append(_unknown("stores.", k, store_paths))
            elif not isinstance(v, str) or not v:
                problems.append(
                    StudyProblem(
                        f"stores.{k}",
                        f"expected a path or URL (may use {{output}}, {{dataset}}, {{study}}), got {v!r}.",
                    )
                )
            elif len(refs) > 1 and "{dataset}" not in v:
                problems.append(
                    StudyProblem(
                        f"stores.{k}",
                        f"{v!r} must contain {{dataset}} when the study has several datasets.",
                    )
                )
            else:
                store_paths[k] = v

    if check_data:
        roles: set[str] | None = None
        span = table.get("span", "subject") if kind == "noise" else None
        for key, ref in refs:
            try:
                ds = ref.load()
            except PatchsweepError as e:
                problems.append(StudyProblem(f"{key}.path", str(e)))
                continue
            roles = set(ds.roles) if roles is None else roles & set(ds.roles)
            if model and config and patch is not None:
                problems += _token_problems(
                    key, ds, model, patch, corruption is not None or kind == "noise"
                )
            if span is not None and span not in ds.span_names:
                spans = ", ".join(ds.span_names) or "(none)"
                problems.append(
                    StudyProblem(
                        "corruption.span",
                        f"span {span!r} is not labeled in dataset {ref.name!r}. Expected one of its spans: {spans}.",
                    )
                )
        raw = patch_table if isinstance(patch_table, Mapping) else {}
        _check_against(
            patch.layers if patch is not None else _plain(raw.get("layers")),
            patch.positions if patch is not None else _plain(raw.get("positions")),
            patch.patch_sets if patch is not None else (),
            n_layers_of(config) if config else None,
            roles,
            problems,
        )

    if problems:
        raise StudyError(str(path), problems)
    try:
        return Study(
            name=name,
            model=model,
            datasets=tuple(ref for _, ref in refs),
            capture=capture,
            patch=patch,
            analysis=analysis,
            compute=compute,
            corruption=corruption,
            output=out,
            capture_store=store_paths["capture"],
            results_store=store_paths["results"],
        )
    except ConfigError as e:
        raise StudyError(str(path), [StudyProblem("<study>", str(e))]) from None
