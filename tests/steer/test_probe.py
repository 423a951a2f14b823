"""The steering probe and effect-ranked search: a planted feature that writes the target token ranks first, the fast
replay of the layers after the hookpoint equals whole forwards, strength 0 changes nothing."""

import pytest
import torch
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.features.search import effect_ranked
from qwenscope.steer.probe import _Tail, probe_effects
from qwenscope.steer.strength import steering_unit

POSITIVE = ["zz zzz zz", "zzzz z zzz", "z zz zzzz z", "zzz zz zzz"]
NEGATIVE = ["the cat sat on the mat", "a dog ran in the park", "we read a book today", "it is warm and dry"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def random_sae(d_in: int = 64, d_sae: int = 32, layer: int = 1, seed: int = 0) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=4, hookpoint=f"resid_post.{layer}"))
    return sae.requires_grad_(False)


def planted(model, tokenizer, feature: int) -> Sae:
    """A random SAE whose feature ``feature`` has the unembedding row of 'z' as its decoder direction."""
    sae = random_sae()
    (z,) = tokenizer.encode("z", add_special_tokens=False)
    row = model.get_output_embeddings().weight[z].detach()
    with torch.no_grad():
        sae.W_dec[feature] = row / row.norm()
    return sae


def test_planted_unembedding_feature_ranks_first(tokenizer):
    model = build_tiny("llama", num_layers=3)
    sae = planted(model, tokenizer, 7)
    hits = effect_ranked(
        model,
        tokenizer,
        sae,
        POSITIVE,
        NEGATIVE,
        top=5,
        candidates=sae.d_sae,
        alphas=(0.5, 1.0),
        unit=steering_unit(model, tokenizer, "resid_post.1", NEGATIVE),
    )
    assert hits[0].feature == 7
    assert hits[0].gain_pos > 0 and hits[0].score > 2 * hits[1].score
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(hits[0].gain_pos - hits[0].gain_neg)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3_5"])
def test_replayed_tail_equals_whole_forwards(tokenizer, arch):
    model = build_tiny(arch, num_layers=4)
    sae = random_sae(layer=1)
    args = (model, tokenizer, sae, [3, 7, 11], POSITIVE, NEGATIVE[:3], [0.0, 0.5, 2.0])
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    assert _Tail.record(model, "resid_post.1", ids, (ids > 0).long()) is not None  # the fast path is taken
    fast = probe_effects(*args, unit=1.0, batch_rows=14)  # chunks of 2 features: a partial last chunk
    slow = probe_effects(*args, unit=1.0, fast=False)
    # fast (batched) vs slow (one by one): other shapes, other reduction order; fp32 log-prob sums
    torch.testing.assert_close(fast.gain_pos, slow.gain_pos, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.gain_neg, slow.gain_neg, atol=1e-5, rtol=1e-4)
    assert fast.gain_pos[:, 0].abs().max() < 1e-5 and fast.gain_pos[:, 2].abs().min() > 1e-3


def test_last_layer_and_non_residual_hookpoints(tokenizer):
    model = build_tiny("llama", num_layers=2)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert _Tail.record(model, "mlp_out.0", ids, torch.ones_like(ids)) is None
    for hook, layer in (("resid_post.1", 1), ("mlp_out.0", 0)):  # no layer after it / not a layer's output
        sae = random_sae(layer=layer)
        sae.cfg.hookpoint = hook
        e = probe_effects(model, tokenizer, sae, [1, 2], POSITIVE[:2], NEGATIVE[:2], [1.0], unit=1.0)
        slow = probe_effects(model, tokenizer, sae, [1, 2], POSITIVE[:2], NEGATIVE[:2], [1.0], unit=1.0, fast=False)
        # batched vs one by one: other shapes, other reduction order; fp32 log-prob sums
        torch.testing.assert_close(e.gain_pos, slow.gain_pos, atol=1e-5, rtol=1e-4)
        assert e.gain_pos.abs().min() > 0


def test_probe_errors(tokenizer):
    model = build_tiny("llama", num_layers=2)
    sae = random_sae()
    with pytest.raises(QwenscopeError, match="outside this SAE"):
        probe_effects(model, tokenizer, sae, [99], POSITIVE, NEGATIVE, [1.0], unit=1.0)
    with pytest.raises(QwenscopeError, match="negative texts"):
        probe_effects(model, tokenizer, sae, [1], POSITIVE, [], [1.0], unit=1.0)
    with pytest.raises(QwenscopeError, match="at least 1"):
        effect_ranked(model, tokenizer, sae, POSITIVE, NEGATIVE, candidates=0, unit=1.0)
