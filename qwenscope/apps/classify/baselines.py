"""The baselines the feature rule is compared with: four trained classifiers on the same splits (scikit-learn).

    train = Inputs(texts, sae=pooled_sae, acts=pooled_acts)          # one row per example
    fitted = fit_baselines(["sae-probe", "tfidf"], train, y_train, seed=0)
    scores = fitted["tfidf"].score(test)                             # higher = more toxic
    labels = fitted["tfidf"].predict(test)                           # 0/1

``sae-probe``   logistic regression on the SAE features max-pooled over tokens (sparse; MaxAbsScaler),
``act-probe``   logistic regression on the raw hookpoint activations mean-pooled over tokens (StandardScaler),
``diff-means``  the difference of the class means of the pooled activations; the score is the projection on it,
                the threshold the F1-best one on the training data,
``tfidf``       TF-IDF of character n-grams + logistic regression, on the text alone.

The logistic regressions weigh the classes equally (``class_weight="balanced"``) and choose C from a small grid by
stratified k-fold cross-validation on the training rows (F1, the metric the comparison reports); the unsupervised
transforms (scalers, TF-IDF vocabulary) are fit once on all training rows. liblinear fits the sparse SAE features
quickly on one core (docs/results/classify.md). Everything is deterministic given the seed (fold shuffling and
liblinear's coordinate order).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from qwenscope import QwenscopeError
from qwenscope.apps.classify.metrics import best_threshold
from qwenscope.util import require

__all__ = ["BASELINES", "ActProbe", "Baseline", "DiffMeans", "Inputs", "SaeProbe", "TfidfProbe", "fit_baselines"]

logger = logging.getLogger(__name__)


@dataclass
class Inputs:
    """The examples in every form a baseline reads; row i of each field is example i."""

    texts: list[str]
    """The raw texts (for ``tfidf``)."""
    sae: sp.csr_matrix | None = None
    """(n, d_sae) float32: each SAE feature's maximum activation over the example's tokens."""
    acts: np.ndarray | None = None
    """(n, d_in) float32: the mean over the example's tokens of the raw hookpoint activations."""

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        n = len(self.texts)
        if self.sae is not None:
            self.sae = sp.csr_matrix(self.sae, dtype=np.float32)
        if self.acts is not None:
            self.acts = np.asarray(self.acts, dtype=np.float32)
        for name, value in (("sae", self.sae), ("acts", self.acts)):
            if value is not None and (value.ndim != 2 or value.shape[0] != n):
                raise QwenscopeError(
                    f"Inputs.{name} has shape {value.shape} but there are {n} texts: give one row per text"
                )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: Any) -> Inputs:
        """The examples at ``rows`` (indices or a boolean mask), in that order."""
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return Inputs(
            [self.texts[i] for i in idx],
            None if self.sae is None else self.sae[idx],
            None if self.acts is None else self.acts[idx],
        )


class Baseline(Protocol):
    """A classifier trained on labelled examples; ``score`` is higher for more toxic ones."""

    name: str

    def fit(self, x: Inputs, y: np.ndarray) -> Baseline: ...

    def score(self, x: Inputs) -> np.ndarray: ...

    def predict(self, x: Inputs) -> np.ndarray: ...


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise QwenscopeError(f"{name}: {arr.shape} labels for {n} examples: give one 0/1 label per example")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise QwenscopeError(f"{name}: labels must be 0/1 or true/false")
    arr = arr.astype(np.int64)
    if arr.min() == arr.max():
        raise QwenscopeError(
            f"{name}: the training labels are all {arr[0]}: give both toxic (1) and clean (0) examples"
        )
    return arr


