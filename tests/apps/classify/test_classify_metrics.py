"""Precision, recall, F1 and AUROC with bootstrap intervals, against scikit-learn; the F1-best threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from qwenscope import QwenscopeError
from qwenscope.apps.classify.metrics import _auroc, _counts, best_threshold, classification_scores


def noisy(n: int, seed: int, rate: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    score = np.round(rng.normal(size=n) + 1.2 * y, 1)  # rounded: ties between classes
    return y, (score > 0.6).astype(int), score


@pytest.mark.parametrize("seed", range(5))
def test_point_estimates_match_sklearn(seed):
    y, pred, score = noisy(60 + 37 * seed, seed)
    res = classification_scores(y, pred, score, n_boot=50)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert res["precision"] == pytest.approx(p) and res["recall"] == pytest.approx(r) and res["f1"] == pytest.approx(f)
    assert res["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert res["tp"] + res["fn"] == res["n_pos"] == y.sum() and res["tp"] + res["fp"] == pred.sum()
    assert res["n"] == len(y) == res["tp"] + res["fp"] + res["fn"] + res["tn"]


def test_zero_division_as_sklearn():
    y = np.array([1, 0, 1, 0])
    res = classification_scores(y, np.zeros(4, int), n_boot=20)  # nothing predicted toxic
    assert res["precision"] == 0.0 and res["recall"] == 0.0 and res["f1"] == 0.0
    assert res["auroc"] is None and res["auroc_ci"] is None  # no score given
    clean = classification_scores(np.zeros(5, int), np.array([0, 1, 0, 0, 0]), np.arange(5.0), n_boot=20)
    assert clean["recall"] == 0.0 and clean["precision"] == 0.0
    assert clean["recall_ci"] is None and clean["auroc"] is None  # no positive: nothing to resample


def test_bootstrap_auroc_equals_sklearn_on_each_resample():
    y, _, score = noisy(40, 7, rate=0.4)
    counts = _counts(len(y), 6, np.random.default_rng(3))
    fast = _auroc(counts, y.astype(bool), score)
    for b in range(6):
        rows = np.repeat(np.arange(len(y)), counts[b])
        assert len(rows) == len(y) and fast[b] == pytest.approx(roc_auc_score(y[rows], score[rows]))


def test_interval_holds_the_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 3000):
        y, pred, score = noisy(n, 11)
        res = classification_scores(y, pred, score, n_boot=400)
        for key in ("precision", "recall", "f1", "auroc"):
            lo, hi = res[f"{key}_ci"]
            assert lo <= res[key] <= hi
        widths.append(res["f1_ci"][1] - res["f1_ci"][0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(30)


def test_bootstrap_is_deterministic_given_the_seed():
    y, pred, score = noisy(200, 2)
    a, b = classification_scores(y, pred, score, seed=5), classification_scores(y, pred, score, seed=5)
    assert a == b
    assert classification_scores(y, pred, score, seed=6)["f1_ci"] != a["f1_ci"]


def test_level_widens_the_interval():
    y, pred, score = noisy(300, 4)
    narrow = classification_scores(y, pred, level=0.5)["f1_ci"]
    wide = classification_scores(y, pred, level=0.99)["f1_ci"]
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (([1, 0], [1]), "same examples"),
        (([1, 2], [1, 0]), "0/1"),
        (([], []), "empty"),
        (([1, 0], [1, 0], [0.5]), "finite numbers"),
        (([1, 0], [1, 0], [0.5, np.nan]), "finite numbers"),
    ],
)
def test_bad_input_is_one_line(args, needle):
    with pytest.raises(QwenscopeError, match=needle) as err:
        classification_scores(*args, n_boot=10)
    assert "\n" not in str(err.value)


def test_best_threshold_beats_every_other_cut():
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.2, 0.8, 0.9, 0.85, 0.3])
    t = best_threshold(y, score)
    assert t == pytest.approx(0.25)  # midway between 0.3 (lowest toxic kept) and 0.2
    best = f1_score(y, score >= t)
    assert best == pytest.approx(6 / 7)
    assert all(f1_score(y, score >= c) < best for c in score if c > 0.3)


@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_is_the_brute_force_optimum(seed):
    y, _, score = noisy(80, seed)
    t = best_threshold(y, score)
    brute = max(f1_score(y, score >= c) for c in np.unique(score))
    assert f1_score(y, score >= t) == pytest.approx(brute)


def test_best_threshold_needs_a_positive():
    with pytest.raises(QwenscopeError, match="no positive"):
        best_threshold([0, 0], [0.1, 0.2])
