"""End-to-end tests of analyze/compare on synthetic stores (tests/analysis/synthetic.py).

Expected values come from an independent naive computation: recovery from the raw zarr
arrays with numpy, then scipy.stats per component; and from the planted effects."""

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import stats as st

from patchsweep.analysis import AnalysisConfig, analyze, compare
from patchsweep.stores.errors import ConfigError, StoreMismatchError

from .synthetic import write_results_store

FAST = dict(n_bootstrap=200)


def _naive_recovery(path, name, metric):
    g = zarr.open_group(str(path), mode="r")
    patched = np.asarray(g[name][...], dtype=np.float64)
    clean = np.asarray(g[f"clean_{metric}"][...], dtype=np.float64)
    corrupted = np.asarray(g[f"corrupted_{metric}"][...], dtype=np.float64)
    shape = (-1,) + (1,) * (patched.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero gaps are flagged in `bad`
        if metric == "kl":
            gap = corrupted
            rec = 1 - patched / corrupted.reshape(shape)
        else:
            gap = clean - corrupted
            rec = (patched - corrupted.reshape(shape)) / gap.reshape(shape)
    rec = np.where(np.abs(rec) <= 1e-4, 0.0, rec)  # the documented numerical-zero rule
    bad = np.abs(gap) < 1e-6 * np.median(np.abs(gap))
    return patched.reshape(len(clean), -1), rec.reshape(len(clean), -1), bad | (gap == 0)


def test_analyze_matches_naive_numpy_and_scipy(store, tmp_path):
    path, _ = store
    res = analyze(
        path, AnalysisConfig(metrics=("logit_diff", "kl"), **FAST), tmp_path / "out", figures=False
    )
    for metric in ("logit_diff", "kl"):
        patched, rec, bad = _naive_recovery(path, f"denoise_{metric}", metric)
        rows = res.table[(res.table.metric == metric) & (res.table.sweep == "site")]
        assert len(rows) == rec.shape[1]
        applicable = np.isfinite(patched)
        np.testing.assert_array_equal(rows["n_not_applicable"], (~applicable).sum(0))
        np.testing.assert_array_equal(rows["n_excluded"], (applicable & bad[:, None]).sum(0))
        vals = np.where(applicable & ~bad[:, None], rec, np.nan)
        ref = st.ttest_1samp(vals, 0.0, axis=0, nan_policy="omit")
        np.testing.assert_allclose(rows["mean"], np.nanmean(vals, 0), rtol=1e-5)  # store is float32
        np.testing.assert_allclose(rows["p"], ref.pvalue, rtol=1e-4)
    assert bad.sum() == 1  # prompt 2 has clean == corrupted


@pytest.mark.parametrize("test", ["t", "wilcoxon", "permutation"])
def test_component_exactly_at_the_null_has_p_one(test):
    """Patches that cannot change the run (every recovery exactly 0) are not evidence of an
    effect: p = 1 and statistic 0, where scipy's t and Wilcoxon tests return NaN."""
    from patchsweep.analysis.blocks import FIELDS, block_statistics

    rng = np.random.default_rng(0)
    block = np.zeros((40, 3), dtype=np.float32)
    block[:, 1] = rng.normal(1.0, 0.5, 40)  # a real effect
    block[:5, 2] = np.nan  # not applicable to 5 prompts, 0 elsewhere
    out = block_statistics(block, np.zeros(40, int), 1, AnalysisConfig(test=test, **FAST))[0]
    p, stat = out[FIELDS.index("p")], out[FIELDS.index("statistic")]
    assert p[0] == 1.0 and p[2] == 1.0 and stat[0] == 0.0 and stat[2] == 0.0
    assert p[1] < 1e-3  # (Monte Carlo permutation p-values stop near 1 / n_permutations)
    assert out[FIELDS.index("n")].tolist() == [40, 40, 35]


def test_analyze_finds_planted_effects_and_writes_outputs(store, tmp_path):
    path, spec = store
    res = analyze(
        path, AnalysisConfig(metrics=("logit_diff",), family=("sweep",), **FAST), tmp_path / "out"
    )
    sig = res.table[res.table.significant]
    planted = {("resid_pre", 3, "4"), ("resid_pre", 2, "4"), ("mlp_out", 1, "1")}
    found = {(r.site, r.layer, r.pos) for r in sig[sig.sweep == "site"].itertuples()}
    assert planted <= found
    assert (sig.sweep == "set").any()
    for p in (res.table_parquet, res.table_csv, res.metadata, res.report_md, res.report_html):
        assert p.exists() and p.stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_parquet(res.table_parquet), res.table, check_dtype=False)
    assert {
        "positions_denoise_logit_diff",
        "heads_denoise_logit_diff",
        "layers_denoise_logit_diff",
        "top_components",
    } <= set(res.figures)
    for png, svg in res.figures.values():
        assert png.stat().st_size > 1000 and svg.exists()
    text = res.report_md.read_text()
    for needle in (
        "Benjamini-Hochberg",
        "alpha = 0.05",
        "(patched - corrupted) / (clean - corrupted)",
        "1 of 40 prompts excluded",
        "sha256:synthetic-1",
    ):
        assert needle in text


