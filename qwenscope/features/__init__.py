"""Feature analysis: statistics in one streaming pass, the logit lens, a Parquet feature store, search and labels.

stats = compute_feature_stats(model, tokenizer, sae, "mix:default", StatsConfig(n_tokens=10**6))
many = compute_feature_stats_many(model, tokenizer, [sae_a, sae_b], None, StatsConfig())   # one forward for both
store = get_or_build_store(model, tokenizer, sae, "smollm2-135m", "smollm2-135m", StatsConfig())  # shipped: seconds
store.feature(123)                                      # FeatureInfo: frequency, acts, histogram, lens, contexts
store.frequencies()                                     # densities; always-on ones: features.density
contrastive(model, tokenizer, sae, ["I love it"], ["I hate it"])   # features that tell the two sets apart

The store modules import pandas and pyarrow; they load on first use of their names here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from qwenscope.features.search import ContrastiveHit, by_label, by_token, contrastive, token_features
from qwenscope.features.stats import (
    FeatureStats,
    LogitLens,
    StatsConfig,
    compute_feature_stats,
    compute_feature_stats_many,
    logit_lens,
)

_LAZY = {
    "Context": "store",
    "FeatureInfo": "store",
    "FeatureStore": "store",
    "feature_store_dir": "store",
    "get_or_build_store": "store",
    "get_or_build_stores": "store",
    "find_store": "store",
    "HFLabeller": "labels",
    "OpenAILabeller": "labels",
    "detection_score": "labels",
    "fallback_label": "labels",
    "label_feature": "labels",
    "label_store": "labels",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"qwenscope.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qwenscope.features' has no attribute {name!r}")


__all__ = [
    "Context",
    "ContrastiveHit",
    "FeatureInfo",
    "FeatureStats",
    "FeatureStore",
    "HFLabeller",
    "LogitLens",
    "OpenAILabeller",
    "StatsConfig",
    "by_label",
    "by_token",
    "compute_feature_stats",
    "compute_feature_stats_many",
    "contrastive",
    "detection_score",
    "fallback_label",
    "feature_store_dir",
    "find_store",
    "get_or_build_store",
    "get_or_build_stores",
    "label_feature",
    "label_store",
    "logit_lens",
    "token_features",
]
