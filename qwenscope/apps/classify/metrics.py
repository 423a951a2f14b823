"""Scores of a binary classifier on a test set, with percentile-bootstrap intervals, and the F1-best threshold.

    s = classification_scores(y_test, clf.predict(x_test), clf.score(x_test))
    s["f1"], s["f1_ci"], s["auroc"]                       # JSON-ready floats and [lo, hi] lists
    t = best_threshold(y_discovery, scores_discovery)      # predict toxic when score >= t

The conventions are scikit-learn's (``precision_recall_fscore_support`` with ``average="binary"``,
``roc_auc_score``): precision is 0 when nothing is predicted positive, recall is 0 when nothing is positive, F1 is 0
when both are. Every bootstrap resample is drawn as a count per test row (a vectorised multinomial), so all the
statistics of one resample come from matrix products (timings: docs/results/classify.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qwenscope import QwenscopeError

__all__ = ["best_threshold", "classification_scores"]

_CHUNK = 250
"""Bootstrap resamples drawn at once."""


def _binary(y: Any, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise QwenscopeError(f"{what} must be one label per example (a 1-d array), got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][0]
        raise QwenscopeError(f"{what} must hold 0/1 or true/false labels, got a value {bad!r}")
    return arr.astype(bool)


def _counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) int32: how often each row is drawn in each resample of n rows with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def _prf(c: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Confusion counts and precision, recall, F1 for weights ``c`` (n_boot, n); zero division gives 0."""
    cf = c.astype(np.float64)
    tp, fp, fn = cf @ (y & p), cf @ (~y & p), cf @ (y & ~p)
    tn = cf.sum(axis=1) - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return tp, fp, fn, tn, precision, recall, f1


def _auroc(c: np.ndarray, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC for weights ``c`` (n_boot, n): P(score+ > score-) + P(tie) / 2 over the weighted pairs; nan without
    a positive or a negative."""
    order = np.argsort(score, kind="stable")
    s, ys, cs = score[order], y[order], c[:, order].astype(np.float64)
    neg_cum = np.cumsum(cs * ~ys, axis=1)  # weight of the negatives at or below each sorted position
    neg_cum = np.concatenate([np.zeros((len(cs), 1)), neg_cum], axis=1)
    first = np.searchsorted(s, s, side="left")  # tie group of each position: [first, last)
    last = np.searchsorted(s, s, side="right")
    below, tied = neg_cum[:, first], neg_cum[:, last] - neg_cum[:, first]
    n_pos, n_neg = cs @ ys, cs @ ~ys
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((cs * ys) * (below + 0.5 * tied)).sum(axis=1) / (n_pos * n_neg)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def classification_scores(
    y_true: Any, y_pred: Any, score: Any = None, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Precision, recall, F1 (positive class 1) and AUROC of ``score`` (higher = positive; None without it), each
    with a percentile-bootstrap interval at ``level`` over the test examples.

    Each of ``n_boot`` resamples draws the test rows with replacement. A resample without a positive example is
    skipped (recall and F1 say nothing there), and for AUROC also one without a negative, so the intervals come
    from the remaining resamples; they are None when the test set itself has no positive (AUROC: or no negative).
    Returns a JSON-ready dict: precision, recall, f1, auroc, their ``*_ci`` as [lo, hi], n, n_pos, tp, fp, fn, tn,
    n_boot and level.
    """
    y, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if len(y) == 0:
        raise QwenscopeError("no test examples: the split to score is empty")
    if len(p) != len(y):
        raise QwenscopeError(f"y_pred has {len(p)} labels but y_true has {len(y)}: score the same examples")
    if not 0 < level < 1 or n_boot < 1:
        raise QwenscopeError(f"level must lie in (0, 1) and n_boot be >= 1, got level={level}, n_boot={n_boot}")
    s = None
    if score is not None:
        s = np.asarray(score, dtype=np.float64)
        if s.shape != y.shape or not np.isfinite(s).all():
            raise QwenscopeError(f"score must be {len(y)} finite numbers, one per example, got shape {s.shape}")
    tp, fp, fn, tn, precision, recall, f1 = _prf(np.ones((1, len(y)), np.int32), y, p)
    auroc_of = s if s is not None and 0 < y.sum() < len(y) else None  # AUROC needs a score and both classes
    rng, parts = np.random.default_rng(seed), []
    for start in range(0, n_boot, _CHUNK):  # chunks bound the memory at (_CHUNK, n) per array
        boot = _counts(len(y), min(_CHUNK, n_boot - start), rng)
        boot = boot[boot @ y.astype(np.int32) > 0]
        stats = _prf(boot, y, p)[4:]
        auc = np.full(len(boot), np.nan) if auroc_of is None else _auroc(boot, y, auroc_of)
        parts.append(np.stack([*stats, auc]))
    b_prec, b_rec, b_f1, b_auc = np.concatenate(parts, axis=1)
    out: dict[str, Any] = {
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "f1": float(f1[0]),
        "precision_ci": _interval(b_prec, level),
        "recall_ci": _interval(b_rec, level),
        "f1_ci": _interval(b_f1, level),
        "auroc": None,
        "auroc_ci": None,
        "n": len(y),
        "n_pos": int(y.sum()),
        "tp": int(tp[0]),
        "fp": int(fp[0]),
        "fn": int(fn[0]),
        "tn": int(tn[0]),
        "n_boot": n_boot,
        "level": level,
    }
    if auroc_of is not None:
        out["auroc"] = float(_auroc(np.ones((1, len(y)), np.int32), y, auroc_of)[0])
        out["auroc_ci"] = _interval(b_auc, level)
    return out


def best_threshold(y_true: Any, score: Any) -> float:
    """The threshold ``t`` for ``predict = score >= t`` with the highest F1 on the given (discovery) data.

    Every cut between two distinct scores is tried; ``t`` sits midway between the lowest score kept positive and
    the next lower score (or at the lowest score when everything is predicted positive), so new examples near the
    cut fall on either side alike. Among equal F1 the highest threshold (fewest positives predicted) wins.
    """
    y = _binary(y_true, "y_true")
    s = np.asarray(score, dtype=np.float64)
    if s.shape != y.shape or not np.isfinite(s).all():
        raise QwenscopeError(f"score must be {len(y)} finite numbers, one per example, got shape {s.shape}")
    if not y.any():
        raise QwenscopeError("no positive example: a threshold needs at least one toxic (label 1) example")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])  # last position of each distinct score
    tp = np.cumsum(y_desc)[ends]
    f1 = 2 * tp / (ends + 1 + y.sum())  # 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + positives)
    best = int(np.argmax(f1))
    cut = ends[best]
    if cut + 1 == len(s):
        return float(s_desc[cut])
    mid = (s_desc[cut] + s_desc[cut + 1]) / 2
    return float(mid if s_desc[cut + 1] < mid <= s_desc[cut] else s_desc[cut])  # adjacent floats: no midpoint
