"""Study files: up-front validation with every problem at its key, round trips, derived capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchsweep.pipeline.datasets import write_dataset
from patchsweep.pipeline.loading import DEMO_MODEL
from patchsweep.pipeline.study import Study, StudyError, load_study
from patchsweep.stores.errors import ConfigError
from patchsweep.stores.sites import SiteKind
from tests.pipeline.tiny_capture import make_dataset, make_model_dir

STUDIES = Path(__file__).resolve().parents[2] / "datasets" / "studies"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    make_model_dir(root / "model")
    write_dataset(make_dataset(6), root / "tiny.jsonl")
    return root


def _write(root: Path, text: str, name: str = "s.toml") -> Path:
    path = root / name
    path.write_text(text)
    return path


GOOD = """
model = "model"
[dataset]
path = "tiny.jsonl"
[patch]
sites = ["resid_pre", "mlp_out"]
layers = [0, 2]
positions = ["subject_last", "last"]
metrics = ["logit_diff"]
patch_sets = ["pair=mlp_out.1@subject_last+mlp_out.2@subject_last"]
[capture]
chunk_prompts = 2
[statistics]
test = "wilcoxon"
correction = "by"
family = ["site"]
"""


def test_load_study_reports_every_problem_with_its_key(workdir):
    bad = """
nme = "x"
model = "model"
[dataset]
path = "tiny.jsonl"
limt = 3
[corruption]
kind = "noise"
scale = -1
span = "subjectt"
[patch]
sites = ["resid_pre", "resid_mid", "attn"]
layers = [0, 7]
positions = ["subject_last", "nope"]
metrics = ["logit_diff", "kll"]
[capture]
storage_dtype = "float8"
[statistics]
alpha = 2
correction = "fdr"
[compute]
device = "tpu"
"""
    with pytest.raises(StudyError) as info:
        load_study(_write(workdir, bad))
    keys = [p.key for p in info.value.problems]
    # every key below is wrong in the file above, and each is reported exactly once
    assert sorted(keys) == sorted(
        [
            "nme",
            "dataset.limt",
            "corruption.scale",
            "corruption.span",
            "patch.sites[1]",
            "patch.sites[2]",
            "patch.layers[1]",
            "patch.positions[1]",
            "patch.metrics[1]",
            "capture.storage_dtype",
            "statistics.alpha",
            "statistics.correction",
            "compute.device",
        ]
    )
    text = str(info.value)
    assert "Did you mean 'name'?" in text
    assert "'resid_mid'" in text and "resid_pre, attn_out" in text  # bad value and what is accepted
    assert "layer 7 does not exist; the model has layers 0..2" in text
    assert isinstance(info.value, ConfigError)


def test_study_round_trips_through_dict_and_json(workdir):
    study = load_study(_write(workdir, GOOD), output=str(workdir / "out"))
    data = json.loads(json.dumps(study.to_dict()))
    again = Study.from_dict(data)
    assert again == study
    assert again.digest == study.digest


def test_load_study_derives_the_capture_from_the_patch_spec(workdir):
    study = load_study(_write(workdir, GOOD))
    assert study.capture.sites == (SiteKind.RESID_PRE, SiteKind.MLP_OUT)
    assert study.capture.layers == (0, 1, 2)  # patch layers plus the patch set's layer 1
    assert study.capture.positions == ("subject_last", "last")
    assert study.capture.chunk_prompts == 2
    assert study.analysis.test == "wilcoxon" and study.analysis.correction == "by"


def test_load_study_refuses_a_capture_that_lacks_patched_sites(workdir):
    text = GOOD.replace("chunk_prompts = 2", 'chunk_prompts = 2\nsites = ["resid_pre"]')
    with pytest.raises(StudyError, match=r"capture: capture.sites lacks \['mlp_out'\]"):
        load_study(_write(workdir, text))


def test_load_study_not_toml_names_the_position(workdir):
    with pytest.raises(StudyError, match=r"<toml>: not valid TOML.*line 1"):
        load_study(_write(workdir, "model = = 3"))


def test_load_study_missing_dataset_file(workdir):
    with pytest.raises(StudyError, match=r"dataset.path: no file .*missing.jsonl"):
        load_study(_write(workdir, GOOD.replace("tiny.jsonl", "missing.jsonl")))


def test_load_study_several_datasets_need_dataset_in_store_paths(workdir):
    text = GOOD.replace(
        '[dataset]\npath = "tiny.jsonl"',
        '[[datasets]]\npath = "tiny.jsonl"\n[[datasets]]\npath = "tiny.jsonl"\nname = "again"',
    )
    study = load_study(_write(workdir, text), output="o")
    assert [study.paths(d).capture for d in study.datasets] == [
        "o/tiny/capture.zarr",
        "o/again/capture.zarr",
    ]
    with pytest.raises(StudyError, match=r"stores.capture: 'one.zarr' must contain \{dataset\}"):
        load_study(_write(workdir, text + '[stores]\ncapture = "one.zarr"\n'))


@pytest.mark.skipif(
    not DEMO_MODEL.is_dir(), reason="the demo model has not been trained in this checkout"
)
@pytest.mark.parametrize("name", ["demo", "ioi", "facts", "induction"])
def test_shipped_study_files_are_valid(name):
    study = load_study(STUDIES / f"{name}.toml")
    assert study.datasets and Path(study.model) == DEMO_MODEL


def test_load_study_refuses_absolute_positions_on_unaligned_pairs(workdir):
    # make_dataset's pair p005 has 7 clean and 6 corrupted tokens
    text = GOOD.replace('positions = ["subject_last", "last"]', 'positions = "all"')
    with pytest.raises(
        StudyError,
        match=r"(?s)patch.positions: .*line 6 \(id 'p005'\): clean has 7 tokens, corrupted has 6",
    ):
        load_study(_write(workdir, text))
