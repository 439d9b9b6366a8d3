import numpy as np
import pytest

from oirl_fast import metrics


def test_pick_accuracy_plain_argmax():
    scores = np.array([[0.1, 0.9, 0.2], [0.8, 0.1, 0.3]])
    outcome = np.array([[0, 1, 1], [0, 1, 1]], dtype=float)
    # unit 0 picks prompt 1 (right), unit 1 picks prompt 0 (wrong)
    assert metrics.pick_accuracy(scores, outcome) == pytest.approx(0.5)


def test_pick_accuracy_breaks_ties_in_expectation():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.2, 0.2]])
    outcome = np.array([[1, 0, 1], [1, 0, 0]], dtype=float)
    # unit 0: tie between prompts 0 and 1 -> 0.5; unit 1: three-way tie -> 1/3
    assert metrics.pick_accuracy(scores, outcome) == pytest.approx((0.5 + 1 / 3) / 2)
    assert metrics.tie_rate(scores) == 1.0


def test_pick_accuracy_never_picks_nan_scores():
    scores = np.array([[np.nan, 0.1]])
    outcome = np.array([[1.0, 0.0]])
    assert metrics.pick_accuracy(scores, outcome) == 0.0


def test_pick_accuracy_with_success_rates():
    scores = np.array([[0.3, 0.7]])
    outcome = np.array([[0.25, 0.75]])
    assert metrics.pick_accuracy(scores, outcome) == pytest.approx(0.75)


def test_oracle_random_fixed():
    outcome = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=float)
    assert metrics.oracle_accuracy(outcome) == pytest.approx(3 / 4)
    assert metrics.random_accuracy(outcome) == pytest.approx((1 / 3 + 0 + 1 + 1 / 3) / 4)
    assert metrics.fixed_prompt_accuracy(outcome, 0) == pytest.approx(0.5)


def test_classification_report_hand_computed():
    y = np.array([1, 1, 0, 0, 1])
    prob = np.array([0.9, 0.4, 0.6, 0.1, 0.8])
    rep = metrics.classification_report(y, prob)
    # predictions 1,0,1,0,1: TP=2, FP=1, FN=1, TN=1
    assert rep["accuracy"] == pytest.approx(3 / 5)
    assert rep["precision"] == pytest.approx(2 / 3)
    assert rep["recall"] == pytest.approx(2 / 3)
    assert rep["f1"] == pytest.approx(2 / 3)
    # AUC: positive/negative pairs ranked right: (0.9>0.6,0.9>0.1,0.4<0.6,0.4>0.1,0.8>0.6,0.8>0.1) = 5/6
    assert rep["auc"] == pytest.approx(5 / 6)


def test_classification_report_single_class_has_no_auc():
    rep = metrics.classification_report(np.array([1, 1]), np.array([0.2, 0.9]))
    assert np.isnan(rep["auc"])


def test_paired_bootstrap_ci_hand_cases():
    # identical selectors: the difference is exactly zero in every resample
    a = np.array([1.0, 0.0, 1.0, 0.0])
    assert metrics.paired_bootstrap_ci(a, a) == (0.0, 0.0)
    # a constant per-unit gain of 0.25 is recovered exactly, however units are resampled
    assert metrics.paired_bootstrap_ci(a + 0.25, a) == pytest.approx((0.25, 0.25))
    # one win among 100 units: the interval holds the mean gain 0.01 and stays within [0, 0.04]
    b = np.zeros(100)
    c = b.copy()
    c[0] = 1.0
    lo, hi = metrics.paired_bootstrap_ci(c, b, n_boot=4000)
    assert lo == 0.0 and 0.01 < hi <= 0.04


def test_paired_bootstrap_ci_is_tighter_than_unpaired_spread():
    rng = np.random.default_rng(0)
    hard = rng.random(500)  # shared per-unit difficulty
    a = hard + 0.02
    b = hard
    lo, hi = metrics.paired_bootstrap_ci(a, b)
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
