"""Tests for analysis/store.py: the reader against stores written by the real
``patchsweep.stores.results.ResultsStore`` (the contract's other side) and by the
independent plain-zarr writer in synthetic.py. Expected values are the arrays written."""

import numpy as np
import pytest

from patchsweep.analysis import AnalysisConfig, analyze
from patchsweep.analysis.store import open_results
from patchsweep.stores.errors import StoreError, StoreIncompleteError, StoreNotFoundError

results = pytest.importorskip("patchsweep.stores.results")


def _real_store(path, n=24, complete=True):
    layout = results.ResultsLayout(
        n_prompts=n,
        layers=(0, 1, 2),
        positions=("0", "1", "subject_last"),
        metrics=("logit_diff",),
        directions=("denoise",),
        sites=("resid_pre", "mlp_out"),
        n_heads=2,
        patchsets=("pair",),
        meta_columns=("task",),
        chunk_prompts=8,
    )
    store = results.ResultsStore.create_or_resume(
        path,
        layout,
        {"capture_store": "cap.zarr", "capture_digest": "sha256:abc"},
        {"kind": "test"},
        prompt_ids=[f"q{i}" for i in range(n)],
        meta={"task": ["ioi" if i % 2 else "facts" for i in range(n)]},
        durable=False,
    )
    rng = np.random.default_rng(0)
    chunks = range(store.n_chunks if complete else store.n_chunks - 1)
    for c in chunks:
        rows = store.chunk_slice(c)
        k = rows.stop - rows.start
        clean, corrupted = 3 + rng.normal(size=k), -1 + rng.normal(size=k)
        effect = np.zeros((2, 3, 3))
        effect[0, 2, 2] = 1.0  # resid_pre, layer 2, subject_last recovers fully
        site = (
            corrupted[:, None, None, None]
            + (effect + 0.2 * rng.normal(size=(k, 2, 3, 3)))
            * (clean - corrupted)[:, None, None, None]
        )
        store.write_chunk(
            c,
            {
                "denoise_logit_diff": site.astype(np.float32),
                "denoise_head_logit_diff": rng.normal(size=(k, 3, 3, 2)).astype(np.float32),
                "denoise_set_logit_diff": rng.normal(size=(k, 1)).astype(np.float32),
                "clean_logit_diff": clean.astype(np.float32),
                "corrupted_logit_diff": corrupted.astype(np.float32),
                "clean_length": np.full(k, 5, np.int32),
                "corrupted_length": np.full(k, 5, np.int32),
                "pos_label": np.tile(np.array(["The", " cat", " sat"]), (k, 1)),
            },
        )
    if complete:
        store.finalize()
    else:
        store.close()
    return path


def test_reader_reads_a_real_results_store(tmp_path):
    view = open_results(_real_store(tmp_path / "r.zarr"))
    assert view.n_prompts == 24 and list(view.positions) == ["0", "1", "subject_last"]
    assert {m.name for m in view.arrays} == {
        "denoise_logit_diff",
        "denoise_head_logit_diff",
        "denoise_set_logit_diff",
    }
    assert (
        view.position_labels() == ["0 The", "1  cat", "subject_last"]
        or view.position_labels()[2] == "subject_last"
    )
    assert view.identity()["source"]["capture_digest"] == "sha256:abc"


def test_analyze_real_store_finds_planted_role_effect(tmp_path):
    path = _real_store(tmp_path / "r.zarr")
    res = analyze(
        path, AnalysisConfig(n_bootstrap=200, sweeps=("site",)), tmp_path / "out", figures=False
    )
    top = res.table.sort_values("p").iloc[0]
    assert (top["site"], top["layer"], top["pos"]) == ("resid_pre", 2, "subject_last")
    assert top["significant"] and abs(top["mean"] - 1.0) < 0.2


def test_open_results_refuses_incomplete_store(tmp_path):
    path = _real_store(tmp_path / "r.zarr", complete=False)
    with pytest.raises(StoreIncompleteError, match="incomplete: prompt chunks \\[2\\]"):
        analyze(path, AnalysisConfig(), tmp_path / "out")


def test_open_results_errors(tmp_path):
    with pytest.raises(StoreNotFoundError, match="No Zarr store"):
        open_results(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["patchsweep"] = {
        "kind": "capture"
    }
    with pytest.raises(
        StoreError, match="is not a results store: its patchsweep kind is 'capture'"
    ):
        open_results(tmp_path / "other.zarr")
