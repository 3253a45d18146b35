"""Figures of an analysis table (seaborn/matplotlib, Agg backend), saved as PNG and SVG.

- ``heatmap_positions``: layer x position mean recovery per site kind, significant cells dotted,
  positions labelled with their token text (or role name).
- ``heatmap_heads``: layer x head mean recovery at the positions where heads matter most.
- ``layer_bars``: mean recovery per layer with confidence intervals, one panel per site kind.
- ``top_distributions``: per-prompt recovery of the top components (violin + points).

Figure sizes grow with the number of layers and positions so that tick labels stay readable
(checked by eye at 40 layers x 30 positions).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = [
    "heatmap_positions",
    "heatmap_heads",
    "layer_bars",
    "top_distributions",
    "component_label",
]

_CMAP = "RdBu_r"


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def component_label(row) -> str:
    """Short text for one table row, e.g. ``resid_pre L3 @4`` or ``head L2.H5 @last``."""
    if row["sweep"] == "set":
        return f"set {row['patchset']}"
    if row["sweep"] == "head":
        return f"L{row['layer']}.H{row['head']} @{row['pos']}"
    return f"{row['site']} L{row['layer']} @{row['pos']}"


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(max(1.0, finite.max())) if finite.size else 1.0


def _mark(ax, sig: pd.DataFrame) -> None:
    """A black dot with a white rim on each significant cell (visible on any colour)."""
    ys, xs = np.nonzero(sig.fillna(False).to_numpy(dtype=bool))
    ax.scatter(xs + 0.5, ys + 0.5, s=28, c="black", edgecolors="white", linewidths=0.8, zorder=3)


def _recovery_panel(ax, sub: pd.DataFrame, rows: tuple, cols: tuple, vmax: float, cbar: bool):
    """One heatmap of mean recovery, ``rows``/``cols`` = (column name, order), significant
    cells dotted."""
    (r, r_order), (c, c_order) = rows, cols

    def grid(values: str) -> pd.DataFrame:
        return sub.pivot_table(
            index=r, columns=c, values=values, aggfunc="first", dropna=False
        ).reindex(index=r_order, columns=c_order)

    sns.heatmap(
        grid("mean"),
        ax=ax,
        cmap=_CMAP,
        vmin=-vmax,
        vmax=vmax,
        center=0,
        linewidths=0.3,
        linecolor="white",
        cbar=cbar,
        cbar_kws={"label": "mean recovery", "shrink": 0.8},
    )
    _mark(ax, grid("significant"))


def heatmap_positions(
    table: pd.DataFrame, pos_labels: dict[str, str], out_dir: Path, stem: str, title: str
) -> list[Path]:
    """Layer (x) by position (y) heatmap of mean recovery, one panel per site kind.

    ``table`` holds the ``site`` sweep rows of one direction and metric; ``pos_labels`` maps a
    position string to its tick label. Significant cells carry a black dot.
    """
    kinds = list(dict.fromkeys(table["site"]))
    layers = sorted(table["layer"].dropna().unique())
    positions = list(dict.fromkeys(table["pos"]))
    vmax = _limit(table["mean"].to_numpy(dtype=float))
    width = max(4.0, 0.32 * len(layers) + 2.2)
    height = max(3.0, 0.3 * len(positions) + 1.6)
    ncols = 1 if len(layers) > 16 else len(kinds)  # wide grids stack vertically
    nrows = -(-len(kinds) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    last = axes.flat[len(kinds) - 1]
    for ax in axes.flat[len(kinds) :]:
        ax.set_visible(False)
    for ax, kind in zip(axes.flat, kinds, strict=False):
        sub = table[table["site"] == kind]
        _recovery_panel(
            ax, sub, ("pos", positions), ("layer", layers), vmax, ax is last or ncols == 1
        )
        ax.set_title(kind, fontsize=11)
        ax.set_xlabel("layer")
        ax.set_ylabel("position")
        ax.set_yticks(
            np.arange(len(positions)) + 0.5,
            [pos_labels.get(p, p) for p in positions],
            rotation=0,
            fontsize=8,
        )
        ax.set_xticks(
            np.arange(len(layers)) + 0.5, [str(x) for x in layers], rotation=0, fontsize=8
        )
    fig.suptitle(f"{title}\n(black dot: significant after correction)", fontsize=11)
    return _save(fig, out_dir, stem)


def heatmap_heads(
    table: pd.DataFrame,
    pos_labels: dict[str, str],
    out_dir: Path,
    stem: str,
    title: str,
    max_positions: int = 4,
) -> list[Path]:
    """Layer (y) by head (x) heatmaps of mean recovery at the positions with the smallest p-values."""
    evidence = table.groupby("pos", sort=False)["p"].min()  # strongest evidence first
    chosen = list(evidence.sort_values(na_position="last").index[:max_positions])
    layers = sorted(table["layer"].dropna().unique())
    heads = sorted(table["head"].dropna().unique())
    vmax = _limit(table["mean"].to_numpy(dtype=float))
    width = max(3.5, 0.32 * len(heads) + 1.8)
    height = max(3.0, 0.26 * len(layers) + 1.6)
    fig, axes = plt.subplots(
        1,
        len(chosen),
        figsize=(width * len(chosen), height),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, pos in zip(axes[0], chosen, strict=True):
        sub = table[table["pos"] == pos]
        _recovery_panel(ax, sub, ("layer", layers), ("head", heads), vmax, ax is axes[0][-1])
        ax.set_title(f"position {pos_labels.get(pos, pos)}", fontsize=11)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if ax is axes[0][0] else "")
        ax.tick_params(axis="both", labelsize=8, rotation=0)
    fig.suptitle(f"{title}\n(black dot: significant after correction)", fontsize=11)
    return _save(fig, out_dir, stem)


def layer_bars(table: pd.DataFrame, out_dir: Path, stem: str, title: str) -> list[Path]:
    """Mean recovery per layer with its confidence interval, one panel per site kind.

    Each panel shows the position with the smallest p-value for that site kind. The
    error bars are the bootstrap interval (the t-interval where no bootstrap was run).
    """
    kinds = list(dict.fromkeys(table["site"]))
    layers = sorted(table["layer"].dropna().unique())
    fig, axes = plt.subplots(
        len(kinds),
        1,
        figsize=(max(5.0, 0.3 * len(layers) + 2), 2.4 * len(kinds)),
        squeeze=False,
        sharex=True,
    )
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        sub = table[table["site"] == kind]
        best = sub.loc[sub["p"].fillna(2.0).idxmin(), "pos"]
        sub = sub[sub["pos"] == best].set_index("layer").reindex(layers)
        low = sub["ci_low"].where(sub["ci_low"].notna(), sub["t_ci_low"]).to_numpy(dtype=float)
        high = sub["ci_high"].where(sub["ci_high"].notna(), sub["t_ci_high"]).to_numpy(dtype=float)
        mean = sub["mean"].to_numpy(dtype=float)
        colors = np.where(
            sub["significant"].fillna(False).to_numpy(dtype=bool), "#c0392b", "#95a5a6"
        )
        x = np.arange(len(layers))
        ax.bar(x, mean, color=colors, width=0.8)
        ax.errorbar(
            x,
            mean,
            yerr=[mean - low, high - mean],
            fmt="none",
            ecolor="black",
            elinewidth=0.8,
            capsize=2,
        )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("recovery")
        ax.set_title(f"{kind} @ position {best} (red: significant)", fontsize=10)
        ax.set_xticks(x, [str(v) for v in layers], fontsize=8)
    axes[-1, 0].set_xlabel("layer")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, stem)


def top_distributions(values: pd.DataFrame, out_dir: Path, stem: str, title: str) -> list[Path]:
    """Per-prompt recovery of the top components: ``values`` is long (component, recovery)."""
    n = values["component"].nunique()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * n + 1.5), 4.2))
    sns.violinplot(
        data=values,
        x="component",
        y="recovery",
        ax=ax,
        inner=None,
        color="#d6eaf8",
        cut=0,
        linewidth=0.8,
    )
    sns.stripplot(
        data=values,
        x="component",
        y="recovery",
        ax=ax,
        size=2.5,
        color="#1f4e79",
        alpha=0.6,
        jitter=0.25,
    )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.axhline(1, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, stem)
