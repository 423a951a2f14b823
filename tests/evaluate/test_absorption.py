"""First-letter absorption against a hand-built case: a tiny Qwen3 whose word embeddings carry their first letter,
an SAE with one latent per letter, and one more specific latent that takes over some words of "c"."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.evaluate.absorption import absorption, first_letter_words, word_activations

LETTERS = "cmst"
HOOK = "resid_post.1"


@pytest.fixture(scope="module")
def planted():
    model, tokenizer = tiny_qwen3()
    model.eval()
    vocab = first_letter_words(tokenizer, n_words=100_000)
    words = [w for letter in LETTERS for w in [p for p in vocab if p[1][0] == letter][:40]]
    g = torch.Generator().manual_seed(0)
    letter_vec = {c: 6 * torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) for c in LETTERS}
    specific = 8 * torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    subset = {w for _, w in words if w[0] == "c"}
    subset = set(sorted(subset)[::3])  # every third "c" word also carries the specific direction
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for token, word in words:
            emb[token] += letter_vec[word[0]] + (specific if word in subset else 0)
    return model, tokenizer, words, subset, specific


def test_absorbed_words_are_the_planted_ones(planted):
    model, tokenizer, words, subset, specific = planted
    x = word_activations(model, tokenizer, [t for t, _ in words], [HOOK])[HOOK]
    first = np.array([w[0] for _, w in words])
    sae = Sae(SaeConfig(d_in=64, d_sae=6, k=1, hookpoint=HOOK))
    in_subset = torch.tensor([w in subset for _, w in words])
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.zero_()
        for j, letter in enumerate(LETTERS):  # latent j: letter j, firing above the midpoint of the two classes
            on = torch.tensor(first == letter)
            d = torch.nn.functional.normalize(x[on].mean(0) - x[~on].mean(0), dim=0)
            sae.W_enc[:, j], sae.W_dec[j] = d, d
            sae.b_enc[j] = -float((x[on] @ d).mean() + (x[~on] @ d).mean()) / 2
        d = torch.nn.functional.normalize(x[in_subset].mean(0) - x[~in_subset].mean(0), dim=0)
        sae.W_enc[:, 4] = 3 * d  # the specific latent: far larger on its words, so TopK(1) keeps it, not "c"
        sae.b_enc[4] = -1.5 * float((x[in_subset] @ d).mean() + (x[~in_subset] @ d).mean())
        sae.W_dec[4] = sae.W_dec[0]  # ... and it writes the "c" direction: absorption
        sae.W_enc[:, 5], sae.b_enc[5] = 0, -1.0  # a dead latent
    out = absorption(model, tokenizer, {HOOK: sae}, words=words, min_words=5)
    res = out["hookpoints"][HOOK]
    assert res["probe_accuracy"] > 0.95 and out["exploratory"] is True
    c = res["letters"]["c"]
    assert c["main_latent"] == 0
    test_c = {w for w in c["absorbed_words"]}
    assert test_c and test_c <= subset  # every absorbed word is a planted one
    assert c["absorption_rate"] == pytest.approx(c["false_negative_rate"]) and c["absorption_rate"] > 0.15
    for letter in "mst":  # no absorption elsewhere
        assert res["letters"][letter]["absorption_rate"] == 0.0
    assert "random" in res and res["random"]["summary"]["letters"] == res["summary"]["letters"]
    # the same false negatives with a decoder row that does not write "c": missed, but not absorbed
    with torch.no_grad():
        sae.W_dec[4] = -sae.W_dec[0]
    again = absorption(model, tokenizer, {HOOK: sae}, words=words, min_words=5, baseline=False)["hookpoints"][HOOK]
    assert again["letters"]["c"]["false_negative_rate"] == c["false_negative_rate"]
    assert again["letters"]["c"]["absorption_rate"] == 0.0


def test_a_tokenizer_without_words_is_one_line(planted):
    from tiny_models import make_byte_tokenizer

    from qwenscope import QwenscopeError

    with pytest.raises(QwenscopeError, match="no tokens of a space and lowercase letters"):
        first_letter_words(make_byte_tokenizer())
