"""Feature search: token features (moved from the CLI), contrastive search against a per-text dense computation,
by token against the full logit lens, by label through a store."""

from __future__ import annotations

import pytest
import torch

from qwenscope import get_activations
from qwenscope.cli import token_features as cli_token_features
from qwenscope.data import token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.features.search import by_token, contrastive, firing_profile, token_features
from qwenscope.features.stats import logit_lens

HOOK = "resid_post.1"
POSITIVE = [f"The cat number {i} sat on the mat" + "!" * (i % 5) for i in range(20)]  # > one batch of texts
NEGATIVE = ["0123456789", "x = y + 2 * z", "[1, 2, 3]"]


def _dense_profile(model, tokenizer, sae, texts):
    """Rate and mean per feature, one unpadded text at a time, with the dense encoding."""
    rows = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        acts = get_activations(model, ids, [HOOK])[HOOK][0]
        with torch.no_grad():
            rows.append(sae.encode(acts)[token_mask(ids[0], tokenizer)])
    z = torch.cat(rows)
    return (z > 0).double().mean(0), z.double().mean(0)


def test_contrastive_matches_dense_per_text(llama, byte_tokenizer, sae):
    rate_p, mean_p = _dense_profile(llama, byte_tokenizer, sae, POSITIVE)
    rate_n, mean_n = _dense_profile(llama, byte_tokenizer, sae, NEGATIVE)
    got_rate, got_mean = firing_profile(llama, byte_tokenizer, sae, HOOK, POSITIVE)
    # padded batches of 16 texts vs each text alone: the firing sets must agree (a flip is 1/n); TopK's k-th and
    # (k+1)-th values of these random inputs are far from ties, unlike the ~1e-6 the paths differ by
    torch.testing.assert_close(got_rate, rate_p)  # padded batches of 16 texts give the unpadded numbers
    # padded vs alone: other shapes, other reduction order; fp32 ~1e-6, summed over tokens
    torch.testing.assert_close(got_mean, mean_p, rtol=1e-4, atol=1e-6)
    hits = contrastive(llama, byte_tokenizer, sae, POSITIVE, NEGATIVE, top=5)
    assert [h.feature for h in hits] == (rate_p - rate_n).argsort(descending=True, stable=True)[:5].tolist()
    assert hits[0].rate_diff > 0.3 and hits[0].rate_diff == pytest.approx(hits[0].rate_pos - hits[0].rate_neg)
    assert all(a.rate_diff >= b.rate_diff for a, b in zip(hits, hits[1:]))
    by_mean = contrastive(llama, byte_tokenizer, sae, POSITIVE, NEGATIVE, top=5, by="mean")
    assert [h.feature for h in by_mean] == (mean_p - mean_n).argsort(descending=True)[:5].tolist()
    assert by_mean[0].mean_pos == pytest.approx(float(mean_p[by_mean[0].feature]), rel=1e-4)


def test_contrastive_errors(llama, byte_tokenizer, sae):
    with pytest.raises(QwenscopeError, match="negative texts are empty"):
        contrastive(llama, byte_tokenizer, sae, POSITIVE, [])
    with pytest.raises(QwenscopeError, match="positive texts is empty"):
        contrastive(llama, byte_tokenizer, sae, ["ok text", "  "], NEGATIVE)
    with pytest.raises(QwenscopeError, match="at least two tokens"):
        contrastive(llama, byte_tokenizer, sae, ["a", "b"], NEGATIVE)
    with pytest.raises(QwenscopeError, match="'rate' or 'mean'"):
        contrastive(llama, byte_tokenizer, sae, POSITIVE, NEGATIVE, by="max")  # type: ignore[arg-type]


def test_by_token_is_the_logit_lens_column(llama, byte_tokenizer, sae):
    token_id = byte_tokenizer.encode("e", add_special_tokens=False)[0]
    hits = by_token(llama, byte_tokenizer, sae, "e", top=4)
    with torch.no_grad():
        column = llama.lm_head(llama.model.norm(sae.W_dec))[:, token_id]
    assert [f for f, _ in hits] == column.topk(4).indices.tolist()
    assert hits[0][1] == pytest.approx(float(column.max()), rel=1e-4)
    lens = logit_lens(llama, sae, top=1)
    best = hits[0][0]
    assert float(lens.promoted_values[best, 0]) >= hits[0][1] - 1e-4  # a column entry never beats its row's max
    with pytest.raises(QwenscopeError, match=r"not one token: it tokenises to \['a', 'b'\]"):
        by_token(llama, byte_tokenizer, sae, "ab")


def test_token_features_moved_with_the_same_output(llama, byte_tokenizer, sae):
    rows = token_features(llama, byte_tokenizer, sae, HOOK, "Hello there", 3)
    assert rows == cli_token_features(llama, byte_tokenizer, sae, HOOK, "Hello there", 3)
    assert [r["token"] for r in rows] == list("Hello there") and rows[1]["pos"] == 1
    assert all(len(r["features"]) <= 3 and all(f["act"] > 0 for f in r["features"]) for r in rows)
