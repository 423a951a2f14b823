"""encode_texts on a tiny Llama: equal to a brute-force forward of each text alone for every pooling, the codes and
the mean activations; the keep rule; the cache (a hit gives the same arrays, another key misses, a damaged file is
recomputed); order-keeping batches; one-line errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from features_helpers import make_sae
from tiny_models import build_tiny

from qwenscope import QwenscopeError
from qwenscope.data.tokens import special_token_ids
from qwenscope.features import EncodeConfig, encode_texts, read_batches, tokenize_texts
from qwenscope.features import encode as encode_module

TEXTS = [
    "The cat sat.",
    "A much longer sentence about numbers: 12 + 30 = 42, and more words follow here.",
    "Hi",
    "mid</s>dle",
    "x" * 40,
    "</s>",
    "Another, medium length text.",
]
HOOKS = ["resid_post.0", "resid_post.1"]


@pytest.fixture(scope="module")
def model():
    return build_tiny("llama", num_layers=3)  # resid_post.0 and .1 are hidden_states[1] and [2] (not the last layer)


@pytest.fixture(scope="module")
def saes():
    return [make_sae(hookpoint=h, seed=i) for i, h in enumerate(HOOKS)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))


def brute(model, tokenizer, sae, layer: int, text: str, skip_first: bool = False):
    """(dense code (tokens, d_sae), raw activations (tokens, d_in), kept mask) of the text read alone."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        z = sae.encode(hidden)
    keep = ~torch.isin(ids[0], torch.tensor(special_token_ids(tokenizer)))
    if skip_first:
        keep[0] = False
    elif not keep.any():
        keep[0] = True
    return z, hidden, keep


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_every_pooling_equals_each_text_read_alone(model, byte_tokenizer, saes, pooling):
    cfg = EncodeConfig(pooling=pooling, mean_acts=True, codes=True, batch_size=3, cache=False)
    encoded = encode_texts(model, byte_tokenizer, TEXTS, saes, cfg=cfg)
    assert [e.hookpoint for e in encoded] == HOOKS
    for enc, sae, layer in zip(encoded, saes, (0, 1)):
        assert enc.pooled.shape == (len(TEXTS), sae.d_sae) and enc.pooled.dtype == np.float32
        for i, text in enumerate(TEXTS):
            z, hidden, keep = brute(model, byte_tokenizer, sae, layer, text)
            by_hand = {"max": z[keep].clamp_min(0).max(0).values, "mean": z[keep].mean(0), "last": z[-1]}[pooling]
            np.testing.assert_allclose(enc.pooled[i].toarray()[0], by_hand.numpy(), atol=1e-5)
            np.testing.assert_allclose(enc.mean_acts[i], hidden[keep].mean(0).numpy(), atol=1e-5)
            assert enc.n_tokens[i] == int(keep.sum())
            code = enc.codes[i]
            dense = torch.zeros(len(code.top_acts), sae.d_sae).scatter_(1, code.top_indices, code.top_acts)
            np.testing.assert_allclose(dense.numpy(), z[keep].numpy(), atol=1e-5)
    assert encoded[0].n_tokens[3] == len("middle") and encoded[0].n_tokens[5] == 1  # </s> left out; alone: kept


def test_the_keep_rule_can_skip_the_first_position_and_keep_special_tokens(model, byte_tokenizer, saes):
    sae = saes[0]
    first = EncodeConfig(pooling="mean", skip_first=True, cache=False)
    [enc] = encode_texts(model, byte_tokenizer, TEXTS[:5], [sae], cfg=first)
    for i, text in enumerate(TEXTS[:5]):
        z, _, keep = brute(model, byte_tokenizer, sae, 0, text, skip_first=True)
        np.testing.assert_allclose(enc.pooled[i].toarray()[0], z[keep].mean(0).numpy(), atol=1e-5)
    [every] = encode_texts(model, byte_tokenizer, ["mid</s>dle"], [sae], cfg=EncodeConfig(skip_special=False))
    assert every.n_tokens.tolist() == [len(byte_tokenizer("mid</s>dle")["input_ids"])]


