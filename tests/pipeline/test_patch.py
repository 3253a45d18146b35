"""The patch stage end to end: capture store in, results store out.

Expected values come from the naive reference (one full forward per patch, source activations
from an in-memory forward of the model, one prompt at a time), independent of the stores,
bucketing and the engine's shortcuts.
"""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import zarr

from patchsweep.pipeline.adapter import Forward
from patchsweep.pipeline.capture import CaptureSpec, capture
from patchsweep.pipeline.patch import (
    PatchSpec,
    patch,
    patch_items,
    plan_patch,
    plan_work,
    shared_prefix,
)
from patchsweep.pipeline.patch_engine import PatchBatch, PatchEntry
from patchsweep.pipeline.patch_reference import naive_patch
from patchsweep.pipeline.tokenization import tokenize_dataset
from patchsweep.stores.activations import ActivationStore
from patchsweep.stores.errors import ConfigError, StoreMismatchError
from patchsweep.stores.metrics import Metric
from patchsweep.stores.results import ResultsStore
from patchsweep.stores.sites import Direction, PatchSet, Position, SiteKind
from tests.pipeline.tiny_capture import load_tiny, make_dataset, make_model_dir

ROOT = Path(__file__).resolve().parents[2]
ALL = ("resid_pre", "attn_out", "mlp_out", "resid_post", "head")
SET = PatchSet.parse("pair=mlp_out.0@subject_last+resid_pre.2@last")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models") / "llama", "llama", seed=3)


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_tiny(model_dir)


@pytest.fixture(scope="module")
def captured(lm, tmp_path_factory):
    url = tmp_path_factory.mktemp("cap") / "cap.zarr"
    capture(
        lm,
        make_dataset(5),
        CaptureSpec(sites=ALL, chunk_prompts=2, batch_size=3),
        url,
        progress=False,
    )
    return url


def naive_for_prompt(lm, td, i, direction, items, metrics):
    src_run, base_run = direction.source_run, direction.base_run
    reads = {(k, layer): None for k in SiteKind for layer in range(lm.adapter.n_layers)}
    runs = {}
    for run in ("clean", "corrupted"):
        res = lm.adapter.forward(mx.array(td.ids(run, i))[None], Forward(reads=reads))
        mx.eval(res.logits, res.sites)
        runs[run] = ({k: np.array(v) for k, v in res.sites.items()}, np.array(res.logits[:, -1]))
    roles = {run: td.role_positions(run, i) for run in ("clean", "corrupted")}

    def pos(run):
        return lambda p: np.array([roles[run][p.role] if p.is_role else p.index])

    batch = PatchBatch(
        base_tokens=np.array(td.ids(base_run, i))[None],
        source=lambda kind, layer: runs[src_run][0][(kind, layer)],
        base_pos=pos(base_run),
        source_pos=pos(src_run),
        answer=np.array([td.answer_id[i]]),
        wrong=np.array([td.wrong_id[i]]),
        clean_logits=runs["clean"][1],
    )
    return naive_patch(lm.adapter, batch, items, metrics)[:, 0]  # (n_items, M)


@pytest.mark.parametrize("positions", ["all", ("subject_last", "last")])
def test_patch_results_match_naive_reference(lm, captured, tmp_path, positions):
    spec = PatchSpec(
        sites=ALL,
        positions=positions,
        directions=("denoise", "noise"),
        patch_sets=(SET,),
        max_rows=24,
    )
    summary = patch(lm, captured, spec, tmp_path / "res.zarr", progress=False)
    assert summary.chunks_done == 3
    if positions == "all":  # positions before the runs differ: answered by the base run
        assert 0 < summary.noop_runs < summary.patched_runs
    res = ResultsStore.open(tmp_path / "res.zarr")
    td = tokenize_dataset(make_dataset(5), lm.tokenizer)
    pos_names = [str(p) for p in res.zarr_array("pos")[:]]
    layers = list(range(lm.adapter.n_layers))
    kinds = [SiteKind(k) for k in ALL[:4]]
    metrics = spec.metrics
    for d in spec.directions:
        for i in (0, 3, 4):  # three prompt lengths, two chunks
            T = len(td.ids(d.base_run, i))
            items, where = [], []
            for s, kind in enumerate(kinds):
                for layer in layers:
                    for x, name in enumerate(pos_names):
                        p = Position.parse(name)
                        if p.is_role or p.index < T:
                            items.append((PatchEntry(kind, layer, p),))
                            where.append(("", (s, layer, x)))
            for layer in layers:
                for x, name in enumerate(pos_names[:2]):
                    for h in range(lm.adapter.n_heads):
                        items.append((PatchEntry(SiteKind.HEAD, layer, Position.parse(name), h),))
                        where.append(("head_", (layer, x, h)))
            items.append(tuple(PatchEntry(s.kind, s.layer, p, s.head) for s, p in SET.entries))
            where.append(("set_", (0,)))
            want = naive_for_prompt(lm, td, i, d, items, metrics)
            for m_ix, m in enumerate(metrics):
                got = np.array([res.zarr_array(f"{d}_{suffix}{m}")[(i, *w)] for suffix, w in where])
                scale = max(
                    np.nanmax(np.abs(want[:, m_ix])),
                    np.abs(res.zarr_array(f"corrupted_{m}")[i]),
                    1e-6,
                )
                np.testing.assert_allclose(
                    got,
                    want[:, m_ix],
                    rtol=1e-4,
                    atol=1e-4 * scale,
                    equal_nan=True,
                    err_msg=f"{d} {m} prompt {i}",
                )
    if positions == "all":  # positions past a prompt's end are NaN, never a number
        lengths = res.zarr_array("corrupted_length")[:]
        vals = res.zarr_array("denoise_logit_diff")[:]
        for i, n in enumerate(lengths):
            assert np.isnan(vals[i, :, :, n:]).all() and not np.isnan(vals[i, :, :, :n]).any()


