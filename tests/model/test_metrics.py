"""Metrics on hand-computed values: question-kind decisions, log loss, macro AUC / AP, ordinal
MAE, and paired-bootstrap intervals."""

import numpy as np
import pytest

from lantern.dataset.questionnaire import Option, Question, Questionnaire
from model.metrics import Layout, auc, average_precision, decide, log_loss, ordinal_mae, prf, tune_multi_threshold
from model.quality import (macro_auc_replicates, paired_difference, paired_macro_auc, quality_report, resamples,
                           row_stats)

Q = Questionnaire(questions=(
    Question(id="s", kind="single", ordinal=True, options=tuple(Option(id=str(i)) for i in range(3))),
    Question(id="m", kind="multi", options=(Option(id="a"), Option(id="b"))),
))
LAYOUT = Layout.of(Q)


def test_single_select_is_decided_by_argmax_multi_select_by_threshold():
    probs = np.array([[0.2, 0.5, 0.3, 0.6, 0.4]])
    assert decide(probs, LAYOUT, 0.5).tolist() == [[False, True, False, True, False]]
    assert decide(probs, LAYOUT, 0.35).tolist() == [[False, True, False, True, True]]
    assert decide(probs, LAYOUT, 0.5, abstain_below=0.6).tolist() == [[False, False, False, True, False]]


def test_log_loss_counts_one_decision_per_single_question_and_per_multi_option():
    probs = np.array([[0.2, 0.5, 0.3, 0.6, 0.4]])
    y = np.array([[0, 1, 0, 1, 0]])
    mask = np.ones_like(y, bool)
    expected = (-np.log(0.5) - np.log(0.6) - np.log(0.6)) / 3
    assert log_loss(probs, y, mask, LAYOUT) == pytest.approx(expected)
    report = quality_report(probs, y, mask, np.zeros(5, bool), LAYOUT, 0.5)
    assert report["log_loss"] == pytest.approx(expected)
    assert report["accuracy"] == 1.0 and report["f1"] == 1.0
    assert report["brier"] == pytest.approx(np.mean((probs - y) ** 2))


def test_auc_ap_and_f1_on_known_values():
    y = np.array([1, 0, 1, 0])
    probs = np.array([0.9, 0.8, 0.2, 0.1])
    mask = np.ones(4, bool)
    assert auc(probs, y, mask) == pytest.approx(0.75)
    assert average_precision(probs, y, mask) == pytest.approx((1 + 2 / 3) / 2)
    r = prf(probs[None], y[None], mask[None])
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)


def test_ordinal_mae_uses_the_predictive_median_in_scale_points():
    probs = np.array([[0.1, 0.2, 0.7, 0.5, 0.5], [0.6, 0.3, 0.1, 0.5, 0.5]])
    y = np.array([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert ordinal_mae(probs, y, np.ones_like(y, bool), LAYOUT) == pytest.approx(1.0)  # medians 2 and 0


def test_the_tuned_threshold_maximises_validation_f1():
    rng = np.random.default_rng(0)
    y = np.zeros((400, 5), np.uint8)
    y[np.arange(400), rng.integers(0, 3, 400)] = 1
    y[:, 3:] = rng.random((400, 2)) < 0.3
    probs = np.where(y[:, 3:] > 0, 0.35, 0.15)  # positives sit at 0.35: a threshold at 0.5 finds none
    probs = np.concatenate([np.full((400, 3), 1 / 3), probs], 1)
    t = tune_multi_threshold(probs, y, np.ones_like(y, bool), LAYOUT)
    assert 0.15 < t <= 0.35


def test_paired_bootstrap_separates_a_better_model_and_not_a_copy():
    rng = np.random.default_rng(1)
    n = 300
    y = np.zeros((n, 5), np.uint8)
    y[np.arange(n), rng.integers(0, 3, n)] = 1
    y[:, 3:] = rng.random((n, 2)) < 0.4
    mask, rare = np.ones_like(y, bool), np.zeros(5, bool)
    good = np.clip(0.7 * y + 0.15 + 0.05 * rng.random(y.shape), 0, 1)
    good[:, :3] /= good[:, :3].sum(1, keepdims=True)
    plain = np.concatenate([np.full((n, 3), 1 / 3), np.full((n, 2), 0.4)], 1)
    w = resamples(n, 200, seed=0)
    stats_good, stats_plain = (row_stats(p, y, mask, LAYOUT, 0.5, rare) for p in (good, plain))
    diff = paired_difference(stats_good, stats_plain, w)
    assert diff["log_loss"]["excludes_0"] and diff["log_loss"]["hi"] < 0
    assert diff["f1"]["excludes_0"] and diff["f1"]["lo"] > 0
    same = paired_difference(stats_good, stats_good, w)
    assert same["log_loss"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "excludes_0": False}


def test_bootstrap_macro_auc_equals_the_auc_of_each_resampled_set():
    """Every replicate's macro AUC in one pass equals ``auc`` on that replicate's sessions repeated
    (ties, a key never hidden, a key with one class, a replicate without a class)."""
    rng = np.random.default_rng(2)
    n, k = 120, 12
    probs = np.round(rng.random((n, k)), 1)  # many ties
    y = (rng.random((n, k)) < 0.3).astype(np.uint8)
    mask = rng.random((n, k)) < 0.6
    mask[:, 0] = False  # never hidden
    y[:, 1] = 1  # one class only
    mask[:, 2] = False
    mask[:3, 2] = True  # three sessions: some replicates miss a class
    w = resamples(n, 40, seed=3)
    fast = macro_auc_replicates(probs, y, mask, w)
    for r, weights in enumerate(w):
        idx = np.repeat(np.arange(n), weights.astype(np.int64))
        per = [auc(probs[idx, j], y[idx, j], mask[idx, j]) for j in range(k)]
        assert fast[r] == pytest.approx(np.nanmean(per), abs=1e-12)
    point = paired_macro_auc(probs, probs, y, mask, w)
    assert point == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "excludes_0": False}
