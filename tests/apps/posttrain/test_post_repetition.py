"""Repeat-ratio metrics on hand-made token lists; repetition-feature ranking against a brute-force loop; the check that
steering a feature up raises the repeat ratio."""

import pytest
import torch
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.posttrain.repetition import (
    Generation,
    LoopRule,
    first_last_positions,
    generate_completions,
    loop_period,
    looping_generations,
    rank_repetition_features,
    repeat_ratio,
    repeat_stats,
    steering_check,
    strip_completion,
)
from qwenscope.models.capture import get_activations

pytestmark = pytest.mark.usefixtures("one_thread")


def test_repeat_ratio_counts_ngrams_that_repeat_an_earlier_one():
    assert repeat_ratio([1, 2, 3, 4, 5, 6], n=2) == 0.0
    assert repeat_ratio([7] * 6, n=2) == pytest.approx(4 / 5)  # 5 bigrams, 1 distinct
    assert repeat_ratio([1, 2, 1, 2, 1], n=2) == pytest.approx(1 - 2 / 4)  # (1,2) (2,1) (1,2) (2,1)
    assert repeat_ratio([5, 6, 7] * 4, n=4) == pytest.approx(1 - 3 / 9)
    assert repeat_ratio([1, 2, 3], n=4) == 0.0  # shorter than n
    assert repeat_ratio([], n=1) == 0.0
    with pytest.raises(QwenscopeError, match="at least 1"):
        repeat_ratio([1], n=0)


def test_a_generation_loops_when_its_tail_is_one_cycle_repeated():
    rule = LoopRule(repeats=3, min_span=6, max_period=4)
    assert loop_period([9, 8, 1, 2, 3, 1, 2, 3, 1, 2, 3], rule) == 3
    assert loop_period([1, 2, 3, 1, 2, 3, 1, 2, 3, 4], rule) == 0  # the cycle is broken at the end
    assert loop_period([1, 2, 3, 1, 2, 3], rule) == 0  # only two whole repetitions
    assert loop_period([4, 5, 5, 5, 5, 5], rule) == 0  # period 1 but shorter than min_span
    assert loop_period([4, 5, 5, 5, 5, 5, 5], rule) == 1
    assert loop_period([1, 2, 3, 4, 5, 1, 2, 3, 4, 5] * 2, rule) == 0  # period 5 > max_period
    assert loop_period([7, 7], LoopRule(repeats=2, min_span=2)) == 1
    assert loop_period([1, 2] * 6) == 2  # defaults: 3 repeats over >= 12 tokens


def test_repeat_stats_average_over_generations():
    stats = repeat_stats([[1, 2] * 6, [1, 2, 3, 4, 5, 6]], n=2)
    assert stats.n == 2
    assert stats.loop_share == 0.5
    assert stats.repeat_ratio == pytest.approx((1 - 2 / 11 + 0.0) / 2)
    assert repeat_stats([]).n == 0
    assert strip_completion([5, 6, 2, 7, 0], [2, 0]) == [5, 6]
    with pytest.raises(QwenscopeError, match="repeats >= 2"):
        LoopRule(repeats=1)


def test_first_and_last_positions_of_repeated_tokens():
    first, last = first_last_positions(torch.tensor([5, 3, 5, 9, 3, 5]))
    assert first.tolist() == [1, 0] and last.tolist() == [4, 5]  # ids 3 and 5, in id order; 9 occurs once


@pytest.fixture(scope="module")
def tiny():
    model = build_tiny("llama", num_layers=2, seed=3)
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=64, d_sae=48, k=48, activation="topk", hookpoint="resid_post.0"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.5)
    return model, make_byte_tokenizer(), sae.requires_grad_(False)


def test_ranking_equals_a_brute_force_loop(tiny):
    model, _, sae = tiny
    gen = torch.Generator().manual_seed(1)
    sizes = ((4, 15), (6, 20), (3, 9))
    gens = [
        Generation(
            torch.randint(3, 40, (n,), generator=gen).tolist(), torch.randint(3, 12, (m,), generator=gen).tolist()
        )
        for n, m in sizes
    ]
    found = rank_repetition_features(model, sae, gens, top=5)

    total, count = torch.zeros(sae.d_sae, dtype=torch.float64), 0
    for g in gens:
        ids = g.prompt_ids + g.completion_ids
        acts = get_activations(model, torch.tensor([ids]), ["resid_post.0"])["resid_post.0"][0]
        feats = sae.encode(acts).double()
        comp = g.completion_ids
        for tok in set(comp):
            where = [i for i, t in enumerate(comp) if t == tok]
            if len(where) >= 2:
                total += feats[len(g.prompt_ids) + where[-1]] - feats[len(g.prompt_ids) + where[0]]
                count += 1
    expected = (total / count).float()
    assert found.n_tokens == count and found.n_generations == 3
    torch.testing.assert_close(found.scores, expected, rtol=1e-5, atol=1e-6)
    assert found.feature_ids == expected.topk(5).indices.tolist()


def test_ranking_without_repeats_says_so(tiny):
    model, _, sae = tiny
    with pytest.raises(QwenscopeError, match="no token repeats"):
        rank_repetition_features(model, sae, [Generation([5, 6], [7, 8, 9])])


def test_steering_a_feature_up_raises_the_repeat_ratio(tiny):
    model, tokenizer, sae = tiny
    prompts = ["hello world", "abc", "the cat sat", "zq"]
    check = steering_check(model, tokenizer, sae, 7, prompts, alpha=300.0, max_new_tokens=16, n=2)
    assert check.plain.n == check.steered.n == 4
    assert check.steered.repeat_ratio > check.plain.repeat_ratio + 0.3
    assert check.raised
    plain = generate_completions(model, tokenizer, [tokenizer(p)["input_ids"] for p in prompts], max_new_tokens=16)
    loops = looping_generations(model, tokenizer, prompts, max_new_tokens=16, rule=LoopRule(min_span=6))
    assert [g.completion_ids for g in loops] == [c for c in plain if loop_period(c, LoopRule(min_span=6))]
    assert len(loops) == 1  # this seed: one of the four plain generations ends in a loop
