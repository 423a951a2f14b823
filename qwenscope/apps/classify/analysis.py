"""The report's analyses of the feature rule, with the baselines beside it on the same splits and metrics.

    train, test = Part(texts, labels, pooled), Part(...)        # pooled: hookpoint -> Pooled (pool_texts)
    results = compare(train, test)                                # the table and the F1-vs-K curve
    results["efficiency"] = efficiency(train, test)               # discovery data at 1%, 10%, 50%, 100%
    transfer(train_es, test_it)                                    # features found on one language, tested on another

Every row carries precision, recall and F1 with percentile-bootstrap intervals over the test texts, and AUROC where the
method has a score (the feature rule's score: how many kept features fire). The feature rule's K is chosen on the
discovery data (the K of best discovery F1, the smallest on ties) and marked ``chosen``; the test never picks it.
The baselines read the hookpoint the rule chose (its first feature's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from qwenscope import QwenscopeError
from qwenscope.apps.classify.baselines import BASELINES, Inputs, fit_baselines
from qwenscope.apps.classify.metrics import classification_scores
from qwenscope.apps.classify.pooled import Pooled
from qwenscope.apps.classify.rule import FeatureRule, fit_rule
from qwenscope.features import check_labels

KS = tuple(range(1, 11))
FRACTIONS = (0.01, 0.1, 0.5, 1.0)
RULE = "feature rule"


@dataclass
class Part:
    """Texts, their labels and their pooled features at each hookpoint read (one split of a labelled set)."""

    texts: list[str]
    labels: np.ndarray
    pooled: dict[str, Pooled]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        for hook, p in self.pooled.items():
            if p.max_acts.shape[0] != len(self.texts):
                raise QwenscopeError(f"{p.max_acts.shape[0]} pooled rows at {hook} for {len(self.texts)} texts")

    def rows(self, idx: Sequence[int] | np.ndarray) -> Part:
        idx = np.asarray(idx, dtype=np.int64)
        return Part([self.texts[i] for i in idx], self.labels[idx], {h: p.rows(idx) for h, p in self.pooled.items()})

    def fires(self) -> dict[str, sp.csr_matrix]:
        return {h: p.fires for h, p in self.pooled.items()}

    def inputs(self, hook: str) -> Inputs:
        return Inputs(self.texts, self.pooled[hook].max_acts, self.pooled[hook].mean_acts)


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((pred == 1) & (y == 1)).sum())
    denom = int((pred == 1).sum() + (y == 1).sum())
    return 2 * tp / denom if denom else 0.0


def fit_chosen(train: Part, ks: Sequence[int] = KS, choose: str = "top1-diff") -> tuple[FeatureRule, int]:
    """The rule of max(ks) features fit on ``train``, and the K of best discovery F1 (smallest on ties)."""
    check_labels(train.labels, len(train.texts))
    rule = fit_rule(train.fires(), train.labels, k=max(ks), choose=choose)
    fires = train.fires()
    f1s = [_f1(train.labels, rule.top(k).predict(fires)) for k in ks]
    return rule, list(ks)[int(np.argmax(f1s))]


def _row(
    method: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray | None, n_boot: int, seed: int, **extra: Any
) -> dict[str, Any]:
    return {"method": method, **extra, **classification_scores(y, pred, score, n_boot=n_boot, seed=seed)}


def rule_rows(
    rule: FeatureRule, chosen: int, test: Part, ks: Sequence[int] = KS, n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per K: the rule's first K features on ``test``."""
    fires = test.fires()
    rows = []
    for k in ks:
        sub = rule.top(k)
        score = sub.score(fires)
        rows.append(
            _row(
                RULE,
                test.labels,
                (score > 0).astype(np.int64),
                score.astype(float),
                n_boot,
                seed,
                k=k,
                hookpoint=",".join(sub.hookpoints),
                chosen=k == chosen,
            )
        )
    return rows


