"""The baselines separate an easy problem, are deterministic, and name missing input in one line."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from qwenscope import QwenscopeError
from qwenscope.apps.classify.baselines import BASELINES, Inputs, fit_baselines

CLEAN = ["the", "cat", "sat", "on", "a", "warm", "mat", "near", "home", "while", "rain", "fell", "quiet", "garden"]
INSULTS = ["idiota", "imbécil", "stronzo", "cretino", "estúpido"]


def easy(n: int = 400, seed: int = 0) -> tuple[Inputs, np.ndarray]:
    """Toxic texts hold an insult; one SAE feature and one activation direction carry the label, the rest is noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    texts = [" ".join(rng.choice(CLEAN, 12)) + (f" {rng.choice(INSULTS)}" if t else "") for t in y]
    sae = sp.random(n, 2000, density=0.02, random_state=seed, format="lil", dtype=np.float32)
    sae[:, 5] = (y * rng.uniform(2, 4, n))[:, None]
    acts = rng.normal(size=(n, 32)).astype(np.float32)
    acts[:, 3] += 3.0 * y
    return Inputs(texts, sae=sae.tocsr(), acts=acts), y


@pytest.fixture(scope="module")
def data():
    x, y = easy()
    return x.subset(np.arange(300)), y[:300], x.subset(np.arange(300, 400)), y[300:]


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_separates_an_easy_problem(data, name):
    train, y_train, test, y_test = data
    model = fit_baselines([name], train, y_train)[name]
    assert model.name == name
    score, pred = model.score(test), model.predict(test)
    assert score.shape == pred.shape == (len(test),) and set(np.unique(pred)) <= {0, 1}
    assert roc_auc_score(y_test, score) > 0.9
    assert (pred == y_test).mean() > 0.85


def test_fit_is_deterministic_given_the_seed(data):
    train, y_train, test, _ = data
    a = fit_baselines(list(BASELINES), train, y_train, seed=3)
    b = fit_baselines(list(BASELINES), train, y_train, seed=3)
    for name in BASELINES:
        np.testing.assert_array_equal(a[name].score(test), b[name].score(test))


@pytest.mark.parametrize(
    ("name", "drop", "needle"),
    [
        ("sae-probe", "sae", r"Inputs\.sae"),
        ("act-probe", "acts", r"Inputs\.acts"),
        ("diff-means", "acts", r"Inputs\.acts"),
        ("tfidf", "texts", r"Inputs\.texts"),
    ],
)
def test_missing_input_is_one_line(data, name, drop, needle):
    train, y_train, *_ = data
    parts = {"texts": train.texts, "sae": train.sae, "acts": train.acts}
    parts[drop] = [""] * len(train) if drop == "texts" else None
    with pytest.raises(QwenscopeError, match=needle) as err:
        fit_baselines([name], Inputs(**parts), y_train)
    assert "\n" not in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("name", list(BASELINES))
def test_single_class_and_unfitted(data, name):
    train, *_ = data
    with pytest.raises(QwenscopeError, match="all 1"):
        fit_baselines([name], train, np.ones(len(train), int))
    with pytest.raises(QwenscopeError, match="not fitted"):
        BASELINES[name]().score(train)


def test_other_width_at_test_time_is_refused(data):
    train, y_train, test, _ = data
    fitted = fit_baselines(["sae-probe", "act-probe", "diff-means"], train, y_train)
    narrow = Inputs(test.texts, sae=test.sae[:, :100], acts=test.acts[:, :8])
    for name, model in fitted.items():
        with pytest.raises(QwenscopeError, match="was fit on"):
            model.score(narrow)
        assert model.score(test).shape == (len(test),), name


def test_unknown_name_and_label_count(data):
    train, y_train, *_ = data
    with pytest.raises(QwenscopeError, match="unknown baseline 'svm'.*tfidf"):
        fit_baselines(["svm"], train, y_train)
    with pytest.raises(QwenscopeError, match="labels for 300 examples"):
        fit_baselines(["tfidf"], train, y_train[:-1])


def test_subset_keeps_rows_aligned():
    x, y = easy(20, seed=1)
    mask = y.astype(bool)
    sub = x.subset(mask)
    assert len(sub) == mask.sum() and all(t.split()[-1] in INSULTS for t in sub.texts)
    np.testing.assert_array_equal(sub.acts, x.acts[mask])
    np.testing.assert_array_equal(sub.sae.toarray(), x.sae.toarray()[mask])
    rev = x.subset([3, 0])
    assert rev.texts == [x.texts[3], x.texts[0]] and sp.issparse(rev.sae)
    with pytest.raises(QwenscopeError, match="one row per text"):
        Inputs(x.texts[:5], acts=x.acts)


def test_tiny_training_set_skips_cross_validation():
    x, y = easy(40, seed=2)
    rows = np.r_[np.flatnonzero(y == 1)[:1], np.flatnonzero(y == 0)[:9]]  # one toxic example: no folds possible
    model = fit_baselines(["tfidf"], x.subset(rows), y[rows])["tfidf"]
    assert model.score(x).shape == (40,)
