"""``analyze`` and ``compare``: results store(s) in, table + figures + report out.

Both open their stores read-only, run the out-of-core engine (:mod:`.aggregate`) locally or on
a ``dask.distributed`` cluster, and write everything into ``out_dir``: ``table.parquet``,
``table.csv``, ``analysis.json`` (config, store identities, exclusions), ``figures/*.png|svg``,
``report.md`` and ``report.html``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from patchsweep.stores.errors import ConfigError

from . import figures as figs
from .aggregate import Source, compute_table, paired_sources, prompt_groups, sources_for
from .config import AnalysisConfig
from .report import write_report
from .store import ResultsView, open_results

__all__ = ["AnalysisResult", "analyze", "compare"]


@dataclass(frozen=True)
class AnalysisResult:
    """What an analysis produced.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per component (and group): direction, metric, sweep, site, layer, pos, head,
        patchset, [group columns], n, n_excluded, n_not_applicable, mean, median, std, ci_low,
        ci_high (bootstrap), t_ci_low, t_ci_high, effect_size, statistic, p, q, significant.
    out_dir : Path
    table_parquet, table_csv, metadata, report_md, report_html : Path
    figures : dict of str to list of Path
        Figure name -> [PNG, SVG].
    """

    table: pd.DataFrame
    out_dir: Path
    table_parquet: Path
    table_csv: Path
    metadata: Path
    report_md: Path
    report_html: Path
    figures: dict[str, list[Path]] = field(default_factory=dict)


@contextlib.contextmanager
def _client(client):
    """Yield a distributed Client for ``client`` (a Client, an address string, or None)."""
    if client is None or not isinstance(client, str):
        yield client
        return
    from distributed import Client

    with Client(client) as c:
        yield c


def _check_out_dir(out_dir, stores: list[ResultsView]) -> Path:
    out = Path(out_dir).resolve()
    for view in stores:
        if "://" in view.url and not view.url.startswith("file://"):
            continue
        store = Path(view.url.removeprefix("file://")).resolve()
        if out == store or store in out.parents:
            raise ConfigError(
                f"out_dir {str(out)!r} lies inside the results store {str(store)!r}; the analysis never writes into a store. Choose another folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _exclusions(sources: list[Source], n_prompts: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "array": [s.array.name for s in sources],
            "n_prompts": n_prompts,
            "n_excluded_prompts": [s.n_excluded_prompts for s in sources],
            "gap_threshold": [s.gap_threshold for s in sources],
        }
    )


def _figures(
    table: pd.DataFrame,
    top_values: pd.DataFrame,
    view: ResultsView,
    out: Path,
    config: AnalysisConfig,
) -> dict[str, list[Path]]:
    fig_dir = out / "figures"
    pos_labels = dict(zip(view.positions, view.position_labels(), strict=True))
    made: dict[str, list[Path]] = {}
    levels = (
        table[list(config.group_by)].drop_duplicates().head(6)
        if config.group_by
        else pd.DataFrame(index=[0])
    )
    for _, level in levels.iterrows():
        sel = table
        suffix, note = "", ""
        for col in config.group_by:
            sel = sel[sel[col] == level[col]]
            suffix += f"_{col}-{level[col]}"
            note += f" [{col}={level[col]}]"
        for (direction, metric), part in sel.groupby(["direction", "metric"], sort=False):
            name = f"{direction}_{metric}{suffix}"
            what = f"{direction} / {metric}{note}: mean recovery over prompts"
            sites = part[part["sweep"] == "site"]
            if len(sites):
                made[f"positions_{name}"] = figs.heatmap_positions(
                    sites, pos_labels, fig_dir, f"positions_{name}", what
                )
                made[f"layers_{name}"] = figs.layer_bars(sites, fig_dir, f"layers_{name}", what)
            heads = part[part["sweep"] == "head"]
            if len(heads):
                made[f"heads_{name}"] = figs.heatmap_heads(
                    heads, pos_labels, fig_dir, f"heads_{name}", what
                )
    if len(top_values):
        made["top_components"] = figs.top_distributions(
            top_values, fig_dir, "top_components", "Per-prompt recovery of the top components"
        )
    return made


def _write(
    table: pd.DataFrame,
    top_values: pd.DataFrame,
    sources: list[Source],
    views: dict[str, ResultsView],
    out: Path,
    config: AnalysisConfig,
    mode: str,
    figures: bool,
) -> AnalysisResult:
    first = next(iter(views.values()))
    table_parquet, table_csv = out / "table.parquet", out / "table.csv"
    table.to_parquet(table_parquet, index=False)
    table.to_csv(table_csv, index=False)
    stores = {name: {"url": v.url, **v.identity()} for name, v in views.items()}
    exclusions = _exclusions(sources, first.n_prompts)
    metadata = out / "analysis.json"
    metadata.write_text(
        json.dumps(
            {
                "mode": mode,
                "config": config.to_dict(),
                "stores": stores,
                "exclusions": exclusions.to_dict(orient="records"),
            },
            indent=2,
            default=str,
        )
    )
    made = _figures(table, top_values, first, out, config) if figures else {}
    report_md, report_html = write_report(out, table, config, stores, exclusions, made, mode=mode)
    return AnalysisResult(
        table, out, table_parquet, table_csv, metadata, report_md, report_html, made
    )


def analyze(
    results_store_url: str | os.PathLike,
    config: AnalysisConfig | None = None,
    out_dir: str | os.PathLike = "analysis",
    client=None,
    storage_options: dict | None = None,
    figures: bool = True,
) -> AnalysisResult:
    """Per-component recovery statistics of a results store, corrected for multiple testing.

    Parameters
    ----------
    results_store_url : str or path-like
        A results store (local path or fsspec URL); opened read-only, never written.
    config : AnalysisConfig, optional
        What to test and how; the defaults test every metric, direction and sweep with a
        two-sided t-test, BCa bootstrap intervals and Benjamini-Hochberg over the whole study.
    out_dir : str or path-like
        Folder for the outputs (created; must not lie inside the store). The scratch transpose
        of the recovery values is written here too and removed at the end.
    client : dask.distributed.Client or str, optional
        A client, or a scheduler address to connect to; ``None`` runs on local threads.
        Workers must be able to read the store and write ``out_dir``.
    storage_options : dict, optional
        fsspec options for a remote store.
    figures : bool
        Draw the figures (PNG and SVG); the report then lists none.

    Returns
    -------
    AnalysisResult

    Notes
    -----
    Recovery and the small-gap rule: :mod:`patchsweep.analysis.recovery`. Statistics and their
    validation: :mod:`.stats`, :mod:`.resampling`, :mod:`.multitest`. The run is
    deterministic: the same store and config give the same table on threads or a cluster.

    Examples
    --------
    >>> from patchsweep.analysis import AnalysisConfig, analyze
    >>> cfg = AnalysisConfig(metrics=("logit_diff",), test="wilcoxon", family=("site",))
    >>> res = analyze("runs/ioi_results.zarr", cfg, "runs/ioi_analysis")  # doctest: +SKIP
    >>> res.table.query("significant").sort_values("q").head()  # doctest: +SKIP
    """
    config = config or AnalysisConfig()
    view = open_results(results_store_url, storage_options)
    view.require_complete()
    out = _check_out_dir(out_dir, [view])
    sources = sources_for(view, config)
    groups = prompt_groups(view, config)
    with _client(client) as c:
        engine = compute_table(sources, groups, config, out, client=c)
    return _write(
        engine.table, engine.top_values, sources, {"store": view}, out, config, "analyze", figures
    )


def compare(
    store_a: str | os.PathLike,
    store_b: str | os.PathLike,
    config: AnalysisConfig | None = None,
    out_dir: str | os.PathLike = "comparison",
    client=None,
    storage_options: dict | None = None,
    figures: bool = True,
) -> AnalysisResult:
    """Paired comparison of two results stores over the same prompts (e.g. two models).

    The per-prompt quantity is ``recovery_a - recovery_b`` for each component; the same tests,
    intervals and correction as :func:`analyze` are applied to it (``null_value`` is the
    difference under H0). Prompts are matched by id; groups come from store a.

    Raises
    ------
    StoreMismatchError
        The stores hold different prompt sets, or an array with different components.
    """
    config = config or AnalysisConfig()
    view_a = open_results(store_a, storage_options)
    view_b = open_results(store_b, storage_options)
    view_a.require_complete()
    view_b.require_complete()
    out = _check_out_dir(out_dir, [view_a, view_b])
    sources = paired_sources(view_a, view_b, config)
    groups = prompt_groups(view_a, config)
    with _client(client) as c:
        engine = compute_table(sources, groups, config, out, client=c)
    return _write(
        engine.table,
        engine.top_values,
        sources,
        {"a": view_a, "b": view_b},
        out,
        config,
        "compare",
        figures,
    )
