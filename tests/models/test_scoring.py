"""Padding and log-likelihood (qwenscope.models.batching, qwenscope.models.scoring) against the model's own logits."""

import pytest
import torch

from qwenscope.errors import QwenscopeError
from qwenscope.models import continuation_logprobs, head_input, next_token_logprobs, pad_ids, pad_rows, token_logprobs
from tests.tiny_models import build_tiny


def test_pad_ids_right_and_left():
    ids, mask = pad_ids([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[True] * 3, [True, False, False]]
    ids, mask = pad_ids([[5, 6, 7], torch.tensor([8])], pad_id=1, left=True, mask_dtype=torch.long)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    flags = pad_rows([torch.tensor([True, False]), [True]], False, dtype=torch.bool)
    assert flags.tolist() == [[True, False], [True, False]]
    with pytest.raises(QwenscopeError, match="no rows to pad"):
        pad_ids([])


def _want(model, ids, mask, scored):
    """Per row: the sum of the full forward's log p(token t | < t) over the scored t."""
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    return torch.stack(
        [sum(logp[b, t - 1, ids[b, t]] for t in range(1, ids.shape[1]) if scored[b, t]) for b in range(len(ids))]
    )


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_continuation_logprobs_match_the_models_logits(arch):
    model = build_tiny(arch, num_layers=2)
    if arch == "gemma3":  # Gemma's forward soft-caps the logits; the head applied here must do the same
        model.config.final_logit_softcapping = 0.5
    ids, mask = pad_ids([[5, 6, 7, 8, 9], [9, 10, 11]])
    scored = torch.tensor([[False, False, True, True, True], [False, True, True, False, False]])
    got = continuation_logprobs(model, ids, mask, scored)
    # the head on the scored rows only vs on every position: other GEMM shapes, float32 rounding
    torch.testing.assert_close(got, _want(model, ids, mask, scored), atol=1e-5, rtol=1e-5)


def test_chunked_head_equals_one_pass_and_next_token_distributions_agree():
    model = build_tiny("qwen3", num_layers=2)
    ids, mask = pad_ids([list(range(3, 15)), list(range(20, 27))])
    scored = mask.clone()
    scored[:, 0] = False
    final = head_input(model, ids, mask)
    whole = token_logprobs(model, final, ids, scored)
    assert whole.shape == (int(scored.sum()),)
    # chunks of 3 rows vs one GEMM of 17: other shapes, so within float32 rounding (not promised bit for bit)
    torch.testing.assert_close(token_logprobs(model, final, ids, scored, chunk_rows=3), whole, atol=1e-6, rtol=0)
    dists = next_token_logprobs(model, ids, mask, scored)
    assert dists.shape == (int(scored.sum()), model.config.vocab_size)
    picked = dists.gather(-1, ids[scored][:, None])[:, 0]
    torch.testing.assert_close(picked, whole, atol=1e-5, rtol=0)  # head in the model's forward vs applied here


def test_padding_does_not_change_a_rows_logprob():
    model = build_tiny("qwen3", num_layers=2)
    rows = [[4, 8, 15, 16, 23, 42], [7, 9]]
    ids, mask = pad_ids(rows)
    scored = mask.clone()
    scored[:, 0] = False
    batched = continuation_logprobs(model, ids, mask, scored)
    for i, row in enumerate(rows):
        alone = continuation_logprobs(
            model, torch.tensor([row]), torch.ones(1, len(row)), scored[i : i + 1, : len(row)]
        )
        # a padded row vs alone: other attention shapes, float32 rounding
        assert batched[i].item() == pytest.approx(alone.item(), abs=1e-5)
