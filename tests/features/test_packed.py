"""Packed feature statistics: a bit-exact round trip, trimming, shipping them beside an SAE folder (used instead of a
pass, only for the same weights and settings), ``qwenscope stats --pack`` over several hookpoints in one pass."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from features_helpers import make_sae

from qwenscope import Sae
from qwenscope.cli import main
from qwenscope.errors import QwenscopeError
from qwenscope.features.packed import (
    STATS_FILE,
    load_stats,
    read_meta,
    sae_fingerprint,
    save_stats,
    stats_file_for,
    trim,
)
from qwenscope.features.stats import StatsConfig, compute_feature_stats, compute_feature_stats_many
from qwenscope.features.store import find_store, get_or_build_store, get_or_build_stores

TENSORS = ("count", "act_sum", "max_act", "hist", "hist_edges", "top_acts", "top_tokens", "top_token_acts")


def _cfg(**changes) -> StatsConfig:
    base = dict(
        n_tokens=600,
        seq_len=32,
        batch_size=4,
        top_n=5,
        window_before=6,
        window_after=2,
        hist_bins=8,
        lens_top=3,
        progress=False,
    )
    return StatsConfig(**{**base, **changes})


def _same(a, b) -> None:
    assert a.hookpoint == b.hookpoint and a.n_tokens == b.n_tokens and a.window_before == b.window_before
    for name in TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for x, y in zip(a.lens, b.lens):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=0, check_dtype=False)  # logits: float16 on disk


@pytest.fixture(scope="module")
def stats(llama, byte_tokenizer, sae, docs):
    return compute_feature_stats(llama, byte_tokenizer, sae, docs, _cfg())


def test_round_trip_is_exact_and_small(stats, sae, tmp_path):
    path = save_stats(tmp_path / "s.parquet", stats, {"sae_fingerprint": sae_fingerprint(sae), "dataset": "docs"})
    back, meta = load_stats(path)
    _same(back, stats)
    assert meta["sae_fingerprint"] == sae_fingerprint(sae) and meta["dataset"] == "docs" and meta["d_sae"] == 96
    assert read_meta(path) == meta and not list(tmp_path.glob(".*tmp*"))
    raw = sum(getattr(stats, n).numel() * getattr(stats, n).element_size() for n in TENSORS)
    assert path.stat().st_size < raw / 3  # zstd: mostly-zero activations and repeated ids
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(QwenscopeError, match="not a qwenscope feature-statistics file"):
        load_stats(tmp_path / "other.parquet")


def test_trim_equals_a_pass_with_fewer_and_shorter_contexts(stats, llama, byte_tokenizer, sae, docs):
    small = compute_feature_stats(llama, byte_tokenizer, sae, docs, _cfg(top_n=3, window_before=4, window_after=1))
    cut = trim(stats, top_n=3, window_before=4, window_after=1)
    differ = (cut.top_tokens != small.top_tokens).any(-1)  # ties: equal prefixes give equal activations (causal),
    assert differ.float().mean() < 0.05  # so which of them was kept can differ in the tokens after the top token
    assert torch.equal(cut.top_tokens[differ][:, :5], small.top_tokens[differ][:, :5])
    # trim vs a smaller pass: the same forwards of the same batches, same kernels, same shapes: bit-identical
    assert torch.equal(cut.top_token_acts[~differ], small.top_token_acts[~differ])
    cut.top_tokens, cut.top_token_acts = small.top_tokens, small.top_token_acts
    _same(cut, small)
    assert trim(stats, 99, 99, 99).top_tokens.shape == stats.top_tokens.shape  # never more than there is


def test_fingerprint_follows_the_weights(sae, tmp_path):
    same = make_sae()
    assert sae_fingerprint(same) == sae_fingerprint(sae)
    same.half().save(tmp_path / "fp16")  # shipped as float16: the same SAE for its statistics
    assert sae_fingerprint(Sae.load(tmp_path / "fp16")) == sae_fingerprint(sae)
    with torch.no_grad():
        same.W_enc[3, 5] += 0.01
    assert sae_fingerprint(same) != sae_fingerprint(sae)


def test_shipped_statistics_are_used_for_the_same_weights_only(llama, byte_tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("qwenscope.features.stats.iter_texts", lambda *a, **k: iter(["some text here " * 40] * 9))
    sae = make_sae()
    sae.save(tmp_path / "sae")
    source = str(tmp_path / "sae")
    assert stats_file_for(source, "resid_post.1") == tmp_path / "sae" / STATS_FILE
    assert find_store(llama, byte_tokenizer, sae, "tiny", source) is None  # neither cached nor shipped: no pass
    packed = get_or_build_stores(llama, byte_tokenizer, [sae], "tiny", [source], _cfg(), pack=True)[0]
    assert (tmp_path / "sae" / STATS_FILE).is_file()

    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "fresh"))  # a new user: nothing cached
    monkeypatch.setattr(
        "qwenscope.features.store.compute_feature_stats_many",
        lambda *a, **k: pytest.fail("a pass ran though the statistics ship with the SAE"),
    )
    caplog.set_level("INFO")
    shipped = get_or_build_store(llama, byte_tokenizer, sae, "tiny", source, _cfg(n_tokens=100))
    assert "decoding the feature statistics shipped" in caplog.text and shipped.meta["shipped"]
    assert shipped.folder.is_relative_to(tmp_path / "fresh")
    assert (shipped.frequencies() == packed.frequencies()).all()
    assert [c.tokens for c in shipped.contexts(7)] == [c.tokens for c in packed.contexts(7)]
    assert find_store(llama, byte_tokenizer, sae, "tiny", source).folder == shipped.folder

    retrained = make_sae(seed=5)  # the SAE files were replaced: the shipped statistics no longer apply
    monkeypatch.undo()
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setattr("qwenscope.features.stats.iter_texts", lambda *a, **k: iter(["some text here " * 40] * 9))
    assert find_store(llama, byte_tokenizer, retrained, "tiny", source) is None
    rebuilt = get_or_build_store(llama, byte_tokenizer, retrained, "tiny", source, _cfg(n_tokens=100))
    assert "belong to other SAE weights or settings" in caplog.text
    assert rebuilt.meta["sae_fingerprint"] == sae_fingerprint(retrained) and "shipped" not in rebuilt.meta
    other_settings = get_or_build_store(llama, byte_tokenizer, sae, "tiny", source, _cfg(top_n=2))
    assert "shipped" not in other_settings.meta  # the shipped ones hold 5 contexts per feature, not 2


def test_pack_needs_a_local_sae(llama, byte_tokenizer, sae):
    with pytest.raises(QwenscopeError, match="cannot pack statistics beside Qwen/some-sae"):
        get_or_build_stores(llama, byte_tokenizer, [sae], "tiny", ["Qwen/some-sae"], _cfg(), pack=True)


def test_stats_command_packs_several_hookpoints_in_one_pass(tmp_path, monkeypatch, capsys):
    """``qwenscope stats --hookpoint a,b --pack`` on a saved tiny Llama and an SAE folder per hookpoint."""
    from tiny_models import make_byte_tokenizer, tiny_config
    from transformers import LlamaForCausalLM

    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config("llama", num_layers=2)).save_pretrained(tmp_path / "model")
    make_byte_tokenizer().save_pretrained(tmp_path / "model")
    for hook, seed in (("resid_post.0", 1), ("resid_post.1", 2)):
        make_sae(hookpoint=hook, seed=seed).save(tmp_path / "saes" / hook)
    (tmp_path / "docs.txt").write_text("\n\n".join(f"line {i}: the cat sat on mat {i % 7} " * 3 for i in range(80)))
    calls = []
    real = compute_feature_stats_many
    monkeypatch.setattr(
        "qwenscope.features.store.compute_feature_stats_many", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    )
    args = [
        "stats",
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(tmp_path / "saes"),
        "--hookpoint",
        "resid_post.0,resid_post.1",
        "--dataset",
        str(tmp_path / "docs.txt"),
        "--split",
        "all",
        "--n-tokens",
        "500",
        "--seq-len",
        "32",
        "--top-n",
        "3",
        "--lens-top",
        "2",
        "--pack",
        "--show",
        "3",
    ]
    assert main(args) == 0
    assert calls == [2]  # one pass for both SAEs
    out = capsys.readouterr().out
    assert out.count("feature store  ") == 2 and "density" in out and "always-on" in out
    for hook in ("resid_post.0", "resid_post.1"):
        meta = read_meta(tmp_path / "saes" / hook / STATS_FILE)
        assert meta["hookpoint"] == hook and meta["n_tokens"] >= 500 and meta["top_n"] == 3
        assert meta["config"]["dataset"] == str(tmp_path / "docs.txt") and meta["config"]["lens_top"] == 2
