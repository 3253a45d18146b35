import numpy as np
import pytest
import xarray as xr

from patchsweep.stores.errors import ConfigError, StoreMismatchError
from patchsweep.stores.results import ResultsLayout, ResultsStore

from .conftest import chunk_arrays, make_identity, new_store, prompt_ids, write_all


def make_results_layout(**overrides) -> ResultsLayout:
    kw = dict(
        n_prompts=10,
        layers=(0, 2),
        positions=("0", "subject_last", "last"),
        metrics=("logit_diff", "kl"),
        directions=("denoise", "noise"),
        sites=("resid_pre", "mlp_out"),
        n_heads=2,
        patchsets=("window",),
        meta_columns=("task",),
        chunk_prompts=4,
    )
    kw.update(overrides)
    return ResultsLayout(**kw)


def new_results(url, source, **overrides) -> ResultsStore:
    layout = make_results_layout(**overrides)
    return ResultsStore.create_or_resume(
        url, layout, source, {"batch": 8}, prompt_ids=prompt_ids(10), meta={"task": ["a"] * 10}
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metrics": ("logit_diff", "auc")}, "Unknown metric 'auc'"),
        ({"directions": ("sideways",)}, "Unknown direction 'sideways'"),
        ({"positions": ("-1",)}, "Cannot parse position '-1'"),
        ({"sites": ("head",)}, "head sweeps are set by n_heads"),
        ({"positions": ("last", "last")}, "lists a value twice"),
    ],
)
def test_results_layout_invalid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_results_layout(**overrides)


def test_results_layout_round_trip():
    layout = make_results_layout(chunk_prompts=None)
    assert ResultsLayout.from_dict(layout.to_dict()) == layout and layout.chunk_prompts == 10


@pytest.fixture(scope="module")
def finished_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("results")
    capture = new_store(tmp / "cap.zarr")
    results = new_results(tmp / "res.zarr", capture)
    write_all(results, seed=2)
    results.finalize()
    return tmp / "res.zarr", capture.identity.digest


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("denoise_logit_diff", ("prompt", "site", "layer", "pos")),
        ("noise_kl", ("prompt", "site", "layer", "pos")),
        ("denoise_head_kl", ("prompt", "layer", "pos", "head")),
        ("noise_set_logit_diff", ("prompt", "patchset")),
        ("clean_kl", ("prompt",)),
        ("corrupted_length", ("prompt",)),
        ("pos_label", ("prompt", "pos")),
        ("meta_task", ("prompt",)),
    ],
)
def test_results_schema_and_values(finished_results, name, dims):
    path, digest = finished_results
    ds = xr.open_zarr(path)
    assert ds[name].dims == dims
    assert list(ds["pos"].values) == ["0", "subject_last", "last"] and list(ds["site"].values) == [
        "resid_pre",
        "mlp_out",
    ]
    back = ResultsStore.open(path)
    expected = chunk_arrays(back, 2, seed=2).get(name, np.array(["a", "a"]))  # prompts 8..9
    np.testing.assert_array_equal(back.dask(name)[8:].compute(), expected)
    assert back.source["capture_digest"] == digest


def test_results_refuse_other_capture(tmp_path, capture):
    results = new_results(tmp_path / "res.zarr", capture)
    other = new_store(tmp_path / "other.zarr")
    other_ident = make_identity(spec={"layers": [0]})
    other.attrs["identity"] = other_ident.to_dict()  # an in-memory stand-in for another capture
    with pytest.raises(StoreMismatchError, match="results of different captures are never mixed"):
        results.check_source(other)
    with pytest.raises(StoreMismatchError, match="never mixed"):
        new_results(tmp_path / "res.zarr", other)
    results.check_source(capture)


def test_results_refuse_other_spec_or_layout(tmp_path, capture):
    new_results(tmp_path / "res.zarr", capture)
    with pytest.raises(StoreMismatchError, match=r"spec\.batch: store has 8, requested 16"):
        ResultsStore.create_or_resume(
            tmp_path / "res.zarr",
            make_results_layout(),
            capture,
            {"batch": 16},
            prompt_ids=prompt_ids(10),
            meta={"task": ["a"] * 10},
        )
    with pytest.raises(StoreMismatchError, match=r"layout\.metrics: store has"):
        new_results(tmp_path / "res.zarr", capture, metrics=("kl",))


def test_results_resume_writes_only_missing(tmp_path, capture):
    results = new_results(tmp_path / "res.zarr", capture)
    results.write_chunk(1, chunk_arrays(results, 1))
    assert new_results(tmp_path / "res.zarr", capture).missing_chunks() == [0, 2]
