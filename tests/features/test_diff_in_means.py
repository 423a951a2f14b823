"""Difference in means against the residual of each text read alone."""

import pytest
import torch
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError, get_activations
from qwenscope.features import diff_in_means, mean_activation


def test_diff_in_means_is_the_difference_of_token_means():
    model, tokenizer = build_tiny("llama", num_layers=2), make_byte_tokenizer()
    pos, neg = ["the sea is calm", "waves"], ["a market", "bread rises in the oven"]

    def token_mean(texts):
        rows = []
        for t in texts:
            ids = torch.tensor([tokenizer(t)["input_ids"]])
            rows.append(get_activations(model, ids, ["resid_post.1"])["resid_post.1"][0, 1:])  # position 0 left out
        return torch.cat(rows).double().mean(0)

    # batched and padded vs alone: other shapes, float32 rounding
    torch.testing.assert_close(
        mean_activation(model, tokenizer, "resid_post.1", pos), token_mean(pos), atol=1e-5, rtol=1e-5
    )
    want = (token_mean(pos) - token_mean(neg)).float()
    torch.testing.assert_close(diff_in_means(model, tokenizer, pos, neg, "resid_post.1"), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(QwenscopeError, match="the negative texts must be a non-empty list"):
        diff_in_means(model, tokenizer, pos, [], "resid_post.1")
