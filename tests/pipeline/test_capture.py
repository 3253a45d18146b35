"""Tests of the capture stage. Expected values come from independent, unbatched adapter forward
passes (one prompt at a time, full logits) and from an uninterrupted capture of the same inputs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from patchsweep.pipeline.adapter import Forward, SiteWrite
from patchsweep.pipeline.capture import CaptureSpec, capture
from patchsweep.pipeline.corruption import NoiseCorruption
from patchsweep.pipeline.datasets import read_dataset, tokenize_dataset
from patchsweep.pipeline.loading import DEMO_MODEL
from patchsweep.stores.activations import ActivationStore
from patchsweep.stores.errors import ConfigError, Float16OverflowError, StoreMismatchError
from patchsweep.stores.sites import SiteKind
from tests.pipeline.tiny_capture import load_tiny, make_dataset, make_model_dir

REPO = Path(__file__).resolve().parents[2]
ALL_SITES = tuple(k.value for k in SiteKind)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_model_dir(root / arch, arch) for arch in ("llama", "gpt2")}


@pytest.fixture(scope="module")
def models(model_dirs):
    return {arch: load_tiny(path) for arch, path in model_dirs.items()}


def _arrays(url) -> dict[str, np.ndarray]:
    store = ActivationStore.open(url)
    return {name: store.zarr_array(name)[...] for name in store.array_names}


# -- CaptureSpec ---------------------------------------------------------------------------


def test_capture_spec_round_trips_through_dict():
    spec = CaptureSpec(
        sites=("mlp_out", "resid_pre"),
        layers=(2, 0),
        positions=("last",),
        storage_dtype="bfloat16",
        chunk_prompts=3,
    )
    assert CaptureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.sites == (SiteKind.RESID_PRE, SiteKind.MLP_OUT) and spec.layers == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sites": ("resid_mid",)}, "Unknown site kind 'resid_mid'"),
        ({"sites": ()}, "distinct site kinds"),
        ({"layers": (0, 0)}, "distinct layer indices"),
        ({"layers": (-1,)}, "distinct layer indices"),
        ({"positions": ("1bad",)}, "role names"),
        ({"storage_dtype": "int8"}, "Unknown storage dtype 'int8'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"chunk_prompts": 2.5}, "chunk_prompts must be an integer >= 1 or None"),
        ({"logits": "yes"}, "logits must be True or False"),
    ],
)
def test_capture_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CaptureSpec(**kwargs)


def test_capture_rejects_layers_and_roles_the_model_or_dataset_lacks(models, tmp_path):
    with pytest.raises(ConfigError, match=r"layers \[7\] do not exist; the model has layers 0..2"):
        capture(
            models["llama"],
            make_dataset(2),
            CaptureSpec(layers=(7,)),
            tmp_path / "a.zarr",
            progress=False,
        )
    with pytest.raises(
        ConfigError,
        match=r"roles \['object_last'\].*its roles are \['last', 'subject_first', 'subject_last'\]",
    ):
        capture(
            models["llama"],
            make_dataset(2),
            CaptureSpec(positions=("object_last",)),
            tmp_path / "b.zarr",
            progress=False,
        )


# -- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_batched_equals_one_prompt_at_a_time(models, tmp_path, arch):
    ds = make_dataset(9)  # mixed token lengths in both runs, repeated lengths inside a chunk
    batched = capture(
        models[arch],
        ds,
        CaptureSpec(sites=ALL_SITES, chunk_prompts=5, batch_size=4),
        tmp_path / "b.zarr",
        progress=False,
    )
    single = capture(
        models[arch],
        ds,
        CaptureSpec(sites=ALL_SITES, chunk_prompts=1, batch_size=1),
        tmp_path / "s.zarr",
        progress=False,
    )
    assert batched.computed_prompts == single.computed_prompts == 9
    a, b = _arrays(tmp_path / "b.zarr"), _arrays(tmp_path / "s.zarr")
    assert a.keys() == b.keys()
    for name in a.keys() - {"chunk_written"}:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(
                a[name], b[name], rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=name
            )
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_stores_what_a_direct_forward_computes(models, tmp_path, arch):
    lm, ds = models[arch], make_dataset(5)
    capture(
        lm,
        ds,
        CaptureSpec(sites=ALL_SITES, layers=(0, 2), batch_size=3),
        tmp_path / "c.zarr",
        progress=False,
    )
    store = ActivationStore.open(tmp_path / "c.zarr")
    td = tokenize_dataset(ds, lm.tokenizer)
    for run in ("clean", "corrupted"):
        for i in range(len(ds)):
            ids = td.ids(run, i)
            n = len(ids)
            reads = {(k, layer): None for k in SiteKind for layer in (0, 2)}
            result = lm.adapter.forward(mx.array(ids)[None], Forward(reads=reads))
            np.testing.assert_array_equal(store.read_prompt(i, f"{run}_tokens")[:n], ids)
            assert store.read_prompt(i, f"{run}_length") == n
            assert (store.read_prompt(i, f"{run}_tokens")[n:] == -1).all()
            np.testing.assert_allclose(
                store.read_prompt(i, f"{run}_logits"),
                np.asarray(result.logits[0, -1]),
                rtol=1e-5,
                atol=1e-5,
            )
            for kind in SiteKind:
                got = store.read_prompt(i, f"{run}_{kind.value}")  # (layer, pos, ...)
                want = np.stack([np.asarray(result.sites[(kind, layer)][0]) for layer in (0, 2)])
                np.testing.assert_allclose(
                    got[:, :n], want, rtol=1e-5, atol=1e-5, err_msg=f"{run}_{kind.value}"
                )
                assert np.isnan(got[:, n:]).all()
    np.testing.assert_array_equal(store.zarr_array("answer_id")[:], td.answer_id)
    assert list(store.zarr_array("meta_task")[:]) == [p.meta_dict["task"] for p in ds]


def test_capture_of_roles_stores_the_role_positions(models, tmp_path):
    lm, ds = models["llama"], make_dataset(4)
    capture(
        lm,
        ds,
        CaptureSpec(sites=("resid_post",), positions=("subject_last", "last")),
        tmp_path / "r.zarr",
        progress=False,
    )
    capture(lm, ds, CaptureSpec(sites=("resid_post",)), tmp_path / "a.zarr", progress=False)
    roles, full = (
        ActivationStore.open(tmp_path / "r.zarr"),
        ActivationStore.open(tmp_path / "a.zarr"),
    )
    assert roles.zarr_array("clean_resid_post").metadata.dimension_names == (
        "prompt",
        "layer",
        "role",
        "d_model",
    )
    for run in ("clean", "corrupted"):
        pos = roles.zarr_array(f"{run}_role_pos")[:]  # (prompt, role)
        x = full.zarr_array(f"{run}_resid_post")[:]
        want = np.take_along_axis(x, pos[:, None, :, None], axis=2)
        np.testing.assert_array_equal(roles.zarr_array(f"{run}_resid_post")[:], want)


def test_capture_skips_blocks_above_the_deepest_site_without_logits(
    model_dirs, tmp_path, monkeypatch
):
    lm = load_tiny(model_dirs["llama"])
    top = lm.adapter.block(2)
    calls = []
    original = type(top).__call__

    def counting(self, *args, **kwargs):
        calls.append(self is top)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(top), "__call__", counting)
    capture(
        lm,
        make_dataset(3),
        CaptureSpec(layers=(0, 1), logits=False),
        tmp_path / "n.zarr",
        progress=False,
    )
    assert calls and not any(calls)  # blocks 0 and 1 ran, block 2 never
    capture(lm, make_dataset(3), CaptureSpec(layers=(0, 1)), tmp_path / "l.zarr", progress=False)
    assert any(calls)  # with logits the top block runs


def test_capture_noise_is_reproducible_from_the_recorded_seeds(models, tmp_path):
    lm, ds = models["llama"], make_dataset(6)
    summary = capture(
        lm,
        ds,
        CaptureSpec(sites=("resid_post",), layers=(1,)),
        tmp_path / "n.zarr",
        corruption=NoiseCorruption(seed=7),
        progress=False,
    )
    store = ActivationStore.open(tmp_path / "n.zarr")
    recorded = store.identity.spec["corruption"]
    assert (
        recorded["std"] == summary.noise_std
        and recorded["std_measured"] is True
        and recorded["seed"] == 7
    )
    td = tokenize_dataset(ds, lm.tokenizer)
    seeds = store.zarr_array("noise_seed")[:]
    np.testing.assert_array_equal(store.zarr_array("corrupted_tokens")[:], td.clean_tokens)
    sigma = recorded["scale"] * recorded["std"]
    for i in range(len(ds)):
        ids, where = td.ids("clean", i), td.span_positions("clean", i, "subject")
        noise = sigma * np.random.default_rng(int(seeds[i])).standard_normal(
            (len(where), lm.adapter.d_model)
        )
        write = SiteWrite(
            SiteKind.RESID_PRE,
            0,
            mx.zeros(len(where), mx.int32),
            mx.array(where),
            mx.array(noise.astype(np.float32)),
            add=True,
        )
        key = (SiteKind.RESID_POST, 1)
        result = lm.adapter.forward(mx.array(ids)[None], Forward(reads={key: None}, writes=[write]))
        got = store.read_prompt(i, "corrupted_resid_post")[0, : len(ids)]
        np.testing.assert_allclose(got, np.asarray(result.sites[key][0]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            store.read_prompt(i, "corrupted_logits"),
            np.asarray(result.logits[0, -1]),
            rtol=1e-5,
            atol=1e-5,
        )
    assert not np.allclose(
        store.zarr_array("clean_logits")[:], store.zarr_array("corrupted_logits")[:]
    )


# -- the store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "part"),
    [
        ("spec", r"(?s)different spec.*spec\.layers: store has \[0, 1\], requested \[0\]"),
        ("dataset", r"different dataset"),
        ("model", r"different model"),
        ("corruption", r"spec\.corruption\.kind: store has 'prompts', requested 'noise'"),
    ],
)
def test_capture_refuses_a_store_made_from_other_inputs(models, model_dirs, tmp_path, change, part):
    lm, ds, spec = models["llama"], make_dataset(4), CaptureSpec(layers=(0, 1))
    capture(lm, ds, spec, tmp_path / "s.zarr", progress=False)
    corruption = None
    if change == "spec":
        spec = CaptureSpec(layers=(0,))
    elif change == "dataset":
        ds = make_dataset(5)
    elif change == "model":
        lm = load_tiny(make_model_dir(tmp_path / "other", "llama", seed=1))
    else:
        corruption = NoiseCorruption(std=1.0)
    with pytest.raises(StoreMismatchError, match=part):
        capture(lm, ds, spec, tmp_path / "s.zarr", corruption=corruption, progress=False)


def test_capture_detects_float16_overflow(model_dirs, tmp_path):
    lm = load_tiny(
        make_model_dir(tmp_path / "big", "llama", scale=1e6)
    )  # embeddings up to ~5e5 > 65504
    spec = CaptureSpec(layers=(0,), logits=False, storage_dtype="float16")
    with pytest.raises(
        Float16OverflowError,
        match=r"(?s)clean_resid_pre.*beyond float16.*Use storage dtype 'bfloat16' or 'float32'",
    ):
        capture(lm, make_dataset(3), spec, tmp_path / "f16.zarr", progress=False)
    bf16 = capture(
        lm,
        make_dataset(3),
        CaptureSpec(layers=(0,), logits=False, storage_dtype="bfloat16"),
        tmp_path / "bf16.zarr",
        progress=False,
    )
    assert bf16.computed_prompts == 3


def test_capture_store_opens_with_xarray(models, tmp_path):
    xr = pytest.importorskip("xarray")
    capture(
        models["llama"],
        make_dataset(4),
        CaptureSpec(sites=("attn_out", "head"), layers=(1, 2)),
        tmp_path / "x.zarr",
        progress=False,
    )
    ds = xr.open_zarr(tmp_path / "x.zarr")
    assert ds["clean_attn_out"].dims == ("prompt", "layer", "pos", "d_model")
    assert ds["corrupted_head"].dims == ("prompt", "layer", "pos", "head", "d_head")
    assert list(ds["layer"].values) == [1, 2] and list(ds["prompt"].values) == [
        f"p{i:03d}" for i in range(4)
    ]
    store = ActivationStore.open(tmp_path / "x.zarr")
    np.testing.assert_array_equal(
        ds["clean_attn_out"].sel(prompt="p002", layer=2).values,
        store.read_prompt(2, "clean_attn_out")[1],
    )


def test_capture_store_round_trips_through_hdf5(models, tmp_path):
    hdf5 = pytest.importorskip("patchsweep.stores.hdf5")
    url = tmp_path / "h.zarr"
    capture(
        models["gpt2"],
        make_dataset(5),
        CaptureSpec(sites=("resid_pre", "head"), storage_dtype="bfloat16", chunk_prompts=2),
        url,
        corruption=NoiseCorruption(std=0.5),
        progress=False,
    )
    hdf5.export_hdf5(url, tmp_path / "h.h5")
    hdf5.import_hdf5(tmp_path / "h.h5", tmp_path / "back.zarr")
    a, b = _arrays(url), _arrays(tmp_path / "back.zarr")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def test_capture_writes_to_an_fsspec_memory_store(models):
    url = f"memory://capture-{os.getpid()}.zarr"
    summary = capture(
        models["llama"], make_dataset(3), CaptureSpec(layers=(0,)), url, progress=False
    )
    assert ActivationStore.open(url).is_complete and summary.bytes_stored > 0
    assert "captured 3/3 prompts" in str(summary)


# -- resume after kill -9 ------------------------------------------------------------------

_CAPTURE_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import patchsweep.pipeline  # first: preloads the BLAS that the reference capture used
from tests.pipeline.test_capture import kill_test_capture
from tests.pipeline.tiny_capture import load_tiny
lm = load_tiny({model!r})
print("loaded", flush=True)
print(kill_test_capture(lm, sys.argv[1]), flush=True)
"""


