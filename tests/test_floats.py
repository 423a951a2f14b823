"""tests/floats.py: the tolerance-aware comparisons of results computed along two paths."""

import pytest
import torch
from floats import assert_topk_close, assert_topk_ids_close, greedy_margin
from tiny_models import PAD_ID, build_tiny, random_inputs

DENSE = torch.tensor([[0.0, 0.5, 0.2, 0.2 + 1e-7, 0.0], [0.3, 0.0, 0.0, 0.0, 1e-9]])


def test_topk_close_takes_near_ties_and_noise():
    assert_topk_close([[(1, 0.5), (2, 0.2)], [(0, 0.3)]], DENSE, 2)
    assert_topk_close([[(1, 0.5 + 1e-7), (3, 0.2)], [(0, 0.3), (4, 1e-9)]], DENSE, 2)  # a near-tie, a ~0 feature


@pytest.mark.parametrize(
    "got",
    [
        [[(1, 0.5), (2, 0.21)], [(0, 0.3)]],  # a value off
        [[(1, 0.5), (0, 1e-9)], [(0, 0.3)]],  # a feature that is not active
        [[(2, 0.2), (1, 0.5)], [(0, 0.3)]],  # not strongest first
        [[(1, 0.5)], [(0, 0.3)]],  # one left out that is well above 0
    ],
)
def test_topk_close_refuses_real_differences(got):
    with pytest.raises(AssertionError):
        assert_topk_close(got, DENSE, 2)


def test_topk_ids_close():
    ref = torch.tensor([[3.0, 1.0, 2.0, 2.0 + 1e-6]])
    assert_topk_ids_close(torch.tensor([[0, 2]]), ref)  # 2 and 3 tie within the tolerance
    assert_topk_ids_close(torch.tensor([[1, 2]]), ref, largest=False)
    with pytest.raises(AssertionError):
        assert_topk_ids_close(torch.tensor([[0, 1]]), ref)


def test_greedy_margin_is_the_smallest_top_two_gap():
    model = build_tiny("llama", num_layers=1)
    inputs = random_inputs(model, batch=2, seq=6)
    margin = greedy_margin(model, inputs, 3, pad_token_id=PAD_ID)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            pad_token_id=PAD_ID,
            output_scores=True,
            return_dict_in_generate=True,
        )
    top2 = out.scores[0].topk(2, dim=-1).values
    assert 0 < margin <= float((top2[:, 0] - top2[:, 1]).min())
