"""Tests for analysis/recovery.py; expected values are the closed-form definitions in
DEVELOPERS.md, computed by hand."""

import numpy as np
import pytest

from patchsweep.analysis.recovery import decode, encode, gap_rule, recovery


def test_recovery_score_metric_formula():
    got = recovery(np.array([[1.0, 3.0]]), np.array([[3.0]]), np.array([[-1.0]]), "logit_diff")
    np.testing.assert_allclose(got, [[0.5, 1.0]])  # (1+1)/4, (3+1)/4


def test_recovery_distance_metric_formula():
    got = recovery(np.array([[0.5, 2.0]]), np.array([[0.0]]), np.array([[2.0]]), "kl")
    np.testing.assert_allclose(got, [[0.75, 0.0]])  # 1 - 0.5/2, 1 - 2/2


def test_recovery_within_numerical_zero_is_exactly_zero():
    # gap 4: patched - corrupted of 2e-4 is recovery 5e-5 (rounding), 8e-4 is 2e-4 (kept)
    patched = np.array([[-1.0 + 2e-4, -1.0 - 2e-4, -1.0 + 8e-4, np.nan]])
    got = recovery(patched, np.array([[3.0]]), np.array([[-1.0]]), "logit_diff")
    assert got[0, 0] == 0.0 and got[0, 1] == 0.0
    np.testing.assert_allclose(got[0, 2], 2e-4)
    assert np.isnan(got[0, 3])
    kl = recovery(np.array([[2.0 * (1 + 3e-5)]]), np.array([[0.0]]), np.array([[2.0]]), "kl")
    assert kl[0, 0] == 0.0


def test_gap_rule_excludes_small_zero_and_nonfinite_gaps():
    clean = np.array([1.0, 1.0, 1.0, 1.0, np.nan])
    corrupted = np.array([0.0, 1.0, 1.0 - 1e-9, -1.0, 0.0])
    rule = gap_rule(clean, corrupted, "logit_diff")
    np.testing.assert_array_equal(rule.excluded, [False, True, True, False, True])
    # 1e-6 x median of the finite |gap| values {1, 0, 1e-9, 2} = 1e-6 x (1 + 1e-9) / 2
    assert rule.threshold == pytest.approx(0.5e-6 * (1 + 1e-9), rel=1e-12)
    assert gap_rule(clean, corrupted, "logit_diff", min_gap=1.5).excluded.tolist() == [
        True,
        True,
        True,
        False,
        True,
    ]


def test_gap_rule_distance_uses_corrupted_distance():
    rule = gap_rule(np.zeros(3), np.array([2.0, 0.0, 1.0]), "l2")
    np.testing.assert_array_equal(rule.gap, [2.0, 0.0, 1.0])
    np.testing.assert_array_equal(rule.excluded, [False, True, False])


def test_encode_decode_counts_excluded_and_not_applicable_separately():
    patched = np.array([[1.0, np.nan], [2.0, 3.0], [4.0, np.nan]])
    rec = patched / 10
    excluded = np.array([[False], [True], [False]])
    values, n_excluded, n_na = decode(encode(patched, rec, excluded))
    np.testing.assert_array_equal(n_excluded, [1, 1])
    np.testing.assert_array_equal(n_na, [0, 2])
    np.testing.assert_allclose(values[:, 0], [0.1, np.nan, 0.4], rtol=1e-6)