def baseline_rows(
    train: Part, test: Part, hook: str, names: Sequence[str] = tuple(BASELINES), seed: int = 0, n_boot: int = 1000
) -> list[dict[str, Any]]:
    """One row per baseline, fit on ``train`` and scored on ``test`` at ``hook``."""
    fitted = fit_baselines(list(names), train.inputs(hook), train.labels, seed=seed)
    x = test.inputs(hook)
    return [
        _row(name, test.labels, b.predict(x), b.score(x), n_boot, seed, hookpoint=hook) for name, b in fitted.items()
    ]


def compare(
    train: Part,
    test: Part,
    ks: Sequence[int] = KS,
    choose: str = "top1-diff",
    baselines: Sequence[str] = tuple(BASELINES),
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The comparison table (the rule at every K, then every baseline) and the F1-vs-K curve."""
    if len(test.texts) == 0:
        raise QwenscopeError("the test part is empty; give test data (or a larger set to split)")
    rule, chosen = fit_chosen(train, ks, choose)
    rows = rule_rows(rule, chosen, test, ks, n_boot, seed)
    hook = rule.features[0].hookpoint
    rows += baseline_rows(train, test, hook, baselines, seed, n_boot)
    curve = [r for r in rows if r["method"] == RULE]
    return {
        "comparison": rows,
        "rule": rule.as_dict(),
        "k_chosen": chosen,
        "hookpoint": hook,
        "k_curve": {"k": [r["k"] for r in curve], "f1": [r["f1"] for r in curve], "f1_ci": [r["f1_ci"] for r in curve]},
        "n_train": len(train.texts),
        "n_test": len(test.texts),
    }


def stratified(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a stratified random ``fraction`` of each class (at least one per class), sorted."""
    if not 0 < fraction <= 1:
        raise QwenscopeError(f"a share of the discovery data is in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        n = max(1, round(fraction * len(rows)))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def efficiency(
    train: Part,
    test: Part,
    fractions: Sequence[float] = FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    ks: Sequence[int] = KS,
    choose: str = "top1-diff",
    baselines: Sequence[str] = tuple(BASELINES),
) -> dict[str, Any]:
    """Test F1 of every method fit on a stratified share of the discovery data: the median over ``seeds`` (one draw
    at 100%), with the lowest and highest. The rule keeps the hookpoint and K it picks on each share."""
    per: dict[str, list[list[float]]] = {}
    for fraction in fractions:
        runs: dict[str, list[float]] = {}
        for seed in seeds if fraction < 1 else seeds[:1]:
            part = train.rows(stratified(train.labels, fraction, seed))
            rule, chosen = fit_chosen(part, ks, choose)
            runs.setdefault(RULE, []).append(_f1(test.labels, rule.top(chosen).predict(test.fires())))
            hook = rule.features[0].hookpoint
            for name, b in fit_baselines(list(baselines), part.inputs(hook), part.labels, seed=seed).items():
                runs.setdefault(name, []).append(_f1(test.labels, b.predict(test.inputs(hook))))
        for name, values in runs.items():
            per.setdefault(name, []).append(values)
    return {
        "fractions": list(fractions),
        "n_train": [len(stratified(train.labels, f, 0)) for f in fractions],
        "methods": {n: [float(np.median(v)) for v in vs] for n, vs in per.items()},
        "low": {n: [float(np.min(v)) for v in vs] for n, vs in per.items()},
        "high": {n: [float(np.max(v)) for v in vs] for n, vs in per.items()},
    }


def transfer(
    train: Part,
    test: Part,
    train_name: str,
    test_name: str,
    ks: Sequence[int] = KS,
    choose: str = "top1-diff",
    baselines: Sequence[str] = tuple(BASELINES),
    seed: int = 0,
    n_boot: int = 1000,
) -> list[dict[str, Any]]:
    """Rows for methods fit on ``train`` (one language) and tested on ``test`` (another): the rule at its chosen K
    and every baseline."""
    result = compare(train, test, ks, choose, baselines, seed, n_boot)
    rows = [r for r in result["comparison"] if r["method"] != RULE or r["chosen"]]
    return [{"train": train_name, "test": test_name, **r} for r in rows]
