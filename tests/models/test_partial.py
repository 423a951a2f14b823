"""Partial forwards: skipped shared layers and the LM head at chosen positions change no number, only the cost."""

import pytest
import torch
from tiny_models import build_tiny, random_inputs

from qwenscope import QwenscopeError, resolve_hookpoint
from qwenscope.models.hookpoints import decoder_layers
from qwenscope.models.partial import logits_at, record_outputs, shared_layer, skip_layers


@pytest.mark.parametrize("last", [0, 2])
def test_skipped_layers_give_the_same_logits_without_running(tiny, last):
    arch, model, inputs = tiny
    _, layers = decoder_layers(model)
    with torch.no_grad():
        with record_outputs(model, [last]) as outputs:
            full = model(**inputs, use_cache=False).logits
        ran = []
        handles = [
            layer.input_layernorm.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
            for i, layer in enumerate(layers)
        ]
        try:
            with skip_layers(model, last, outputs[last]):
                partial = model(**inputs, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
    assert ran == list(range(last + 1, len(layers))), arch  # the skipped layers computed nothing
    # the later layers run on the same inputs: same kernels, same shapes: bit-identical
    torch.testing.assert_close(partial, full, rtol=0, atol=0)


def test_skip_layers_restores_forward_also_after_an_error():
    model = build_tiny("llama", num_layers=3)
    _, layers = decoder_layers(model)
    patched = layers[1].forward  # a bound method, as accelerate leaves on a module it dispatches
    layers[1].__dict__["forward"] = patched
    with pytest.raises(RuntimeError, match="boom"), skip_layers(model, 1, torch.zeros(1)):
        assert layers[0].forward(torch.ones(3)).shape == (1,)
        raise RuntimeError("boom")
    assert "forward" not in layers[0].__dict__ and layers[1].__dict__["forward"] is patched
    with pytest.raises(QwenscopeError, match="has 3 layers"), skip_layers(model, 3, None):
        pass


def test_logits_at_on_every_architecture(tiny):
    arch, model, inputs = tiny
    positions = inputs["attention_mask"].bool().clone()  # the real tokens of a left-padded batch
    positions[:, -1] = False
    with torch.no_grad():
        full = model(**inputs, use_cache=False).logits
        with logits_at(model, positions):
            some = model(**inputs, use_cache=False).logits
    # lm_head on some positions vs all: other shapes, other reduction order; fp32 defaults (~1e-6 relative)
    torch.testing.assert_close(some[0], full[positions], msg=arch)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_logits_at_selects_rows_of_the_full_logits(softcap):
    model = build_tiny("gemma3", num_layers=2)  # tied head; the cap is applied after the head by the model itself
    model.config.final_logit_softcapping = softcap
    inputs = random_inputs(model, batch=3, seq=10)
    positions = torch.rand(3, 10, generator=torch.Generator().manual_seed(0)) > 0.4
    with torch.no_grad():
        full = model(**inputs).logits
        with logits_at(model, positions):
            some = model(**inputs).logits
    assert some.shape == (1, int(positions.sum()), full.shape[-1])
    # lm_head on some positions vs all: other shapes, other reduction order; fp32 defaults (~1e-6 relative)
    torch.testing.assert_close(some[0], full[positions])
    if softcap:
        assert full.abs().max() < softcap
    with pytest.raises(QwenscopeError, match="expected"), torch.no_grad(), logits_at(model, positions[:, :5]):
        model(**inputs)
    assert not model.lm_head._forward_pre_hooks


@pytest.mark.parametrize(
    ("hookpoint", "shared"),
    [
        ("resid_post.2", 2),
        ("resid_pre.2", 1),
        ("mlp_out.2", 1),
        ("attn_out.0", None),
        ("resid_pre.0", None),
        ("model.layers.3", 3),
        ("model.layers.3.input", 2),
        ("model.layers.1.mlp.down_proj", 0),
        ("model.embed_tokens", None),
        ("model.norm", None),
    ],
)
def test_shared_layer(hookpoint, shared):
    model = build_tiny("qwen3", num_layers=4)
    assert shared_layer(model, resolve_hookpoint(model, hookpoint)) == shared