def _fit_logreg(X: Any, y: np.ndarray, seed: int, Cs: Sequence[float], folds: int, max_iter: int, name: str) -> Any:
    """Balanced L2 logistic regression (liblinear), C chosen by stratified k-fold F1; C = 1 with too few rows."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    model = LogisticRegression(C=1.0, class_weight="balanced", solver="liblinear", max_iter=max_iter, random_state=seed)
    k = min(folds, int(np.bincount(y).min()))
    if k < 2 or len(Cs) < 2:
        logger.info("%s: %d examples of the rarer class, too few to cross-validate C: C = 1", name, k)
        return model.fit(X, y)
    search = GridSearchCV(
        model,
        {"C": list(Cs)},
        scoring="f1",
        cv=StratifiedKFold(k, shuffle=True, random_state=seed),
        error_score="raise",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # a fold where nothing is predicted toxic: F1 = 0
        search.fit(X, y)
    logger.info("%s: C = %g (cross-validated F1 %.3f)", name, search.best_params_["C"], search.best_score_)
    return search.best_estimator_


@dataclass
class _Probe:
    """A logistic regression on one input of ``Inputs``; subclasses say which input and how it is transformed."""

    seed: int = 0
    """Seeds the cross-validation folds and liblinear."""
    Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    """The inverse regularisation strengths tried by cross-validation."""
    folds: int = 3
    """Cross-validation folds (fewer when the rarer class has fewer examples)."""
    max_iter: int = 1000
    """liblinear iterations."""
    transform_: Any = field(default=None, init=False, repr=False)
    model_: Any = field(default=None, init=False, repr=False)
    name = "probe"

    def _input(self, x: Inputs) -> Any:
        raise NotImplementedError

    def _transform(self) -> Any:
        raise NotImplementedError

    def fit(self, x: Inputs, y: np.ndarray) -> _Probe:
        require("sklearn", "classify", f"the {self.name} baseline")
        self.transform_ = self.model_ = None
        X = self._input(x)
        labels = _labels(y, len(x), self.name)
        self.transform_ = self._transform()
        self.model_ = _fit_logreg(
            self.transform_.fit_transform(X), labels, self.seed, self.Cs, self.folds, self.max_iter, self.name
        )
        return self

    def score(self, x: Inputs) -> np.ndarray:
        if self.model_ is None:
            raise QwenscopeError(f"{self.name} is not fitted: call fit(train, y) first")
        X = self._input(x)
        return np.asarray(self.model_.decision_function(self.transform_.transform(X)), dtype=np.float64)

    def predict(self, x: Inputs) -> np.ndarray:
        return (self.score(x) > 0).astype(np.int64)


def _width(name: str, what: str, X: Any, fitted: Any) -> None:
    want = getattr(fitted, "n_features_in_", None)
    if want is not None and X.shape[1] != want:
        raise QwenscopeError(
            f"{name} was fit on {want} {what} but got {X.shape[1]}: use the same model, SAE and "
            "hookpoint for training and test"
        )


@dataclass
class SaeProbe(_Probe):
    """Logistic regression on the max-pooled SAE features; MaxAbsScaler puts every feature in [0, 1] and keeps the
    matrix sparse (features with large activations would otherwise dominate the penalty)."""

    name = "sae-probe"

    def _input(self, x: Inputs) -> Any:
        if x.sae is None:
            raise QwenscopeError(
                "sae-probe needs the pooled SAE features (Inputs.sae), which are missing: encode the "
                "texts with the SAE or drop sae-probe"
            )
        _width(self.name, "SAE features", x.sae, self.transform_)
        return x.sae

    def _transform(self) -> Any:
        from sklearn.preprocessing import MaxAbsScaler

        return MaxAbsScaler()


@dataclass
class ActProbe(_Probe):
    """Logistic regression on the standardised mean-pooled raw activations of the same hookpoint."""

    name = "act-probe"

    def _input(self, x: Inputs) -> Any:
        if x.acts is None:
            raise QwenscopeError(
                "act-probe needs the pooled activations (Inputs.acts), which are missing: capture "
                "the hookpoint or drop act-probe"
            )
        _width(self.name, "activation dimensions", x.acts, self.transform_)
        return x.acts

    def _transform(self) -> Any:
        from sklearn.preprocessing import StandardScaler

        return StandardScaler()


@dataclass
class TfidfProbe(_Probe):
    """TF-IDF + logistic regression on the text alone.

    Character n-grams within word boundaries (``char_wb``, 2-5, sublinear tf) rather than word 1-2 grams: the
    reference data are Spanish and Italian, whose insults inflect (gender, number, diminutives) and get respelled,
    and a few thousand short texts leave most word bigrams unseen; sub-word pieces share evidence across those forms
    (and across the two related languages in the transfer test). The vocabulary is capped at the 100,000 most
    frequent n-grams.
    """

    max_features: int = 100_000
    """The n-grams kept, by frequency in the training texts."""
    name = "tfidf"

    def _input(self, x: Inputs) -> Any:
        if not x.texts or not any(t.strip() for t in x.texts):
            raise QwenscopeError("tfidf needs the texts (Inputs.texts), which are empty")
        return x.texts

    def _transform(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(2, 5),
            sublinear_tf=True,
            lowercase=True,
            max_features=self.max_features,
            dtype=np.float32,
        )


@dataclass
class DiffMeans:
    """The difference of the class means of the pooled activations: score = projection on the unit direction,
    toxic when the score reaches the F1-best threshold on the training data."""

    seed: int = 0
    """Unused (the fit is closed-form); kept so that every baseline takes one."""
    direction_: np.ndarray | None = field(default=None, init=False, repr=False)
    threshold_: float = field(default=0.0, init=False)
    name = "diff-means"

    def _input(self, x: Inputs) -> np.ndarray:
        if x.acts is None:
            raise QwenscopeError(
                "diff-means needs the pooled activations (Inputs.acts), which are missing: capture "
                "the hookpoint or drop diff-means"
            )
        if self.direction_ is not None and x.acts.shape[1] != len(self.direction_):
            raise QwenscopeError(
                f"diff-means was fit on {len(self.direction_)} activation dimensions but got "
                f"{x.acts.shape[1]}: use the same model and hookpoint for training and "
                "test"
            )
        return x.acts.astype(np.float64)

    def fit(self, x: Inputs, y: np.ndarray) -> DiffMeans:
        self.direction_ = None
        acts = self._input(x)
        labels = _labels(y, len(x), self.name).astype(bool)
        diff = acts[labels].mean(axis=0) - acts[~labels].mean(axis=0)
        norm = float(np.linalg.norm(diff))
        if norm == 0:
            raise QwenscopeError("diff-means: the two classes have the same mean activation: nothing to project on")
        self.direction_ = diff / norm
        self.threshold_ = best_threshold(labels, acts @ self.direction_)
        return self

    def score(self, x: Inputs) -> np.ndarray:
        if self.direction_ is None:
            raise QwenscopeError("diff-means is not fitted: call fit(train, y) first")
        return self._input(x) @ self.direction_

    def predict(self, x: Inputs) -> np.ndarray:
        return (self.score(x) >= self.threshold_).astype(np.int64)


BASELINES: dict[str, Callable[..., Baseline]] = {
    "sae-probe": SaeProbe,
    "act-probe": ActProbe,
    "diff-means": DiffMeans,
    "tfidf": TfidfProbe,
}
"""Every baseline by name; each factory takes the keyword ``seed`` (default 0) and returns an unfitted baseline."""


def fit_baselines(names: Sequence[str], train: Inputs, y_train: Any, seed: int = 0) -> dict[str, Baseline]:
    """Fit the named baselines on the same training rows; returns them by name, in the order given."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise QwenscopeError(f"unknown baseline {unknown[0]!r}: choose from {', '.join(BASELINES)}")
    y = np.asarray(y_train)
    return {name: BASELINES[name](seed=seed).fit(train, y) for name in names}
