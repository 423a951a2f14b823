"""Sample feature sets on a tiny Llama: equal to a plain per-item computation, batched or not; one early-stopped pass
for several SAEs; the density filter; the sparse cache; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_HIDDEN

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.benchmarks.data import Benchmark, Item
from qwenscope.apps.benchmarks.features import FeatureSetConfig, SaeSpec, feature_sets
from qwenscope.features import encode

TEXTS = [
    "The cat sat.",
    "A much longer sentence about numbers: 12 + 30 = 42, and more words follow here.",
    "Hi",
    "Question: what is two plus two?\nAnswer:",
    "x" * 40,
    "Short one",
    "Another, medium length text.",
    "Z</s>",
]


def make_sae(hookpoint: str, seed: int = 0, d_sae: int = 96, k: int = 6) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.2, 0.2)  # some of the k slots stay at 0: F(x) sizes vary
    return sae


def bench(texts=TEXTS) -> Benchmark:
    return Benchmark("toy", [Item(f"toy/{i}", t, None, {}) for i, t in enumerate(texts)], "test", "{text}")


def reference(model, tokenizer, sae: Sae, layer: int, text: str, pooling: str) -> set[int]:
    """F(x) the plain way: a full forward of the item alone, hidden_states[layer + 1] = resid_post.layer; max-pooling
    over its tokens but the special ones."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        z = sae.encode(hidden)
    ordinary = ~torch.isin(ids[0], torch.tensor(tokenizer.all_special_ids))
    fired = z[-1] > 0 if pooling == "last" else (z[ordinary] > 0).any(0)
    return set(fired.nonzero().flatten().tolist())


