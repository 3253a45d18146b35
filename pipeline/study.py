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

This module reads the file (:func:`load_study`); the checked :class:`Study` and its parts live
in :mod:`.study_config`, the checks of each table in :mod:`.study_checks` (both re-exported
here).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from patchsweep.analysis.config import AnalysisConfig
from patchsweep.stores.errors import ConfigError, PatchsweepError

from .capture import CaptureSpec
from .compute import ComputeConfig
from .corruption import NoiseCorruption
from .patch import PatchSpec
from .study_checks import (
    SHIPPED_DATASETS,
    StudyError,
    StudyProblem,
    _build,
    _check_against,
    _dataset_refs,
    _model_path,
    _plain,
    _token_problems,
    _unknown,
    n_layers_of,
)
from .study_config import DatasetRef, Study, StudyPaths, _capture_gaps, _needed_by

__all__ = [
    "DatasetRef",
    "Study",
    "StudyError",
    "StudyPaths",
    "StudyProblem",
    "load_study",
    "SHIPPED_DATASETS",
]

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