def kill_test_capture(lm, url):
    """The capture that the resume test kills: many small chunks, noise, bfloat16, head sites."""
    spec = CaptureSpec(
        sites=("resid_pre", "mlp_out", "head"),
        chunk_prompts=2,
        batch_size=2,
        storage_dtype="bfloat16",
    )
    return capture(lm, make_dataset(24), spec, url, corruption=NoiseCorruption(), progress=False)


def _store_files(root: Path) -> dict[str, bytes]:
    # zarr.json files hold the creation time; their arrays and attributes are compared separately
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def test_capture_resumes_after_kill_bit_identical(model_dirs, tmp_path):
    ref, got = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    t0 = time.perf_counter()
    kill_test_capture(load_tiny(model_dirs["llama"]), ref)  # uninterrupted, in this process
    work = time.perf_counter() - t0
    script = tmp_path / "run_capture.py"
    script.write_text(_CAPTURE_SCRIPT.format(repo=str(REPO), model=str(model_dirs["llama"])))

    def run():
        return subprocess.Popen(
            [sys.executable, str(script), str(got)], stdout=subprocess.PIPE, text=True
        )

    rng = random.Random(0)
    missing = []
    for _ in range(3):
        proc = run()
        proc.stdout.readline()  # "loaded": the capture starts now
        time.sleep(rng.uniform(0.0, work / 3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (got / "zarr.json").exists():
            missing.append(len(ActivationStore.open(got, allow_incomplete=True).missing_chunks()))
    assert missing and 0 < missing[-1] < 12, (
        f"kills did not land mid-capture: missing chunks after each kill {missing}"
    )
    final = run()
    assert final.wait(timeout=120) == 0
    assert "captured" in final.stdout.read()
    assert _store_files(ref) == _store_files(got)
    a, b = _arrays(ref), _arrays(got)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    meta_a, meta_b = ActivationStore.open(ref).attrs, ActivationStore.open(got).attrs
    assert {k: v for k, v in meta_a.items() if k != "created"} == {
        k: v for k, v in meta_b.items() if k != "created"
    }


# -- shipped datasets on the demo model ------------------------------------------------------


@pytest.mark.skipif(
    not (DEMO_MODEL / "config.json").is_file(),
    reason="demo model not trained yet (datasets/train_demo_model.py)",
)
@pytest.mark.parametrize("name", ["ioi", "facts", "induction"])
def test_capture_shipped_dataset_on_demo_model(tmp_path, name):
    from patchsweep.pipeline.loading import load_model

    lm = load_model(DEMO_MODEL)
    ds = read_dataset(REPO / "datasets" / f"{name}.jsonl")
    spec = CaptureSpec(
        sites=("resid_pre", "attn_out", "mlp_out"),
        positions="all",
        storage_dtype="float16",
        batch_size=32,
    )
    summary = capture(lm, ds, spec, tmp_path / f"{name}.zarr", progress=False)
    store = ActivationStore.open(tmp_path / f"{name}.zarr")
    assert summary.computed_prompts == len(ds) == store.n_prompts and store.is_complete
    logits = store.zarr_array("clean_logits")[:]
    answer = store.zarr_array("answer_id")[:]
    assert np.isfinite(logits).all()
    assert (logits.argmax(axis=1) == answer).mean() > 0.5  # the demo model learned the task