def test_patch_baselines_and_known_answers(lm, captured, tmp_path):
    all_pos = PatchSet("everything", tuple(("resid_pre.0", str(p)) for p in range(4)))
    spec = PatchSpec(sites=("resid_pre",), layers=(0,), patch_sets=(all_pos,))
    patch(lm, captured, spec, tmp_path / "r.zarr", progress=False)
    res = ResultsStore.open(tmp_path / "r.zarr")
    np.testing.assert_allclose(res.zarr_array("clean_kl")[:], 0, atol=1e-5)
    corrupted_kl = res.zarr_array("corrupted_kl")[:]
    assert (corrupted_kl > 1e-3).all()
    lengths = res.zarr_array("corrupted_length")[:]
    for m in ("logit_diff", "logprob", "kl"):
        restored = res.zarr_array(f"denoise_set_{m}")[:, 0]
        clean = res.zarr_array(f"clean_{m}")[:]
        full = lengths == 4  # every position of these prompts restored -> exactly the clean run
        assert full.any() and np.isnan(restored[~full & (lengths < 4)]).all()
        np.testing.assert_allclose(
            restored[full], clean[full], atol=1e-4 * max(np.abs(corrupted_kl).max(), 1)
        )


def test_patch_refuses_all_positions_for_unequal_lengths(lm, tmp_path):
    url = tmp_path / "c.zarr"
    capture(lm, make_dataset(6), CaptureSpec(sites=("resid_pre",)), url, progress=False)
    with pytest.raises(ConfigError, match=r"different clean and corrupted token counts.*p005"):
        patch(lm, url, PatchSpec(), tmp_path / "r.zarr", progress=False)
    summary = patch(
        lm, url, PatchSpec(positions=("subject_last", "last")), tmp_path / "r2.zarr", progress=False
    )
    assert summary.prompts == 6


def test_patch_noop_positions_store_exactly_the_base_baseline(lm, captured, tmp_path):
    """Positions before a prompt's runs differ: the stored value is exactly the stored base-run
    baseline (recovery exactly 0), in both directions; later positions are computed."""
    spec = PatchSpec(sites=("resid_pre", "mlp_out"), directions=("denoise", "noise"))
    url = tmp_path / "r.zarr"
    patch(lm, captured, spec, url, progress=False)
    g = zarr.open_group(str(url), mode="r")
    cap = ActivationStore.open(captured)
    tokens = {r: cap.zarr_array(f"{r}_tokens")[:] for r in ("clean", "corrupted")}
    lengths = {r: cap.zarr_array(f"{r}_length")[:] for r in ("clean", "corrupted")}
    same = shared_prefix(
        tokens["clean"], tokens["corrupted"], lengths["clean"], lengths["corrupted"]
    )
    assert (same > 0).any()
    for d, base in (("denoise", "corrupted"), ("noise", "clean")):
        for m in spec.metrics:
            values, baseline = g[f"{d}_{m}"][:], g[f"{base}_{m}"][:]  # (prompt, site, layer, pos)
            for i in range(len(same)):
                inside = values[i, :, :, : same[i]]
                np.testing.assert_array_equal(inside, np.broadcast_to(baseline[i], inside.shape))
                after = values[i, :, :, same[i] : lengths[base][i]]
                assert not np.all(after == baseline[i])  # computed, not copied


