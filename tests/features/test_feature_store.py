"""FeatureStore: Parquet round trip of the statistics, contexts and lens; labels; search; the cache; atomic writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from qwenscope.errors import QwenscopeError
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import (
    CONTEXTS_FILE,
    FeatureStore,
    feature_store_dir,
    get_or_build_store,
)

META = {"model": "tiny-llama", "sae": "random", "dataset": "docs"}


def _cfg(**changes) -> StatsConfig:
    base = dict(
        seq_len=32, batch_size=4, top_n=4, window_before=5, window_after=2, hist_bins=6, lens_top=3, progress=False
    )
    return StatsConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def built(llama, byte_tokenizer, sae, docs, tmp_path_factory):
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, _cfg(n_tokens=10**6))
    folder = tmp_path_factory.mktemp("stores") / "store"
    return stats, FeatureStore.write(folder, stats, byte_tokenizer, META)


def test_round_trip(built, byte_tokenizer):
    stats, written = built
    store = FeatureStore.open(written.folder)
    assert store.d_sae == 96 and store.meta["n_tokens"] == stats.n_tokens and store.meta["model"] == "tiny-llama"
    assert store.meta["hookpoint"] == "resid_post.1" and len(store.hist_edges) == 7
    table = store.table()
    assert list(table["feature"]) == list(range(96)) and (table["sae"] == "random").all()
    assert torch.equal(torch.tensor(table["count"].to_numpy()), stats.count)
    torch.testing.assert_close(store.typical_acts(), stats.mean_act.float())
    assert (store.typical_acts()[stats.count == 0] == 0).all()
    busy = int(stats.count.argmax())
    info = store.feature(busy)
    assert info.id == busy and info.count == int(stats.count[busy]) and sum(info.hist) == info.count
    assert info.max_act == pytest.approx(float(stats.max_act[busy]))
    assert info.frequency == pytest.approx(float(stats.frequency[busy]))
    assert len(info.contexts) == 4 and info.label is None and info.label_score is None
    lens_ids = stats.lens.promoted_ids[busy].tolist()
    byte_of = {c: b for b, c in bytes_to_unicode().items()}  # a lens token alone: an incomplete byte is escaped
    raw = [bytes([byte_of[p]]) for p in byte_tokenizer.convert_ids_to_tokens(lens_ids)]
    assert [t for t, _ in info.promoted] == [b.decode("utf-8", "backslashreplace") for b in raw]
    assert info.promoted[0][1] >= info.promoted[-1][1] and info.suppressed[0][1] <= info.suppressed[-1][1]
    for rank, context in enumerate(info.contexts):
        assert context.max_act == pytest.approx(float(stats.top_acts[busy, rank]))
        ids = [i for i in stats.top_tokens[busy, rank].tolist() if i >= 0]
        assert "".join(context.tokens) == byte_tokenizer.decode(ids) and len(context.acts) == len(ids)
        assert max(context.acts) == pytest.approx(context.max_act)
    dead = [i for i in range(96) if stats.count[i] == 0]
    assert dead and store.feature(dead[0]).contexts == [] and store.feature(dead[0]).mean_act == 0
    with pytest.raises(QwenscopeError, match="out of range"):
        store.feature(96)


def test_labels_and_search(built, byte_tokenizer, tmp_path):
    stats, written = built
    store = FeatureStore.write(tmp_path / "s", stats, byte_tokenizer, META)
    store.set_labels({5: ("Capital cities", 0.9), 7: ("cities of France", 0.5), 9: ("numbers", None)})
    again = FeatureStore.open(store.folder)
    assert again.feature(5).label == "Capital cities" and again.feature(5).label_score == pytest.approx(0.9)
    assert again.feature(9).label == "numbers" and again.feature(9).label_score is None
    assert again.search_label("CITIES")[:2] == [5, 7]  # label matches rank first, then by label score
    assert again.search_label("capital cities")[0] == 5
    busy = int(stats.count.argmax())
    word = again.feature(busy).contexts[0].tokens
    hits = again.search_label("".join(word).split()[0])  # a word from its top context
    assert busy in hits
    assert again.search_label("zzzzqqq") == []
    with pytest.raises(QwenscopeError, match="empty"):
        again.search_label("  ")
    assert not list(store.folder.glob(".*tmp*"))


def test_get_or_build_caches_and_rebuilds(llama, byte_tokenizer, sae, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr("qwenscope.features.stats.iter_texts", lambda *a, **k: iter(["some text here " * 40] * 5))
    folder = feature_store_dir("tiny-llama", "/some/path/to sae", "resid_post.1")
    assert folder.is_relative_to(tmp_path / "features") and folder.name == "resid_post.1"
    assert feature_store_dir("a", "Qwen/SAE-x") != feature_store_dir("a", "Qwen_SAE-x")
    caplog.set_level("INFO")
    store = get_or_build_store(llama, byte_tokenizer, sae, "tiny-llama", "/some/path/to sae", _cfg(n_tokens=300))
    assert store.folder == folder and store.meta["config"]["n_tokens"] == 300
    mtime = (folder / CONTEXTS_FILE).stat().st_mtime_ns
    smaller = get_or_build_store(llama, byte_tokenizer, sae, "tiny-llama", "/some/path/to sae", _cfg(n_tokens=100))
    assert (folder / CONTEXTS_FILE).stat().st_mtime_ns == mtime and smaller.meta["n_tokens"] == store.meta["n_tokens"]
    assert "using the feature store" in caplog.text
    other = get_or_build_store(llama, byte_tokenizer, sae, "tiny-llama", "/some/path/to sae", _cfg(top_n=2))
    assert "other SAE weights or settings" in caplog.text
    assert len(other.feature(int(other.table()["count"].argmax())).contexts) == 2
    assert [p.name for p in folder.parent.iterdir()] == ["resid_post.1"]  # no temporary folders left


def test_killed_write_leaves_the_old_store(built, byte_tokenizer, tmp_path, monkeypatch):
    stats, _ = built
    store = FeatureStore.write(tmp_path / "s", stats, byte_tokenizer, META)
    monkeypatch.setattr(
        "qwenscope.features.store.pq.write_table", lambda table, path, **kw: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        FeatureStore.write(tmp_path / "s", stats, byte_tokenizer, {**META, "model": "other"})
    assert json.loads((store.folder / "meta.json").read_text())["model"] == "tiny-llama"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    assert isinstance(FeatureStore.open(store.folder).table(), pd.DataFrame)
    with pytest.raises(QwenscopeError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing")
