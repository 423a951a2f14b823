"""The unit of relative strengths: the residual's typical distance from its mean, blind to constant offsets, cached."""

import pytest
import torch
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.splice import splice
from qwenscope.steer.strength import steering_unit

TEXTS = ["the cat sat on the mat and looked at the rain", "a dog ran in the park", "we read a book today"]


@pytest.fixture(scope="module")
def parts():
    return build_tiny("llama", num_layers=2), make_byte_tokenizer()


def test_unit_is_the_median_distance_from_the_mean_without_position_zero(parts):
    model, tokenizer = parts
    rows = [
        get_activations(model, tokenizer(t, return_tensors="pt"), ["resid_post.0"])["resid_post.0"][0, 1:]
        for t in TEXTS
    ]
    acts = torch.cat(rows)
    want = float((acts - acts.mean(0)).norm(dim=-1).median())
    assert steering_unit(model, tokenizer, "resid_post.0", TEXTS) == pytest.approx(want, rel=1e-5)


def test_a_huge_constant_dimension_does_not_change_the_unit(parts):
    model, tokenizer = parts
    plain = steering_unit(model, tokenizer, "resid_post.0", TEXTS)
    offset = torch.zeros(64)
    offset[3] = 1000.0  # like gemma3-270m's dimension 163
    with splice(model, "resid_post.0", lambda h: h + offset):
        shifted = steering_unit(model, tokenizer, "resid_post.0", TEXTS)
        raw = get_activations(model, tokenizer(TEXTS[0], return_tensors="pt"), ["resid_post.0"])["resid_post.0"]
    assert float(raw[0, 1:].norm(dim=-1).median()) > 100 * plain
    assert shifted == pytest.approx(plain, rel=1e-3)


def test_default_unit_is_measured_once(parts):
    model, tokenizer = parts
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        first = steering_unit(model, tokenizer, "resid_post.1")
        n = len(forwards)
        assert n > 0 and steering_unit(model, tokenizer, "resid_post.1") == first and len(forwards) == n
    finally:
        handle.remove()
    assert first > 0


def test_bad_texts(parts):
    model, tokenizer = parts
    with pytest.raises(QwenscopeError, match="non-empty texts"):
        steering_unit(model, tokenizer, "resid_post.0", ["fine", " "])
    with pytest.raises(QwenscopeError, match="too few tokens"):
        steering_unit(model, tokenizer, "resid_post.0", ["a"])
