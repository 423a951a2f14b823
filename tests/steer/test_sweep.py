"""The steering sweep: batched greedy generations equal one-by-one generate, and the fluency cost is a true NLL."""

import math

import pytest
import torch

from qwenscope import QwenscopeError
from qwenscope.models.load import load_model
from qwenscope.sae.load import load_sae
from qwenscope.steer import generate_text
from qwenscope.steer.sweep import continuation_nll, generate_batch, prompt_batch, sweep, sweep_choices

PROMPTS = ["Tell me a story", "hi", "What is the capital of France and why?"]


@pytest.fixture(scope="module")
def loaded(folders):
    model, tokenizer = load_model(str(folders[0]))
    return model, tokenizer, load_sae(str(folders[1]))


def test_batched_generation_equals_single(loaded):
    model, tokenizer, _ = loaded
    _, outs = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for out in outs for r in out]
    singles = [generate_text(model, tokenizer, p, max_new_tokens=6) for p in PROMPTS]
    assert texts == singles


def test_continuation_nll_matches_direct_sum(loaded):
    model, tokenizer, _ = loaded
    batch = prompt_batch(tokenizer, ["Tell me a story"], chat=True)
    gen = torch.tensor([[11, 22, 33]])
    nll, n = continuation_nll(model, batch, gen, eos_ids={22})  # counts up to and including the first eos
    ids = torch.cat([batch["input_ids"], gen], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0], -1)
    p = batch["input_ids"].shape[1]
    direct = -(logp[p - 1, 11] + logp[p, 22])
    assert n == 2 and math.isclose(nll, float(direct), rel_tol=1e-5)


def test_sweep_rates_and_zero_alpha_is_plain(loaded):
    model, tokenizer, sae = loaded
    rows = sweep(model, tokenizer, PROMPTS, sae, [3], alphas=[0.0, 80.0], score=lambda t: len(t) > 0, max_new_tokens=5)
    assert [r.alpha for r in rows] == [0.0, 80.0]
    plain = [generate_text(model, tokenizer, p, max_new_tokens=5) for p in PROMPTS]
    assert rows[0].examples == plain
    assert rows[1].examples != plain
    assert all(0 <= r.rate <= 1 and r.perplexity > 1 for r in rows)


def test_bad_prompts():
    with pytest.raises(QwenscopeError, match="non-empty list"):
        prompt_batch(None, [], chat=False)


def test_sweep_choices_equals_one_sweep_per_choice(loaded):
    model, tokenizer, sae = loaded
    kwargs = {"score": lambda t: "a" in t, "max_new_tokens": 5, "n_examples": 3}
    rows = sweep_choices(model, tokenizer, PROMPTS, sae, [[3], [5, 9]], [0.0, 60.0], batch_size=4, **kwargs)
    for choice, got in zip([[3], [5, 9]], rows):
        want = sweep(model, tokenizer, PROMPTS, sae, choice, [0.0, 60.0], **kwargs)
        assert [(r.alpha, r.rate, r.examples) for r in got] == [(r.alpha, r.rate, r.examples) for r in want]
        # batched vs one at a time: other shapes, other reduction order; fp32 ~1e-6 on log-probs, exp'd
        assert [r.perplexity for r in got] == pytest.approx([r.perplexity for r in want], rel=1e-4)
    assert rows[0][1].examples != rows[1][1].examples


def test_sweep_choices_relative_strengths(loaded):
    model, tokenizer, sae = loaded
    norm = float(sae.W_dec[3].norm())
    rel = sweep_choices(
        model, tokenizer, PROMPTS, sae, [[3]], [2.0], lambda t: True, max_new_tokens=4, relative=True, unit=30.0
    )[0]
    absolute = sweep(model, tokenizer, PROMPTS, sae, [3], [2.0 * 30.0 / norm], lambda t: True, max_new_tokens=4)
    assert rel[0].examples == absolute[0].examples