def test_analyze_group_by_dataset_column(store, tmp_path):
    path, _ = store
    cfg = AnalysisConfig(
        metrics=("logit_diff",), sweeps=("set",), group_by=("task",), family=("task",), **FAST
    )
    res = analyze(path, cfg, tmp_path / "out", figures=False)
    assert sorted(res.table["task"]) == ["facts", "ioi"]
    assert res.table["n"].sum() + res.table["n_excluded"].sum() == 40  # prompts split by task


def test_analyze_never_writes_into_the_store(store, tmp_path):
    path, _ = store
    before = sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*"))
    analyze(path, AnalysisConfig(sweeps=("set",), **FAST), tmp_path / "out", figures=False)
    assert sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*")) == before
    with pytest.raises(ConfigError, match="lies inside the results store"):
        analyze(path, AnalysisConfig(sweeps=("set",)), path / "analysis")


@pytest.mark.parametrize("test", ["wilcoxon", "permutation"])
def test_analyze_other_tests_run(store, tmp_path, test):
    path, _ = store
    res = analyze(
        path,
        AnalysisConfig(
            metrics=("kl",), sweeps=("set", "site"), test=test, n_permutations=999, **FAST
        ),
        tmp_path / "out",
        figures=False,
    )
    assert res.table["p"].between(0, 1).all()


def test_compare_paired_difference(tmp_path):
    a = write_results_store(tmp_path / "a.zarr", n_prompts=30, seed=1, n_heads=0, patchsets=())
    write_results_store(tmp_path / "b.zarr", a)
    res = compare(
        tmp_path / "a.zarr",
        tmp_path / "b.zarr",
        AnalysisConfig(**FAST),
        tmp_path / "out",
        figures=False,
    )
    assert (res.table["mean"].abs() < 1e-6).all()  # identical stores: zero difference
    assert not res.table["significant"].any()


def test_compare_refuses_mismatched_prompts(tmp_path):
    write_results_store(tmp_path / "a.zarr", n_prompts=30, n_heads=0, patchsets=())
    write_results_store(tmp_path / "b.zarr", n_prompts=31, n_heads=0, patchsets=())
    with pytest.raises(StoreMismatchError, match="same prompts in both stores: 30 vs 31"):
        compare(tmp_path / "a.zarr", tmp_path / "b.zarr", AnalysisConfig(), tmp_path / "out")


def test_analyze_on_local_cluster_matches_local_run(store, tmp_path):
    distributed = pytest.importorskip("distributed")
    path, _ = store
    cfg = AnalysisConfig(
        metrics=("logit_diff",), test="permutation", n_permutations=500, block_mb=0.01, **FAST
    )
    local = analyze(path, cfg, tmp_path / "local", figures=False).table
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            remote = analyze(path, cfg, tmp_path / "remote", client=client, figures=False).table
    pd.testing.assert_frame_equal(local, remote)
