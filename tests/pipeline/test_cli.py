"""The ``patchsweep`` command: plans, validation, stores, exit codes, and a killed-then-resumed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from patchsweep.pipeline.cli import EXIT_DATA, EXIT_USAGE, app, exit_code
from patchsweep.pipeline.datasets import write_dataset
from patchsweep.stores.errors import ConfigError, DatasetError, StoreMismatchError
from tests.pipeline.tiny_capture import make_dataset, make_model_dir

REPO = Path(__file__).resolve().parents[2]
STUDY = """
name = "tiny"
model = "model"
[dataset]
path = "tiny.jsonl"
[patch]
sites = ["resid_pre", "mlp_out"]
positions = ["subject_first", "subject_last", "last"]
metrics = ["logit_diff", "kl"]
[capture]
chunk_prompts = 2
batch_size = 2
[statistics]
n_bootstrap = 50
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    make_model_dir(root / "model")
    write_dataset(make_dataset(12), root / "tiny.jsonl")
    (root / "tiny.toml").write_text(STUDY)
    return root


@pytest.fixture(scope="module")
def finished(workdir) -> Path:
    """An uninterrupted run of the tiny study (the reference for the resume test)."""
    out = workdir / "ref"
    result = runner.invoke(app, ["run", str(workdir / "tiny.toml"), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def _arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}


def test_exit_code_maps_error_kinds():
    assert exit_code(ConfigError("x")) == EXIT_USAGE
    assert exit_code(DatasetError("x")) == EXIT_DATA
    assert exit_code(StoreMismatchError("x")) == EXIT_DATA
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(RuntimeError("bug")) == 1


def test_doctor_prints_the_compute_plan():
    result = runner.invoke(app, ["doctor", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for field in ("device", "dtype", "BLAS", "GFLOP/s", "versions", "mlx-lm"):
        assert field in result.output


def test_datasets_validate_prints_every_problem(workdir):
    rows = [
        {
            "id": "a",
            "clean": "The capital of Italy is",
            "corrupted": "The capital of Spain is",
            "answer": " Rome",
        },
        {"id": "b", "clean": "", "corrupted": "x", "answer": " Rome"},
        {"id": "a", "clean": "Paris is in", "corrupted": "Rome is in", "answer": " France"},
        {"id": "d", "clean": "Berlin is in", "corrupted": "Madrid is in"},
    ]
    path = workdir / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = runner.invoke(app, ["datasets", "validate", str(path), "--no-tokens"])
    assert result.exit_code == EXIT_DATA
    for line in ("line 2", "line 3", "line 4"):  # empty clean text, duplicate id, missing answer
        assert line in result.output
    assert "3 problem(s)" in result.output
    assert "Traceback" not in result.output


def test_datasets_validate_ok_with_tokens(workdir):
    result = runner.invoke(
        app,
        ["datasets", "validate", str(workdir / "tiny.jsonl"), "--model", str(workdir / "model")],
    )
    assert result.exit_code == 0, result.output
    assert "12 pairs (rows and tokens checked)" in result.output


def test_run_dry_run_prints_the_plan_and_writes_nothing(workdir):
    out = workdir / "dry"
    result = runner.invoke(app, ["run", str(workdir / "tiny.toml"), "-o", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    for text in (
        "12 prompts",
        "patched runs",
        "naive",
        "this schedule",
        "capture store ~",
        "results store ~",
        "free disk",
    ):
        assert text in result.output
    assert not out.exists()


def test_bad_study_is_one_message_and_exit_2(workdir):
    path = workdir / "bad.toml"
    path.write_text(STUDY.replace('"mlp_out"]', '"mlp_outt"]'))
    result = runner.invoke(app, ["run", str(path), "-o", str(workdir / "bad")])
    assert result.exit_code == EXIT_USAGE
    assert "patch.sites[1]: Unknown site kind 'mlp_outt'" in result.output
    assert "Traceback" not in result.output


def test_changed_study_on_same_output_is_a_store_mismatch(workdir, finished):
    path = workdir / "changed.toml"
    path.write_text(STUDY.replace('"kl"]', '"prob"]'))
    result = runner.invoke(app, ["patch", str(path), "-o", str(finished), "--quiet"])
    assert result.exit_code == EXIT_DATA
    assert "different patch" in result.output and "Traceback" not in result.output


def test_inspect_shows_identity_and_completeness(finished):
    result = runner.invoke(app, ["inspect", str(finished / "tiny" / "capture.zarr")])
    assert result.exit_code == 0, result.output
    assert "capture store" in result.output and "complete: 6/6" in result.output
    assert "made by study 'tiny'" in result.output


def test_export_h5_writes_a_file_h5py_reads(finished, tmp_path):
    import h5py

    target = tmp_path / "results.h5"
    result = runner.invoke(app, ["export-h5", str(finished / "tiny" / "results.zarr"), str(target)])
    assert result.exit_code == 0, result.output
    with h5py.File(target, "r") as f:
        assert np.array_equal(
            f["denoise_logit_diff"][...],
            _arrays(finished / "tiny" / "results.zarr")["denoise_logit_diff"],
            equal_nan=True,
        )


def test_run_of_a_finished_study_does_nothing(workdir, finished):
    before = {p: p.stat().st_mtime_ns for p in (finished / "tiny").rglob("*") if p.is_file()}
    result = runner.invoke(app, ["run", str(workdir / "tiny.toml"), "-o", str(finished)])
    assert result.exit_code == 0, result.output
    assert "already complete; nothing to do" in result.output
    assert "report:" in result.output
    after = {p: p.stat().st_mtime_ns for p in (finished / "tiny").rglob("*") if p.is_file()}
    assert after == before


def test_run_killed_midway_resumes_to_identical_results(workdir, finished):
    out = workdir / "killed"
    cmd = [
        sys.executable,
        "-c",
        "from patchsweep.pipeline.cli import main; main()",
        "run",
        str(workdir / "tiny.toml"),
        "-o",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    marker = (
        out / "tiny" / "capture.zarr" / "chunk_written" / "c" / "1"
    )  # the second capture chunk is durable
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "tiny" / "analysis" / "report.html").exists()

    result = runner.invoke(app, ["run", str(workdir / "tiny.toml"), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    for store in ("capture.zarr", "results.zarr"):
        ref, got = _arrays(finished / "tiny" / store), _arrays(out / "tiny" / store)
        assert ref.keys() == got.keys()
        for name in ref:
            assert np.array_equal(ref[name], got[name], equal_nan=ref[name].dtype.kind == "f"), name
