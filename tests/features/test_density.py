"""Densities as people read them, and which features count as always-on."""

from __future__ import annotations

import pytest

from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density, dense_features, density_text, drop_dense
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import FeatureStore


@pytest.fixture(scope="module")
def built_store(llama, byte_tokenizer, sae, docs, tmp_path_factory) -> FeatureStore:
    cfg = StatsConfig(n_tokens=1000, seq_len=32, top_n=2, window_before=2, window_after=1, lens_top=0, progress=False)
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, cfg)
    return FeatureStore.write(tmp_path_factory.mktemp("store") / "s", stats, byte_tokenizer, {"model": "tiny"})


def test_density_text_keeps_two_significant_digits():
    shown = [density_text(p) for p in (0.93, 0.123, 0.05, 0.0123, 0.00123, 0.0000456, 1e-6, 0.0, None)]
    assert shown == ["93%", "12%", "5.0%", "1.2%", "0.12%", "0.0046%", "0.0001%", "never", "?"]


def test_dense_features_and_drop_dense(built_store: FeatureStore):
    frequency = built_store.frequencies()
    dense = dense_features(built_store, MAX_DENSITY)
    assert dense and all(frequency[f] > MAX_DENSITY and p == frequency[f] for f, p in dense.items())
    assert all(f in dense for f in range(built_store.d_sae) if frequency[f] > MAX_DENSITY)
    ids = [int(i) for i in frequency.argsort()[::-1]]  # densest first
    kept, left = drop_dense(ids, built_store, MAX_DENSITY)
    assert left == [i for i in ids if i in dense] and kept == [i for i in ids if i not in dense]  # order kept
    assert drop_dense(ids, None, MAX_DENSITY) == (ids, [])  # no store: nothing is known, nothing is dropped
    assert dense_features(built_store, 1.0) == {}


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_max_density_must_be_a_share(bad):
    with pytest.raises(QwenscopeError, match="--max-density is a share of tokens"):
        check_max_density(bad)
