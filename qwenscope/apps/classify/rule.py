"""The report's toxicity classifier: K SAE features and the rule "toxic when any of them fires anywhere".

    rule = fit_rule({"resid_post.3": fires_l3, "resid_post.15": fires_l15}, labels, k=5)   # top1-diff hookpoint
    rule.predict({"resid_post.15": fires_test})            # 0/1 per text
    rule.score(...)                                        # how many kept features fire: a score for AUROC

Firing rates (Qwen-Scope report, section 5): ``Δ_f = P(fires | toxic) − P(fires | clean)`` per feature, "fires" =
active at any token of the text (``Pooled.fires``). The K features of largest Δ are kept (ties: the smaller id). The
hookpoint: the one whose best single feature has the largest Δ ("top1-diff", ``choose="top1-diff"``), a named one,
or ``choose="combine"``: all hookpoints' features ranked together, the top K kept wherever they read.

No weights are trained, so the rule is exactly reproducible: the same discovery data gives the same features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from qwenscope import QwenscopeError
from qwenscope.features import FeatureDelta
from qwenscope.features import firing_rates as firing_rates
from qwenscope.features import rank_features as rank

Choose = Literal["top1-diff", "combine"]
RuleFeature = FeatureDelta
"""One kept feature and the discovery statistics that chose it (``qwenscope.features.FeatureDelta``)."""
MAX_K = 10
"""The report keeps 1-10 features; more is allowed but no longer "a handful"."""


@dataclass
class FeatureRule:
    """Predict positive when any kept feature fires at any token."""

    features: list[RuleFeature]
    top1: dict[str, float] = field(default_factory=dict)
    """Each hookpoint's largest single-feature Δ on the discovery data (what top1-diff compares)."""

    @property
    def hookpoints(self) -> list[str]:
        return list(dict.fromkeys(f.hookpoint for f in self.features))

    def score(self, fires: Mapping[str, sp.csr_matrix]) -> np.ndarray:
        """(n,) how many kept features fire on each text."""
        total: np.ndarray | None = None
        for hook in self.hookpoints:
            if hook not in fires:
                raise QwenscopeError(f"no features read at {hook}; the rule needs {', '.join(self.hookpoints)}")
            ids = [f.id for f in self.features if f.hookpoint == hook]
            matrix = fires[hook]
            if max(ids) >= matrix.shape[1]:
                raise QwenscopeError(
                    f"the rule keeps feature {max(ids)} at {hook} but the SAE there has "
                    f"{matrix.shape[1]} features: is this the SAE it was fit with?"
                )
            counts = np.asarray((sp.csr_matrix(matrix, dtype=bool)[:, ids] != 0).sum(axis=1)).ravel()
            total = counts if total is None else total + counts
        assert total is not None
        return total.astype(np.int64)

    def predict(self, fires: Mapping[str, sp.csr_matrix]) -> np.ndarray:
        """(n,) 1 where some kept feature fires, else 0."""
        return (self.score(fires) > 0).astype(np.int64)

    def top(self, k: int) -> FeatureRule:
        """The rule with only its first ``k`` features (they are ranked by Δ)."""
        return FeatureRule(self.features[:k], dict(self.top1))

    def as_dict(self) -> dict[str, Any]:
        return {"rule": "any", "features": [asdict(f) for f in self.features], "top1": self.top1}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureRule:
        if d.get("rule") != "any":
            raise QwenscopeError(f"unknown rule {d.get('rule')!r}; this version knows 'any'")
        return cls([RuleFeature(**f) for f in d["features"]], {str(k): float(v) for k, v in d.get("top1", {}).items()})


def check_k(k: int) -> int:
    if not 1 <= k <= 100:
        raise QwenscopeError(f"--k is how many features the rule keeps, 1-{MAX_K} as in the report; got {k}")
    return k


def fit_rule(
    fires: Mapping[str, sp.csr_matrix], labels: np.ndarray, k: int = 5, choose: Choose | str = "top1-diff"
) -> FeatureRule:
    """The rule of the top ``k`` features by Δ (see the module doc). ``choose``: top1-diff, combine, or a hookpoint."""
    check_k(k)
    if not fires:
        raise QwenscopeError("no hookpoint given; pass the pooled features of at least one")
    ranked = {hook: rank(matrix, labels, hook, max(k, 1)) for hook, matrix in fires.items()}
    top1 = {hook: r[0].delta for hook, r in ranked.items()}
    if choose == "combine":
        merged = sorted((f for r in ranked.values() for f in r), key=lambda f: (-f.delta, f.hookpoint, f.id))
        return FeatureRule(merged[:k], top1)
    if choose == "top1-diff":
        best = max(top1, key=lambda h: (top1[h], -list(top1).index(h)))
        return FeatureRule(ranked[best], top1)
    if choose not in ranked:
        raise QwenscopeError(f"hookpoint {choose!r} was not read; read {', '.join(ranked)} or choose top1-diff/combine")
    return FeatureRule(ranked[choose], top1)


def k_curve(fires: Mapping[str, sp.csr_matrix], rule: FeatureRule, ks: Sequence[int]) -> list[np.ndarray]:
    """Predictions of the rule's first k features for each k in ``ks`` (the F1-vs-K analysis)."""
    return [rule.top(k).predict(fires) for k in ks]
