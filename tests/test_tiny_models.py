"""Checks the facts documented at the top of ``tests/tiny_models.py``."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from tiny_models import (
    ARCHS,
    TINY_HIDDEN,
    TINY_SLIDING_WINDOW,
    TINY_VOCAB,
    build_tiny,
    decoder_layers,
    random_inputs,
    text_model,
    tiny_config,
)
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

NUM_LAYERS = 4
LAYERS_PATH = {arch: "model.layers" for arch in ARCHS} | {"qwen3_5_vl": "model.language_model.layers"}
MOE_ARCHS = ("qwen3_moe", "qwen3_5_moe")
HYBRID_ARCHS = ("qwen3_5", "qwen3_5_vl", "qwen3_5_moe")


@cache
def _model(arch: str) -> PreTrainedModel:
    """Shared read-only instance per arch (tests must not mutate it)."""
    return build_tiny(arch, num_layers=NUM_LAYERS)


@cache
def _forward(arch: str) -> CausalLMOutputWithPast:
    model = _model(arch)
    with torch.no_grad():
        return model(**random_inputs(model), output_hidden_states=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_build_is_eval_fp32_and_deterministic(arch: str) -> None:
    model = _model(arch)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.get_text_config().num_hidden_layers == NUM_LAYERS
    same, other = build_tiny(arch).state_dict(), build_tiny(arch, seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, other[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_path(arch: str) -> None:
    model = _model(arch)
    assert model.get_submodule(LAYERS_PATH[arch]) is decoder_layers(model)
    assert len(decoder_layers(model)) == NUM_LAYERS


def test_random_inputs_left_pads_row_one() -> None:
    inputs = random_inputs(_model("llama"), batch=2, seq=12)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (2, 12)
    assert int(inputs["input_ids"].max()) < TINY_VOCAB
    assert inputs["attention_mask"][0].all()
    assert inputs["attention_mask"][1, 0] == 0 and inputs["attention_mask"][1, -1] == 1
    again = random_inputs(_model("qwen3"), batch=2, seq=12)
    assert all(torch.equal(inputs[key], again[key]) for key in inputs)  # same seed -> same inputs for any arch


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_logits(arch: str) -> None:
    logits = _forward(arch).logits
    assert logits.shape == (2, 12, TINY_VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states(arch: str) -> None:
    model, hidden = _model(arch), _forward(arch).hidden_states
    assert len(hidden) == NUM_LAYERS + 1
    assert all(h.shape == (2, 12, TINY_HIDDEN) for h in hidden)
    outputs = _layer_outputs(model)
    assert all(isinstance(out, torch.Tensor) for out in outputs)  # decoder layers return plain tensors
    for i in range(NUM_LAYERS - 1):
        torch.testing.assert_close(hidden[i + 1], outputs[i])
    torch.testing.assert_close(hidden[-1], text_model(model).norm(outputs[-1]))  # last one is final-normed


def _layer_outputs(model: PreTrainedModel) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for layer in decoder_layers(model)]
    try:
        with torch.no_grad():
            model(**random_inputs(model))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("arch", ARCHS)
def test_generate(arch: str) -> None:
    model = _model(arch)
    inputs = random_inputs(model)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, 12 + 3)
    assert torch.equal(out[:, :12], inputs["input_ids"])


@pytest.mark.parametrize("arch", HYBRID_ARCHS)
def test_qwen3_5_has_linear_and_full_attention(arch: str) -> None:
    layer_types = tiny_config(arch).get_text_config().layer_types
    assert layer_types == ["linear_attention"] * 3 + ["full_attention"]
    for kind, layer in zip(layer_types, decoder_layers(_model(arch)), strict=True):
        assert hasattr(layer, "linear_attn") == (kind == "linear_attention")
        assert hasattr(layer, "self_attn") == (kind == "full_attention")


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_shapes(arch: str) -> None:
    mlp = decoder_layers(_model(arch))[0].mlp
    assert mlp.gate.weight.shape == (4, TINY_HIDDEN)
    with torch.no_grad():
        logits, weights, indices = mlp.gate(torch.randn(5, TINY_HIDDEN))
        out = mlp(torch.randn(1, 5, TINY_HIDDEN))
    assert logits.shape == (5, 4) and weights.shape == indices.shape == (5, 2)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5, TINY_HIDDEN)


def test_gemma3_sliding_window_is_exercised() -> None:
    model = build_tiny("gemma3")
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2
    layer = decoder_layers(model)[0]
    assert {"post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"} <= set(
        dict(layer.named_children())
    )
    inputs = random_inputs(model, seq=2 * TINY_SLIDING_WINDOW)
    with torch.no_grad():
        windowed = model(**inputs).logits
        model.config.sliding_window = 10_000
        unwindowed = model(**inputs).logits
    short = slice(0, TINY_SLIDING_WINDOW - 1)  # positions whose whole prefix fits in the window
    torch.testing.assert_close(windowed[0, short], unwindowed[0, short])
    assert not torch.allclose(windowed[0, -1], unwindowed[0, -1])
