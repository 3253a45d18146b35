import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from patchsweep.stores.activations import ActivationStore
from patchsweep.stores.errors import StoreError
from patchsweep.stores.hdf5 import export_hdf5, import_hdf5

from .conftest import new_store, write_all


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def finished(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"h5-{request.param}")
    store = new_store(tmp / "cap.zarr", storage_dtype=request.param, codec="zstd")
    write_all(store, seed=7)
    store.finalize()
    return tmp / "cap.zarr"


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_hdf5_round_trip_is_exact(finished, tmp_path, compression):
    export_hdf5(finished, tmp_path / "cap.h5", compression=compression)
    import_hdf5(tmp_path / "cap.h5", tmp_path / "back.zarr")
    a, b = zarr.open_group(finished, mode="r"), zarr.open_group(tmp_path / "back.zarr", mode="r")
    assert dict(a.attrs) == dict(b.attrs)
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        x, y = a[name], b[name]
        assert (x.dtype, x.shape, x.chunks, x.shards, dict(x.attrs)) == (
            y.dtype,
            y.shape,
            y.chunks,
            y.shards,
            dict(y.attrs),
        )
        assert x.metadata.dimension_names == y.metadata.dimension_names
        if x.dtype.kind in "OTU":
            assert list(x[:].ravel()) == list(y[:].ravel())
        else:
            assert x[...].tobytes() == y[...].tobytes()  # bit for bit, NaN payloads included
    assert (
        ActivationStore.open(tmp_path / "back.zarr").identity
        == ActivationStore.open(finished).identity
    )


def test_hdf5_readable_with_plain_h5py(finished, tmp_path):
    export_hdf5(finished, tmp_path / "cap.h5")
    store = ActivationStore.open(finished)
    with h5py.File(tmp_path / "cap.h5", "r") as f:
        meta = json.loads(f.attrs["patchsweep"])
        ds = f["clean_resid_pre"]
        assert meta["kind"] == "capture" and list(ds.attrs["dims"]) == [
            "prompt",
            "layer",
            "pos",
            "d_model",
        ]
        assert ds.compression == "gzip" and ds.chunks is not None
        assert [d.label for d in ds.dims] == ["prompt", "layer", "pos", "d_model"]
        assert ds.dims[1][0][:].tolist() == [
            0,
            2,
        ]  # the layer coordinate is attached as a dimension scale
        assert ds.attrs["patchsweep_dtype"] == meta["storage_dtype"]
        np.testing.assert_array_equal(ds[3], store.zarr_array("clean_resid_pre")[3])
        assert f["prompt"].asstr()[0] == "prompt-000"


def test_import_refuses_existing_store(finished, tmp_path):
    export_hdf5(finished, tmp_path / "cap.h5")
    with pytest.raises(StoreError, match="already exists"):
        import_hdf5(tmp_path / "cap.h5", finished)


def test_export_refuses_non_patchsweep_group(tmp_path):
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreError, match="without 'patchsweep' attributes"):
        export_hdf5(tmp_path / "plain.zarr", tmp_path / "x.h5")
    assert not Path(tmp_path / "x.h5").exists()