def test_patch_resumed_summary_counts_only_recomputed_prompts(lm, captured, tmp_path):
    spec = PatchSpec(sites=("resid_pre",), positions=("last",))
    url = tmp_path / "r.zarr"
    full = patch(lm, captured, spec, url, progress=False)
    assert (full.computed_prompts, full.chunks_skipped) == (5, 0)
    assert "patched 5 prompts" in full.line()
    zarr.open_array(str(url / "chunk_written"), mode="r+")[1] = 0  # chunk 1 (prompts 2-3) undone
    again = patch(lm, captured, spec, url, progress=False)
    assert (again.computed_prompts, again.chunks_done, again.chunks_skipped) == (2, 1, 2)
    assert again.patched_runs == 2 * full.patched_runs // 5
    assert "patched 2 of 5 prompts" in again.line() and "(2 chunks already done)" in again.line()


def test_patch_refuses_what_the_capture_lacks(lm, tmp_path):
    url = tmp_path / "c.zarr"
    capture(
        lm, make_dataset(3), CaptureSpec(sites=("resid_pre",), layers=(0, 1)), url, progress=False
    )
    with pytest.raises(ConfigError, match=r"sites \['mlp_out'\].*layers \[2\]"):
        patch(
            lm, url, PatchSpec(sites=("mlp_out",), layers=(2,)), tmp_path / "r.zarr", progress=False
        )


def test_patch_refuses_to_resume_with_another_spec(lm, captured, tmp_path):
    patch(
        lm,
        captured,
        PatchSpec(layers=(0,), metrics=("logit_diff",)),
        tmp_path / "r.zarr",
        progress=False,
    )
    with pytest.raises(StoreMismatchError, match="spec"):
        patch(
            lm,
            captured,
            PatchSpec(layers=(0, 1), metrics=("logit_diff",)),
            tmp_path / "r.zarr",
            progress=False,
        )


def test_patch_refuses_another_model(captured, tmp_path):
    other = load_tiny(make_model_dir(tmp_path / "other", "llama", seed=99))
    with pytest.raises(StoreMismatchError, match="another model"):
        patch(other, captured, PatchSpec(), tmp_path / "r.zarr", progress=False)


def test_plan_patch_counts_less_work_than_naive(captured):
    plan = plan_patch(ActivationStore.open(captured), PatchSpec(sites=("resid_pre",)), n_layers=3)
    lengths = ActivationStore.open(captured).zarr_array("corrupted_length")[:]
    assert (
        plan.patched_runs == int(lengths.sum()) * 3
    )  # one run per (prompt, layer, existing position)
    assert plan.naive_token_layers == int((lengths**2).sum()) * 3 * 3
    assert plan.engine_token_layers < 0.75 * plan.naive_token_layers


def test_plan_work_excludes_patches_inside_the_shared_prefix():
    """One prompt of 6 tokens whose runs differ from position 4 on; resid_pre of 2 layers."""
    spec = PatchSpec(sites=("resid_pre",))
    items, _ = patch_items(spec, [0, 1], [str(i) for i in range(6)], 0)
    lengths = {"clean": np.array([6]), "corrupted": np.array([6])}
    role_pos = {"clean": np.zeros((1, 0)), "corrupted": np.zeros((1, 0))}
    full = plan_work(spec, items, 2, lengths, role_pos, ())
    skip = plan_work(spec, items, 2, lengths, role_pos, (), shared=np.array([4]))
    assert (skip.patched_runs, skip.naive_token_layers) == (
        full.patched_runs,
        full.naive_token_layers,
    )
    base = 6 * 2  # the base run
    # computed: positions 4 and 5 at start layers 0 (2 blocks) and 1 (1 block)
    assert skip.engine_token_layers == base + sum(
        (6 - p) * (2 - layer) for p in (4, 5) for layer in (0, 1)
    )
    assert full.engine_token_layers == base + sum(
        (6 - p) * (2 - layer) for p in range(6) for layer in (0, 1)
    )
    assert shared_prefix(
        np.array([[1, 2, 3, -1], [1, 2, 3, 4]]),
        np.array([[1, 2, 9, -1], [1, 2, 3, 4]]),
        np.array([3, 4]),
        np.array([3, 4]),
        np.array([-1, 1]),
    ).tolist() == [2, 1]


@pytest.mark.parametrize(
    "value,match",
    [
        ({"sites": ("resid_mid",)}, "Unknown site kind"),
        ({"positions": ("7",)}, "role names"),
        ({"directions": ("sideways",)}, "Unknown direction"),
        ({"metrics": ("auc",)}, "Unknown metric"),
        ({"max_rows": 0}, "max_rows"),
    ],
)
def test_patch_spec_rejects_bad_values(value, match):
    with pytest.raises(ConfigError, match=match):
        PatchSpec(**value)


