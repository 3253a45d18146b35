"""Tests for analysis/config.py."""

import pytest

from patchsweep.analysis import AnalysisConfig
from patchsweep.stores.errors import ConfigError


def test_config_round_trips_through_dict():
    cfg = AnalysisConfig(
        metrics=("kl", "logit_diff"),
        test="permutation",
        family=("site", "task"),
        group_by=("task",),
        min_gap=0.1,
    )
    assert AnalysisConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["family"] == ["site", "task"]


def test_config_accepts_a_single_string_for_tuples():
    assert AnalysisConfig(metrics="kl").metrics == ("kl",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test": "z"}, "Unknown test 'z'. Expected one of: t, wilcoxon, permutation"),
        ({"correction": "fdr"}, "Unknown correction 'fdr'"),
        ({"alternative": "bigger"}, "Unknown alternative"),
        ({"metrics": ("acc",)}, "Unknown metric 'acc'"),
        ({"family": ("task",)}, "Unknown family column 'task'"),
        ({"alpha": 0.0}, r"alpha must lie in \(0, 1\)"),
        ({"n_bootstrap": -1}, "n_bootstrap must be an integer >= 0"),
        ({"min_gap": -1.0}, "min_gap must be a number >= 0"),
        ({"sweeps": ("site", "neuron")}, "Unknown sweep 'neuron'"),
    ],
)
def test_config_rejects_invalid_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AnalysisConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"Unknown analysis option\(s\) \['colour'\]"):
        AnalysisConfig.from_dict({"colour": "red"})