@pytest.mark.parametrize("pooling", ["last", "max"])
def test_batched_feature_sets_equal_item_by_item_and_a_plain_forward(model, tokenizer, pooling):
    sae = make_sae("resid_post.1")
    cfg = dict(pooling=pooling, max_density=1.0, cache=False)
    batched = feature_sets(model, tokenizer, bench(), [SaeSpec(sae, "toy-sae")], FeatureSetConfig(**cfg, batch_size=4))
    [m] = [fs.matrix for fs in batched]
    assert m.dtype == bool and m.shape == (len(TEXTS), 96) and batched[0].ids == [f"toy/{i}" for i in range(8)]
    assert tokenizer(TEXTS[-1])["input_ids"][-1] == tokenizer.eos_token_id  # the last item ends in a special token
    single = feature_sets(model, tokenizer, bench(), [SaeSpec(sae, "toy-sae")], FeatureSetConfig(**cfg, batch_size=1))
    assert (m != single[0].matrix).nnz == 0  # exactly the same sets, padded in batches of 4 or not at all
    for i, text in enumerate(TEXTS):
        assert set(m[i].indices.tolist()) == reference(model, tokenizer, sae, 1, text, pooling)
    if pooling == "max":  # max-pooling leaves out special tokens, and that shows on the last item
        ids = tokenizer(TEXTS[-1], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            z = sae.encode(model(input_ids=ids, output_hidden_states=True).hidden_states[2][0])
        assert set(m[len(TEXTS) - 1].indices.tolist()) != set((z > 0).any(0).nonzero().flatten().tolist())
    sizes = np.asarray(m.sum(1)).ravel()
    assert sizes.min() >= 1 and (sizes <= 6).all() if pooling == "last" else sizes.max() > 6


def test_one_early_stopped_pass_reads_several_hookpoints(model, tokenizer):
    saes = [
        SaeSpec(make_sae("resid_post.0", 1), "a"),
        SaeSpec(make_sae("resid_post.2", 2), "b"),
        SaeSpec(make_sae("resid_post.2", 3), "c"),
    ]
    calls = {"layer0": 0, "layer3": 0, "lm_head": 0}

    def counter(name: str):
        return lambda *args: calls.__setitem__(name, calls[name] + 1)

    modules = {"layer0": model.model.layers[0], "layer3": model.model.layers[3], "lm_head": model.lm_head}
    handles = [module.register_forward_hook(counter(name)) for name, module in modules.items()]
    try:
        together = feature_sets(model, tokenizer, bench(), saes, FeatureSetConfig(max_density=1.0, batch_size=3))
    finally:
        for h in handles:
            h.remove()
    assert calls == {"layer0": 3, "layer3": 0, "lm_head": 0}  # 8 items in 3 batches, one forward each, stopped early
    assert [fs.hookpoint for fs in together] == ["resid_post.0", "resid_post.2", "resid_post.2"]
    for spec, fs in zip(saes, together):
        [alone] = feature_sets(model, tokenizer, bench(), [spec], FeatureSetConfig(max_density=1.0, cache=False))
        assert (alone.matrix != fs.matrix).nnz == 0


def test_density_filter_drops_the_dense_features_of_the_store(model, tokenizer, tmp_path):
    from qwenscope.features.density import MAX_DENSITY, dense_features
    from qwenscope.features.stats import StatsConfig
    from qwenscope.features.store import get_or_build_store
    from qwenscope.models.load import model_name

    sae = make_sae("resid_post.1", 4)
    with torch.no_grad():
        sae.b_enc[5] = 50.0  # fires on every token
    spec = SaeSpec(sae, str(tmp_path / "my-sae"))
    with pytest.raises(
        QwenscopeError, match=r"no feature store for the SAE .*my-sae at resid_post.1 .*--max-density 1"
    ):
        feature_sets(model, tokenizer, bench(), [spec])
    (tmp_path / "docs.txt").write_text("\n\n".join(f"Line {i}: the cat sat on mat {i % 7}." for i in range(100)))
    stats = StatsConfig(dataset=str(tmp_path / "docs.txt"), split="all", n_tokens=400, seq_len=32, progress=False)
    store = get_or_build_store(model, tokenizer, sae, model_name(model), spec.sae_id, stats)
    dense = dense_features(store, MAX_DENSITY)
    assert 5 in dense
    [kept] = feature_sets(model, tokenizer, bench(), [spec])  # default: MAX_DENSITY
    [every] = feature_sets(model, tokenizer, bench(), [spec], FeatureSetConfig(max_density=1.0))
    assert every.matrix[:, 5].toarray().all() and kept.matrix[:, list(dense)].nnz == 0
    assert kept.meta["dropped"][0] == 5 and sorted(kept.meta["dropped"]) == sorted(dense)
    left = every.matrix.toarray()
    left[:, list(dense)] = False
    assert (kept.matrix.toarray() == left).all() and every.meta["dropped"] == []
    densities = np.zeros(96)
    densities[[5, 9]] = [0.9, 0.3]
    [given] = feature_sets(
        model, tokenizer, bench(), [SaeSpec(sae, "x", densities=densities)], FeatureSetConfig(max_density=0.5)
    )
    assert given.meta["dropped"] == [5] and given.matrix[:, 9].nnz == every.matrix[:, 9].nnz


def test_second_call_loads_the_cache(model, tokenizer, monkeypatch, tmp_path):
    spec = SaeSpec(make_sae("resid_post.1"), "toy-sae")
    cfg = FeatureSetConfig(max_density=1.0)
    [first] = feature_sets(model, tokenizer, bench(), [spec], cfg)
    assert list((tmp_path / "cache" / "encode").glob("*.npz"))  # the core's cache (qwenscope.features.encode)

    def no_forward(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(encode, "encode_ids", no_forward)
    [again] = feature_sets(model, tokenizer, bench(), [spec], cfg)
    assert (again.matrix != first.matrix).nnz == 0 and again.meta["cache_key"] == first.meta["cache_key"]
    with pytest.raises(AssertionError, match="recomputed"):  # other pooling, other texts, other SAE: other keys
        feature_sets(model, tokenizer, bench(), [spec], FeatureSetConfig(max_density=1.0, pooling="max"))
    with pytest.raises(AssertionError, match="recomputed"):
        feature_sets(model, tokenizer, bench(TEXTS[:-1]), [spec], cfg)
    with pytest.raises(AssertionError, match="recomputed"):
        feature_sets(model, tokenizer, bench(), [SaeSpec(make_sae("resid_post.1", 9), "toy-sae")], cfg)


def test_bad_input_gets_one_clear_line(model, tokenizer):
    wide = Sae(SaeConfig(d_in=128, d_sae=32, k=4, hookpoint="resid_post.1"))
    with pytest.raises(QwenscopeError, match=r"^SAE width d_in=128 does not match LlamaForCausalLM's hidden size 64"):
        feature_sets(model, tokenizer, bench(), [SaeSpec(wide, "wide")], FeatureSetConfig(max_density=1.0))
    with pytest.raises(QwenscopeError, match="--pooling is last or max"):
        FeatureSetConfig(pooling="mean")  # type: ignore[arg-type]
    with pytest.raises(QwenscopeError, match=r"--max-density is a share of tokens in \(0, 1\]"):
        FeatureSetConfig(max_density=0)
    with pytest.raises(QwenscopeError, match="no SAE given"):
        feature_sets(model, tokenizer, bench(), [])
