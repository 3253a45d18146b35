"""The analysis report: what was tested, on what, with which result, in Markdown and HTML.

The Markdown report links the figure files next to it; the HTML report embeds the PNGs
(base64) so it is a single self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from patchsweep.stores.metrics import Metric

from .config import AnalysisConfig

__all__ = ["write_report", "TOP_COLUMNS"]

TOP_COLUMNS = [
    "direction",
    "metric",
    "site",
    "layer",
    "pos",
    "head",
    "patchset",
    "n",
    "n_excluded",
    "mean",
    "ci_low",
    "ci_high",
    "effect_size",
    "p",
    "q",
    "significant",
]

_TESTS = {
    "t": "one-sample Student t-test of the mean recovery",
    "wilcoxon": "Wilcoxon signed-rank test (exact for n <= 50 without ties, else normal approximation with tie correction)",
    "permutation": "sign-flip permutation test of the mean (exact enumeration when 2^n <= n_permutations, else Monte Carlo)",
}
_CORRECTIONS = {
    "bh": "Benjamini-Hochberg (FDR)",
    "by": "Benjamini-Yekutieli (FDR under arbitrary dependence)",
    "holm": "Holm (FWER)",
    "bonferroni": "Bonferroni (FWER)",
}


def _normalisation(metrics) -> list[str]:
    out = []
    for m in metrics:
        if Metric.parse(m).is_distance:
            out.append(f"`{m}` (distance): recovery = 1 - d(patched) / d(corrupted)")
        else:
            out.append(f"`{m}` (score): recovery = (patched - corrupted) / (clean - corrupted)")
    return out


def _methods(
    table: pd.DataFrame, config: AnalysisConfig, stores: dict, exclusions: pd.DataFrame, mode: str
) -> list[str]:
    h0 = {"two-sided": "!=", "greater": ">", "less": "<"}[config.alternative]
    quantity = (
        "paired difference of recovery (store a - store b)" if mode == "compare" else "recovery"
    )
    family = " x ".join(config.family) if config.family else "the whole study (one family)"
    n = table["n"]
    lines = [
        f"- **Quantity**: per-prompt {quantity}, per component (site x layer x position, head, or patch set).",
        "- **Normalisation**: " + "; ".join(_normalisation(sorted(set(table["metric"])))) + ".",
        "- **Small-gap rule**: a prompt is excluded (and counted in `n_excluded`) when |gap| is 0, non-finite or below "
        + (
            f"min_gap = {config.min_gap:g}"
            if config.min_gap is not None
            else f"{config.rel_gap:g} x median |gap| over the prompts"
        )
        + "; positions a prompt does not have count in `n_not_applicable`.",
        f"- **Test**: {_TESTS[config.test]}; H1: effect {h0} {config.null_value:g} ({config.alternative}).",
        f"- **Multiple testing**: {_CORRECTIONS[config.correction]} over {family}; alpha = {config.alpha:g}; "
        f"{int(table['p'].notna().sum())} tests, {int(table['significant'].sum())} significant.",
        f"- **Intervals**: {config.confidence:.0%} bootstrap ({config.bootstrap}, {config.n_bootstrap} resamples, seed {config.seed}) "
        "and Student-t; effect size is Cohen's d against the null value.",
        f"- **Prompts per component**: n from {int(n.min())} to {int(n.max())} (median {float(n.median()):g}).",
    ]
    if config.group_by:
        lines.append(
            f"- **Grouped by**: {', '.join(config.group_by)} (statistics per combination of values)."
        )
    lines.append("- **Stores** (opened read-only):")
    for name, ident in stores.items():
        lines.append(
            f"  - {name}: `{ident.get('url')}`, {json.dumps({k: v for k, v in ident.items() if k != 'url'}, default=str)}"
        )
    if len(exclusions):
        lines.append("- **Exclusions per array**:")
        for _, row in exclusions.iterrows():
            thr = (
                "" if pd.isna(row["gap_threshold"]) else f" (threshold {row['gap_threshold']:.3g})"
            )
            lines.append(
                f"  - `{row['array']}`: {int(row['n_excluded_prompts'])} of {int(row['n_prompts'])} prompts excluded{thr}"
            )
    return lines


def write_report(
    out_dir: Path,
    table: pd.DataFrame,
    config: AnalysisConfig,
    stores: dict,
    exclusions: pd.DataFrame,
    figures: dict[str, list[Path]],
    mode: str = "analyze",
    top: int = 20,
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``; returns both paths."""
    title = "patchsweep paired comparison" if mode == "compare" else "patchsweep analysis"
    methods = _methods(table, config, stores, exclusions, mode)
    ranked = table.assign(_abs=table["mean"].abs()).sort_values(
        ["q", "_abs"], ascending=[True, False], na_position="last"
    )
    cols = [c for c in TOP_COLUMNS + list(config.group_by) if c in ranked.columns]
    top_table = ranked[cols].head(top)
    md = [
        f"# {title}",
        "",
        "## What was tested",
        "",
        *methods,
        "",
        f"## Top {len(top_table)} components",
        "",
    ]
    md.append(
        top_table.to_markdown(index=False, floatfmt=".4g")
        if _has_tabulate()
        else "```\n" + top_table.to_string(index=False) + "\n```"
    )
    md += ["", "## Figures", ""]
    for name, paths in figures.items():
        png = paths[0]
        md += [f"### {name}", "", f"![{name}]({png.relative_to(out_dir).as_posix()})", ""]
    md += ["## Configuration", "", "```json", json.dumps(config.to_dict(), indent=2), "```", ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", "<h2>What was tested</h2>", "<ul>"]
    for line in methods:
        body.append(f"<li>{html.escape(line.lstrip(' -').replace('**', ''))}</li>")
    body += [
        "</ul>",
        f"<h2>Top {len(top_table)} components</h2>",
        top_table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""),
    ]
    body.append("<h2>Figures</h2>")
    for name, paths in figures.items():
        data = base64.b64encode(paths[0].read_bytes()).decode()
        body.append(
            f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' style='max-width:100%' src='data:image/png;base64,{data}'/>"
        )
    body += [
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(json.dumps(config.to_dict(), indent=2))}</pre>",
    ]
    style = "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    html_path = out_dir / "report.html"
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return md_path, html_path


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
