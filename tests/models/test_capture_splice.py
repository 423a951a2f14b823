"""Capture stops the forward after the deepest hookpoint; splice edits activations; hooks never leak."""

import pytest
import torch

from qwenscope import QwenscopeError, capture, get_activations, splice
from qwenscope.models.hookpoints import decoder_layers


def n_hooks(model) -> int:
    """Our hooks on the model (transformers registers a few of its own, which are never ours to remove)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) - model._own_hooks


@pytest.fixture(autouse=True)
def _count_library_hooks(request):
    if "tiny" in request.fixturenames:
        model = request.getfixturevalue("tiny")[1]
        model._own_hooks = 0
        model._own_hooks = n_hooks(model)


def test_capture_stops_after_deepest_layer(tiny):
    arch, model, inputs = tiny
    path, layers = decoder_layers(model)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda m, a, o: ran.append("lm_head")))
    try:
        with torch.no_grad():
            acts = get_activations(model, inputs, ["resid_post.1", "mlp_out.0"])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1], arch  # no later layer, no lm_head
    assert acts["resid_post.1"].shape == (*inputs["input_ids"].shape, 64)


def test_capture_context_and_full_run(tiny):
    arch, model, inputs = tiny
    with torch.no_grad():
        with capture(model, ["resid_post.0"]) as acts:
            model(**inputs)
            pytest.fail("the forward should have stopped")  # pragma: no cover
        with capture(model, ["resid_post.0"], stop=False) as full:
            logits = model(**inputs).logits
    # stopped at the hook vs a full run: layer 0 runs same kernels, same shapes: bit-identical
    assert torch.equal(acts["resid_post.0"], full["resid_post.0"])
    assert logits.shape[-1] == model.config.get_text_config().vocab_size
    assert n_hooks(model) == 0


def test_identity_splice_is_bit_identical(tiny):
    arch, model, inputs = tiny
    names = [f"{k}.{i}" for i in range(4) for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    with torch.no_grad():
        plain = model(**inputs).logits
        with splice(model, {name: (lambda h: h) for name in names}):
            spliced = model(**inputs).logits
    # an identity splice changes no op: same kernels, same shapes: bit-identical
    assert torch.equal(plain, spliced), arch
    assert n_hooks(model) == 0


def test_splice_changes_output_and_generate_cleans_up(tiny):
    arch, model, inputs = tiny
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(**inputs).logits
        with splice(model, "resid_post.1", lambda h: h + 10 * direction):
            steered = model(**inputs).logits
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert not torch.allclose(plain, steered)
    assert n_hooks(model) == 0


def test_hooks_removed_after_exception(tiny):
    arch, model, inputs = tiny

    def boom(h):
        raise RuntimeError("user code failed")

    with pytest.raises(RuntimeError, match="user code failed"), torch.no_grad(), splice(model, "resid_post.1", boom):
        model(**inputs)
    assert n_hooks(model) == 0
    with pytest.raises(KeyError), capture(model, ["resid_post.1"]):
        raise KeyError("inside the block")
    assert n_hooks(model) == 0


def test_splice_shape_and_input_errors():
    from tiny_models import build_tiny, random_inputs

    model = build_tiny("llama")
    model._own_hooks = 0
    model._own_hooks = n_hooks(model)
    inputs = random_inputs(model)
    with pytest.raises(QwenscopeError, match=r"returned \(2, 12, 32\), expected a tensor of shape \(2, 12, 64\)"):
        with torch.no_grad(), splice(model, "resid_post.0", lambda h: h[..., :32]):
            model(**inputs)
    assert n_hooks(model) == 0
    with pytest.raises(QwenscopeError, match="no tokens"):
        get_activations(model, torch.zeros(1, 0, dtype=torch.long), ["resid_post.0"])
    with pytest.raises(QwenscopeError, match="token ids"):
        get_activations(model, torch.zeros(1, 3), ["resid_post.0"])