def test_the_cut_and_batches_that_keep_the_order(model, byte_tokenizer, saes):
    ids = tokenize_texts(byte_tokenizer, TEXTS, max_tokens=5)
    assert [len(r) for r in ids] == [min(5, len(byte_tokenizer(t)["input_ids"])) for t in TEXTS]
    rows = [b.rows for b in read_batches(model, byte_tokenizer, ids, HOOKS[:1], batch_size=3, by_length=False)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6]]
    [cut] = encode_texts(model, byte_tokenizer, TEXTS, saes[:1], cfg=EncodeConfig(max_tokens=5, cache=False))
    [alone] = encode_texts(model, byte_tokenizer, [TEXTS[1][:5]], saes[:1], cfg=EncodeConfig(cache=False))
    np.testing.assert_allclose(cut.pooled[1].toarray(), alone.pooled.toarray(), atol=1e-6)


def test_a_cache_hit_gives_the_same_arrays_and_another_key_misses(model, byte_tokenizer, saes, monkeypatch, tmp_path):
    cfg = EncodeConfig(mean_acts=True, codes=True)
    first = encode_texts(model, byte_tokenizer, TEXTS, saes, cfg=cfg)
    assert len(list((tmp_path / "cache" / "encode").glob("*.npz"))) == 2

    def no_forward(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(encode_module, "encode_ids", no_forward)
    again = encode_texts(model, byte_tokenizer, TEXTS, saes, cfg=cfg)
    for a, b in zip(first, again):
        assert a.key == b.key and (a.pooled != b.pooled).nnz == 0
        np.testing.assert_array_equal(a.mean_acts, b.mean_acts)
        np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
        for ca, cb in zip(a.codes, b.codes):
            assert torch.equal(ca.top_acts, cb.top_acts) and torch.equal(ca.top_indices, cb.top_indices)
    misses = [
        (TEXTS[:-1], saes[:1], None, cfg),  # other texts
        (TEXTS, [make_sae(hookpoint=HOOKS[0], seed=7)], None, cfg),  # other SAE
        (TEXTS, saes[:1], [HOOKS[1]], cfg),  # other hookpoint
        (TEXTS, saes[:1], None, EncodeConfig(pooling="last", mean_acts=True, codes=True)),
        (TEXTS, saes[:1], None, EncodeConfig(max_tokens=4, mean_acts=True, codes=True)),
    ]
    for texts, some, hooks, c in misses:
        with pytest.raises(AssertionError, match="recomputed"):
            encode_texts(model, byte_tokenizer, texts, some, hooks, c)


def test_a_damaged_cache_file_is_recomputed(model, byte_tokenizer, saes, tmp_path, caplog):
    [first] = encode_texts(model, byte_tokenizer, TEXTS, saes[:1], cfg=EncodeConfig(mean_acts=True))
    [path] = (tmp_path / "cache" / "encode").glob("*.npz")
    path.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING, logger="qwenscope.features.encode"):
        [again] = encode_texts(model, byte_tokenizer, TEXTS, saes[:1], cfg=EncodeConfig(mean_acts=True))
    assert "damaged cached encoding" in caplog.text
    assert (first.pooled != again.pooled).nnz == 0
    np.testing.assert_array_equal(first.mean_acts, again.mean_acts)
    with np.load(path) as z:  # rewritten whole
        assert z["n_tokens"].tolist() == first.n_tokens.tolist()


def test_bad_input_gets_one_clear_line(model, byte_tokenizer, saes):
    wide = make_sae(hookpoint="resid_post.0")
    wide.cfg.d_in = 128
    cases = [
        (lambda: encode_texts(model, byte_tokenizer, [], saes), "^no texts to read; pass a list of at least one$"),
        (lambda: encode_texts(model, byte_tokenizer, "one text", saes), "^no texts to read"),
        (lambda: encode_texts(model, byte_tokenizer, TEXTS, []), "^no SAE given; pass at least one"),
        (lambda: encode_texts(model, byte_tokenizer, TEXTS, saes, HOOKS[:1]), "^1 hookpoints for 2 SAEs; give one"),
        (lambda: encode_texts(model, byte_tokenizer, TEXTS, [wide]), "^SAE width d_in=128 does not match"),
        (
            lambda: encode_texts(model, byte_tokenizer, TEXTS, saes[:1], ["resid_post.9"]),
            "^layer 9 is out of range .* 3 layers",
        ),
        (lambda: encode_texts(model, byte_tokenizer, ["ok", ""], saes), "^text 1 has no tokens; every text needs"),
        (lambda: EncodeConfig(pooling="sum"), "^pooling is one of last, max, mean, got 'sum'$"),  # type: ignore[arg-type]
        (lambda: EncodeConfig(max_tokens=0), "^--max-tokens must be at least 1, got 0$"),
    ]
    for call, needle in cases:
        with pytest.raises(QwenscopeError, match=needle) as err:
            call()
        assert "\n" not in str(err.value)
