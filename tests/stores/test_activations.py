import numpy as np
import pytest
import xarray as xr
import zarr

from patchsweep.stores.activations import ActivationStore, CaptureLayout
from patchsweep.stores.errors import ConfigError, StoreMismatchError
from patchsweep.stores.zarr_base import bfloat16_to_float32, float32_to_bfloat16

from .conftest import chunk_arrays, make_identity, make_layout, new_store, prompt_ids, write_all


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": ()}, "layers must be distinct"),
        ({"layers": (1, 1)}, "layers must be distinct"),
        ({"sites": ("resid_mid",)}, "Unknown site kind 'resid_mid'"),
        ({"n_heads": 0}, "Capturing 'head' needs n_heads >= 1"),
        ({"positions": "some"}, "positions must be 'all' or 'roles', got 'some'"),
        ({"positions": "roles", "roles": ()}, "needs at least one role"),
        ({"runs": ("clean", "noisy")}, "runs must be distinct values"),
        ({"storage_dtype": "int8"}, "Unknown storage dtype 'int8'"),
        ({"codec": "lz5"}, "Unknown codec 'lz5'"),
        ({"chunk_prompts": 0}, "chunk_prompts must be an integer >= 1"),
    ],
)
def test_capture_layout_invalid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_layout(**overrides)


def test_capture_layout_round_trip_and_auto_chunks():
    layout = make_layout(chunk_prompts=None, n_prompts=1_000_000)
    assert CaptureLayout.from_dict(layout.to_dict()) == layout
    biggest = max(layout.prompt_bytes.values())  # head array: 2 layers * 6 pos * 2 * 4 * 4 bytes
    assert biggest == 2 * 6 * 8 * 4 and layout.chunk_prompts == (64 << 20) // biggest


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("clean_resid_pre", ("prompt", "layer", "pos", "d_model")),
        ("corrupted_mlp_out", ("prompt", "layer", "pos", "d_model")),
        ("clean_head", ("prompt", "layer", "pos", "head", "d_head")),
        ("clean_tokens", ("prompt", "pos")),
        ("corrupted_role_pos", ("prompt", "role")),
        ("clean_logits", ("prompt", "vocab")),
        ("noise_seed", ("prompt",)),
        ("meta_task", ("prompt",)),
        ("chunk_written", ("chunk",)),
    ],
)
def test_schema_plain_xarray_open_zarr(capture, name, dims):
    ds = xr.open_zarr(capture.url)  # what a user without patchsweep does
    assert ds[name].dims == dims
    assert list(ds["layer"].values) == [0, 2] and list(ds["role"].values) == [
        "subject_last",
        "last",
    ]
    assert list(ds["prompt"].values[:2]) == ["prompt-000", "prompt-001"]
    assert zarr.open_group(capture.url, mode="r")[name].metadata.dimension_names == dims


def test_root_attributes_follow_contract(capture):
    meta = zarr.open_group(capture.url, mode="r").attrs["patchsweep"]
    assert {
        "format_version",
        "kind",
        "identity",
        "storage_dtype",
        "package_version",
        "created",
        "chunk_prompts",
    } <= set(meta)
    assert meta["kind"] == "capture" and set(meta["identity"]) == {
        "model",
        "tokenizer",
        "dataset",
        "spec",
    }
    assert capture.identity == make_identity() and capture.identity.digest == make_identity().digest


def test_roles_mode_replaces_pos_dim(tmp_path):
    store = new_store(tmp_path / "r.zarr", positions="roles")
    write_all(store)
    assert store.xarray()["clean_resid_pre"].dims == ("prompt", "layer", "role", "d_model")
    assert store.zarr_array("clean_resid_pre").shape == (10, 2, 2, 8)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_read_paths_agree_with_written_values(tmp_path, dtype):
    store = new_store(tmp_path / "s.zarr", storage_dtype=dtype)
    write_all(store, seed=5)
    store.finalize()
    back = ActivationStore.open(tmp_path / "s.zarr")
    written = chunk_arrays(back, 1, seed=5)["clean_resid_pre"]  # prompts 4..7
    if dtype == "bfloat16":
        expected = bfloat16_to_float32(float32_to_bfloat16(written))
    else:
        expected = written.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(back.read_prompt(5, "clean_resid_pre"), expected[1])
    np.testing.assert_array_equal(
        np.asarray(back.dask("clean_resid_pre")[4:8]).astype(np.float32), expected
    )
    np.testing.assert_array_equal(
        back.xarray()["clean_resid_pre"][4:8].values.astype(np.float32), expected
    )
    assert back.read_prompt(5, "clean_resid_pre").dtype == np.float32
    np.testing.assert_array_equal(
        back.read_prompt(5, "clean_tokens"), chunk_arrays(back, 1, seed=5)["clean_tokens"][1]
    )


def test_read_prompt_bad_index(capture):
    with pytest.raises(IndexError, match=r"Prompt index 10 out of range 0\.\.9"):
        capture.read_prompt(10, "clean_head")
    with pytest.raises(KeyError, match="No array 'clean_attn_out'"):
        capture.read_prompt(0, "clean_attn_out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"spec": {"layers": [0, 1, 2], "sites": ["resid_pre"]}},
            r"different spec than requested:\n  spec\.layers: store has \[0, 2\], requested \[0, 1, 2\]",
        ),
        (
            {"model": {"config": {"n_layers": 4}, "weights_sha256": "ab" * 32}},
            r"model\.config\.n_layers: store has 3, requested 4",
        ),
        ({"dataset": {"name": "toy2", "sha256": "ef" * 32}}, r"different dataset than"),
    ],
)
def test_create_or_resume_refuses_other_identity(capture, layout, change, message):
    with pytest.raises(StoreMismatchError, match=message):
        ActivationStore.create_or_resume(
            capture.url,
            layout,
            make_identity(**change),
            prompt_ids=prompt_ids(10),
            meta={"task": ["a"] * 10},
        )


def test_create_or_resume_refuses_other_layout_or_prompts(capture, identity):
    with pytest.raises(StoreMismatchError, match=r"layout\.n_pos: store has 6, requested 7"):
        ActivationStore.create_or_resume(
            capture.url,
            make_layout(n_pos=7),
            identity,
            prompt_ids=prompt_ids(10),
            meta={"task": ["a"] * 10},
        )
    ids = prompt_ids(10)
    ids[3] = "other"
    with pytest.raises(
        StoreMismatchError, match=r"first at prompt 3: store has 'prompt-003', requested 'other'"
    ):
        ActivationStore.create_or_resume(
            capture.url, make_layout(), identity, prompt_ids=ids, meta={"task": ["a"] * 10}
        )


def test_resume_same_inputs_keeps_written_chunks(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    store.write_chunk(2, chunk_arrays(store, 2))
    resumed = new_store(tmp_path / "s.zarr")
    assert resumed.missing_chunks() == [0, 1]
    assert resumed.chunk_slice(2) == slice(8, 10)
