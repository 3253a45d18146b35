"""The checked study: :class:`Study`, its datasets (:class:`DatasetRef`) and where outputs go.

A :class:`Study` is built from the stages' own frozen specs and round-trips through
``to_dict``/``from_dict`` (it is stored in every store a study makes). It also checks that its
capture spec holds what its patch spec needs (:func:`_capture_gaps`). Reading one from a TOML
file is :func:`~.study.load_study`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from patchsweep.analysis.config import AnalysisConfig
from patchsweep.stores.errors import ConfigError
from patchsweep.stores.identity import sha256_json
from patchsweep.stores.sites import SiteKind

from .capture import CaptureSpec
from .compute import ComputeConfig
from .corruption import NoiseCorruption
from .datasets import PromptDataset, read_dataset
from .patch import PatchSpec

__all__ = ["DatasetRef", "Study", "StudyPaths"]


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
