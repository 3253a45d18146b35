"""``AnalysisConfig``: what an analysis tests and how, validated on construction.

The config is a frozen dataclass that round-trips through ``to_dict``/``from_dict`` (plain JSON
types), so the exact analysis can be written next to its outputs and re-run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from patchsweep.stores.errors import ConfigError
from patchsweep.stores.metrics import Metric
from patchsweep.stores.sites import Direction

from .multitest import CORRECTIONS
from .resampling import BOOTSTRAP_METHODS
from .stats import ALTERNATIVES

__all__ = ["AnalysisConfig", "TESTS", "FAMILY_COLUMNS", "SWEEPS"]

TESTS = ("t", "wilcoxon", "permutation")
SWEEPS = ("site", "head", "set")
#: Table columns a multiple-testing family can be split by (plus any ``group_by`` column).
FAMILY_COLUMNS = ("direction", "metric", "sweep", "site", "layer", "pos")


def _tuple(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        raise ConfigError(
            f"{name} must be a string or a sequence of strings, got {value!r}."
        ) from None


def _choice(value: str, valid: tuple[str, ...], name: str) -> str:
    if value not in valid:
        raise ConfigError(f"Unknown {name} {value!r}. Expected one of: {', '.join(valid)}.")
    return value


@dataclass(frozen=True)
class AnalysisConfig:
    """What to test, how, and how to correct for multiplicity.

    Parameters
    ----------
    metrics : tuple of str
        Metrics to analyse (``Metric`` names); empty means every metric in the store.
    directions : tuple of str
        ``denoise`` and/or ``noise``; empty means every direction in the store.
    sweeps : tuple of str
        Which arrays to analyse: ``site`` (site x layer x pos), ``head`` (layer x pos x head),
        ``set`` (patch sets). Arrays the store lacks are skipped.
    test : {"t", "wilcoxon", "permutation"}
        One-sample t-test, Wilcoxon signed-rank, or sign-flip permutation test of the mean.
    alternative : {"two-sided", "greater", "less"}
    null_value : float
        Recovery under H0: 0 tests "any effect"; e.g. 0.1 with ``alternative="greater"``
        tests "recovers more than 10%".
    family : tuple of str
        Columns whose values split the tests into separately corrected families; empty is the
        whole study. Allowed: ``direction``, ``metric``, ``sweep``, ``site``, ``layer``, ``pos``
        and ``group_by`` columns.
    correction : {"bh", "by", "holm", "bonferroni"}
    alpha : float
        FDR or FWER level of the correction.
    confidence : float
        Two-sided level of the bootstrap and t intervals.
    bootstrap : {"bca", "percentile"}
    n_bootstrap : int
        Bootstrap resamples; 0 skips the bootstrap interval (NaN columns).
    n_permutations : int
        Monte Carlo sign patterns of the permutation test (exact when ``2**n`` fits).
    seed : int
        Seed of every random draw (bootstrap and permutation), recorded with the results.
    min_gap : float or None
        Absolute smallest ``|clean - corrupted|`` (score metrics) or ``d(corrupted)`` (distance
        metrics) a prompt needs to be normalised. ``None`` uses ``rel_gap``.
    rel_gap : float
        Without ``min_gap``, the threshold is ``rel_gap * median |gap|`` over the prompts.
    group_by : tuple of str
        Dataset columns (``meta_<name>`` arrays) to split prompts by; statistics are computed
        per combination of values.
    block_mb : float
        Memory budget of one component block (all prompts x a slice of components) in MiB.
    """

    metrics: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    sweeps: tuple[str, ...] = SWEEPS
    test: str = "t"
    alternative: str = "two-sided"
    null_value: float = 0.0
    family: tuple[str, ...] = ()
    correction: str = "bh"
    alpha: float = 0.05
    confidence: float = 0.95
    bootstrap: str = "bca"
    n_bootstrap: int = 2000
    n_permutations: int = 9999
    seed: int = 0
    min_gap: float | None = None
    rel_gap: float = 1e-6
    group_by: tuple[str, ...] = ()
    block_mb: float = 64.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("metrics", tuple(str(Metric.parse(m)) for m in _tuple(self.metrics, "metrics")))
        set_(
            "directions",
            tuple(str(Direction.parse(d)) for d in _tuple(self.directions, "directions")),
        )
        sweeps = _tuple(self.sweeps, "sweeps")
        for s in sweeps:
            _choice(s, SWEEPS, "sweep")
        if not sweeps:
            raise ConfigError(f"sweeps is empty. Expected some of: {', '.join(SWEEPS)}.")
        set_("sweeps", sweeps)
        _choice(self.test, TESTS, "test")
        _choice(self.alternative, ALTERNATIVES, "alternative")
        _choice(self.correction, CORRECTIONS, "correction")
        _choice(self.bootstrap, BOOTSTRAP_METHODS, "bootstrap method")
        set_("group_by", _tuple(self.group_by, "group_by"))
        family = _tuple(self.family, "family")
        for f in family:
            if f not in FAMILY_COLUMNS and f not in self.group_by:
                valid = ", ".join(FAMILY_COLUMNS + self.group_by)
                raise ConfigError(f"Unknown family column {f!r}. Expected one of: {valid}.")
        set_("family", family)
        for name in ("alpha", "confidence"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1:
                raise ConfigError(f"{name} must lie in (0, 1), got {value!r}.")
        for name, low in (("n_bootstrap", 0), ("n_permutations", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
        if self.min_gap is not None and not (
            isinstance(self.min_gap, int | float) and self.min_gap >= 0
        ):
            raise ConfigError(f"min_gap must be a number >= 0 or None, got {self.min_gap!r}.")
        if not isinstance(self.rel_gap, int | float) or self.rel_gap < 0:
            raise ConfigError(f"rel_gap must be a number >= 0, got {self.rel_gap!r}.")
        if not isinstance(self.null_value, int | float):
            raise ConfigError(f"null_value must be a number, got {self.null_value!r}.")
        if not isinstance(self.block_mb, int | float) or self.block_mb <= 0:
            raise ConfigError(f"block_mb must be a positive number of MiB, got {self.block_mb!r}.")

    def to_dict(self) -> dict:
        """Plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> AnalysisConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown analysis option(s) {unknown}. Expected some of: {', '.join(sorted(known))}."
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