def test_patch_spec_round_trips():
    spec = PatchSpec(
        sites=ALL,
        layers=(2, 0),
        positions=("last",),
        directions=("noise",),
        patch_sets=(SET,),
        metrics=("kl", "prob"),
    )
    assert PatchSpec.from_dict(spec.to_dict()) == spec
    assert (
        spec.layers == (0, 2)
        and spec.directions == (Direction.NOISE,)
        and spec.metrics == (Metric.KL, Metric.PROB)
    )


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import patchsweep.pipeline
    from patchsweep.pipeline.patch import PatchSpec, patch
    from tests.pipeline.tiny_capture import load_tiny
    from pathlib import Path
    lm = load_tiny(Path({model!r}))
    patch(lm, {cap!r}, PatchSpec(sites=("resid_pre", "attn_out", "mlp_out", "resid_post", "head"), positions=("subject_first", "subject_last", "last"), directions=("denoise", "noise"), max_rows=8), {out!r}, progress=False)
    """
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "zarr.json" not in p.name
    }


def test_patch_resumes_after_kill_bit_identical(lm, model_dir, tmp_path):
    cap = tmp_path / "cap.zarr"
    capture(
        lm,
        make_dataset(12),
        CaptureSpec(sites=ALL, chunk_prompts=1, batch_size=4),
        cap,
        progress=False,
    )
    whole = tmp_path / "whole.zarr"
    t0 = time.perf_counter()
    patch(
        lm,
        cap,
        PatchSpec(
            sites=ALL,
            positions=("subject_first", "subject_last", "last"),
            directions=("denoise", "noise"),
            max_rows=8,
        ),
        whole,
        progress=False,
    )
    print(f"uninterrupted patch run: {time.perf_counter() - t0:.1f} s")
    out = tmp_path / "killed.zarr"
    script = tmp_path / "run.py"
    script.write_text(
        SCRIPT.format(root=str(ROOT), model=str(model_dir), cap=str(cap), out=str(out))
    )
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(2.0, 3.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the patch run finished before any kill; make it longer"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not list(out.rglob("*.partial"))
    a, b = _files(whole), _files(out)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ after resume: {different[:5]}"


def test_patch_regenerates_the_captures_noise_corruption(lm, tmp_path):
    """Known answers for ROME-style noise (subjects here are single tokens):

    - restoring ``resid_pre.0`` at ``last`` (never noised) leaves the noisy run as captured, so
      the result equals the stored corrupted baseline only if the noise was regenerated exactly;
    - restoring ``resid_pre.0`` at the subject gives back the clean run;
    - noising: writing the noisy subject input into the clean run gives the noisy run.
    """
    from patchsweep.pipeline.corruption import NoiseCorruption

    url = tmp_path / "noise.zarr"
    capture(
        lm,
        make_dataset(5),
        CaptureSpec(sites=("resid_pre",), layers=(0, 1)),
        url,
        corruption=NoiseCorruption(span="subject", scale=3.0),
        progress=False,
    )
    spec = PatchSpec(
        sites=("resid_pre",),
        layers=(0,),
        positions=("subject_last", "last"),
        directions=("denoise", "noise"),
        metrics=("logit_diff", "logprob", "kl"),
    )
    patch(lm, url, spec, tmp_path / "r.zarr", progress=False)
    res = ResultsStore.open(tmp_path / "r.zarr")
    pos = [str(p) for p in res.zarr_array("pos")[:]]
    subj, last = pos.index("subject_last"), pos.index("last")
    for m in ("logit_diff", "logprob", "kl"):
        clean, noisy = res.zarr_array(f"clean_{m}")[:], res.zarr_array(f"corrupted_{m}")[:]
        scale = max(np.abs(noisy).max(), np.abs(clean).max(), 1.0)
        assert np.abs(noisy - clean).max() > 1e-3 * scale  # the noise does change the run
        denoise = res.zarr_array(f"denoise_{m}")[:, 0, 0]  # (prompt, pos)
        noise = res.zarr_array(f"noise_{m}")[:, 0, 0]
        np.testing.assert_allclose(denoise[:, last], noisy, atol=1e-4 * scale, err_msg=m)
        np.testing.assert_allclose(denoise[:, subj], clean, atol=1e-4 * scale, err_msg=m)
        np.testing.assert_allclose(noise[:, subj], noisy, atol=1e-4 * scale, err_msg=m)
        np.testing.assert_allclose(noise[:, last], clean, atol=1e-4 * scale, err_msg=m)
