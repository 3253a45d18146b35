"""Tests for patchsweep.pipeline.corruption (ROME-style noise).

Expected seeds and noise are recomputed independently from the documented recipe:
sha256(salt + seed as 8 little-endian bytes + id) -> first 8 bytes little-endian ->
numpy ``default_rng(...).standard_normal``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from patchsweep.pipeline.corruption import NoiseCorruption, embedding_matrix_std, measured_std
from patchsweep.stores.errors import ConfigError


def independent_seed(seed: int, prompt_id: str) -> int:
    digest = hashlib.sha256(
        b"patchsweep-noise\0" + seed.to_bytes(8, "little") + prompt_id.encode()
    ).digest()
    return int.from_bytes(digest[:8], "little")


@pytest.mark.parametrize(
    "spec",
    [
        NoiseCorruption(),
        NoiseCorruption(span="s2", scale=1.5, std=0.25, seed=7),
        NoiseCorruption(seed=2**64 - 1),
    ],
)
def test_noise_corruption_dict_round_trip(spec):
    data = spec.to_dict()
    assert data["kind"] == "noise"
    assert NoiseCorruption.from_dict(data) == spec


def test_noise_corruption_defaults_follow_rome():
    spec = NoiseCorruption()
    assert (spec.span, spec.scale, spec.std, spec.seed) == ("subject", 3.0, None, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"span": "the subject"}, "span must be a span label"),
        ({"span": ""}, "span must be a span label"),
        ({"scale": 0}, "scale must be a finite number > 0, got 0"),
        ({"scale": -1.0}, "scale must be a finite number > 0"),
        ({"scale": math.nan}, "scale must be a finite number > 0, got nan"),
        ({"scale": True}, "scale must be a finite number > 0, got True"),
        ({"std": 0.0}, "std must be a finite number > 0, or None"),
        ({"std": math.inf}, "std must be a finite number > 0, or None to measure it, got inf"),
        ({"std": "1"}, "std must be a finite number > 0"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\), got -1"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"seed": 1.5}, r"seed must be an integer"),
    ],
)
def test_noise_corruption_invalid_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NoiseCorruption(**kwargs)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"kind": "prompt", "span": "subject"},
            "Expected a corruption of kind 'noise', got 'prompt'",
        ),
        ({"span": "subject", "sigma": 1.0}, r"Unknown NoiseCorruption field\(s\) \['sigma'\]"),
    ],
)
def test_noise_corruption_from_dict_invalid_raises(data, match):
    with pytest.raises(ConfigError, match=match):
        NoiseCorruption.from_dict(data)


@pytest.mark.parametrize(
    ("seed", "prompt_id"), [(0, "facts-0001"), (7, "ioi-0000"), (2**64 - 1, "ünïcode")]
)
def test_prompt_seed_matches_documented_recipe(seed, prompt_id):
    value = NoiseCorruption(seed=seed).prompt_seed(prompt_id)
    assert value == independent_seed(seed, prompt_id)
    assert 0 <= value < 2**64
    assert np.uint64(value) == value  # fits the store's uint64 noise_seed array


def test_prompt_seed_differs_by_id_and_seed():
    seeds = {NoiseCorruption(seed=s).prompt_seed(i) for s in (0, 1) for i in ("a", "b", "ab")}
    assert len(seeds) == 6


def test_prompt_seed_non_text_id_raises():
    with pytest.raises(ConfigError, match="prompt_id must be text, got int 3"):
        NoiseCorruption().prompt_seed(3)


@pytest.mark.parametrize(
    ("spec_std", "arg_std", "sigma"), [(0.5, None, 1.5), (0.5, 9.0, 1.5), (None, 2.0, 6.0)]
)
def test_noise_for_matches_independent_draw(spec_std, arg_std, sigma):
    spec = NoiseCorruption(std=spec_std, seed=3)
    noise = spec.noise_for("p1", [4, 5, 6], d_model=16, std=arg_std)
    expected = sigma * np.random.default_rng(independent_seed(3, "p1")).standard_normal((3, 16))
    assert noise.dtype == np.float32 and noise.shape == (3, 16)
    np.testing.assert_allclose(noise, expected.astype(np.float32), rtol=0, atol=0)


def test_noise_for_deterministic_and_prompt_specific():
    spec = NoiseCorruption(std=1.0)
    a = spec.noise_for("x", np.arange(2), 8)
    assert np.array_equal(a, spec.noise_for("x", np.arange(2), 8))
    assert not np.array_equal(a, spec.noise_for("y", np.arange(2), 8))
    assert not np.array_equal(a, NoiseCorruption(std=1.0, seed=1).noise_for("x", np.arange(2), 8))


def test_noise_for_std_matches_scale_times_std():
    noise = NoiseCorruption(scale=3.0, std=0.2).noise_for("big", np.arange(64), 512)
    # 32768 standard-normal draws: the sample std is within 2% of 0.6 with overwhelming probability
    assert abs(noise.std() - 0.6) < 0.012
    assert abs(noise.mean()) < 0.02


def test_noise_for_empty_span_gives_empty_noise():
    assert NoiseCorruption(std=1.0).noise_for("x", [], 8).shape == (0, 8)


@pytest.mark.parametrize("measured", [None, 0.0, -1.0, math.nan])
def test_noise_for_without_std_raises(measured):
    with pytest.raises(ConfigError, match=r"std=None\) needs a measured std > 0"):
        NoiseCorruption().noise_for("x", [1], 8, std=measured)


@pytest.mark.parametrize("d_model", [0, -4, 2.0])
def test_noise_for_bad_d_model_raises(d_model):
    with pytest.raises(ConfigError, match="d_model must be a positive integer"):
        NoiseCorruption(std=1.0).noise_for("x", [1], d_model)


def test_measured_std_pools_all_span_tokens():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 8)) for n in (1, 3, 2)]
    assert measured_std(parts) == pytest.approx(np.concatenate(parts).std(), rel=1e-12)
    assert measured_std(parts[1]) == pytest.approx(parts[1].std(), rel=1e-12)


def test_measured_std_too_few_values_raises():
    with pytest.raises(ConfigError, match="needs at least 2 values, got 0"):
        measured_std([])


def test_embedding_matrix_std():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert embedding_matrix_std(w) == pytest.approx(np.arange(12).std())
    with pytest.raises(ConfigError, match=r"shape \(vocab, d_model\), got shape \(12,\)"):
        embedding_matrix_std(w.reshape(-1))
