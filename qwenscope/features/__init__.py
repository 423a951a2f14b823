"""Feature analysis: statistics in one streaming pass, the logit lens, a Parquet feature store, search and labels.

stats = compute_feature_stats(model, tokenizer, sae, "mix:default", StatsConfig(n_tokens=10**6))
many = compute_feature_stats_many(model, tokenizer, [sae_a, sae_b], None, StatsConfig())   # one forward for both
store = get_or_build_store(model, tokenizer, sae, "smollm2-135m", "smollm2-135m", StatsConfig())  # shipped: seconds
store.feature(123)                                      # FeatureInfo: frequency, acts, histogram, lens, contexts
store.frequencies()                                     # densities; always-on ones: features.density
contrastive(model, tokenizer, sae, ["I love it"], ["I hate it"])   # features that tell the two sets apart
[enc] = encode_texts(model, tokenizer, texts, [sae])    # each text's max-pooled code, one early-stopped pass, cached
rank_features(enc.fires, labels, sae.cfg.hookpoint, k=5)   # the features of largest P(fires|1) - P(fires|0)

The store modules import pandas and pyarrow; they load on first use of their names here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from qwenscope.features.delta import FeatureDelta, check_labels, firing_rates, rank_features
from qwenscope.features.density import MAX_DENSITY, check_max_density, dense_features
from qwenscope.features.directions import diff_in_means, mean_activation
from qwenscope.features.encode import (
    MAX_TOKENS,
    EncodeConfig,
    EncodedTexts,
    TextBatch,
    encode_texts,
    read_batches,
    tokenize_texts,
)
from qwenscope.features.search import ContrastiveHit, by_label, by_token, contrastive, token_features
from qwenscope.features.stats import (
    FeatureStats,
    LogitLens,
    StatsConfig,
    compute_feature_stats,
    compute_feature_stats_many,
    logit_lens,
)
from qwenscope.features.text import token_text

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
    "Labeller": "labels",
    "context_text": "labels",
    "sae_fingerprint": "packed",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"qwenscope.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qwenscope.features' has no attribute {name!r}")


__all__ = [
    "MAX_DENSITY",
    "MAX_TOKENS",
    "Context",
    "ContrastiveHit",
    "EncodeConfig",
    "EncodedTexts",
    "FeatureDelta",
    "FeatureInfo",
    "FeatureStats",
    "FeatureStore",
    "HFLabeller",
    "Labeller",
    "LogitLens",
    "OpenAILabeller",
    "StatsConfig",
    "TextBatch",
    "by_label",
    "by_token",
    "check_labels",
    "check_max_density",
    "compute_feature_stats",
    "compute_feature_stats_many",
    "context_text",
    "contrastive",
    "dense_features",
    "detection_score",
    "diff_in_means",
    "encode_texts",
    "fallback_label",
    "feature_store_dir",
    "find_store",
    "firing_rates",
    "get_or_build_store",
    "get_or_build_stores",
    "label_feature",
    "label_store",
    "logit_lens",
    "mean_activation",
    "rank_features",
    "read_batches",
    "sae_fingerprint",
    "token_features",
    "token_text",
    "tokenize_texts",
]
