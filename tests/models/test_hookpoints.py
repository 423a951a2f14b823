"""Hookpoint names resolve to the right modules on every architecture, checked against output_hidden_states."""

import pytest
import torch

from qwenscope import QwenscopeError, Sae, SaeConfig, check_sae_fits, get_activations
from qwenscope.models.hookpoints import decoder_layers, resolve_hookpoint, resolve_hookpoints


def test_resid_post_matches_hidden_states(tiny):
    arch, model, inputs = tiny
    n = len(decoder_layers(model)[1])
    names = [f"resid_post.{i}" for i in range(n)]
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        acts = get_activations(model, inputs, names)
    assert len(out.hidden_states) == n + 1
    for i in range(n - 1):
        # the hook and hidden_states see one tensor of the same forward: same kernels, same shapes: bit-identical
        assert torch.equal(acts[f"resid_post.{i}"], out.hidden_states[i + 1]), (arch, i)
    # the last hidden state has the final norm applied: resid_post.{last} is the raw layer output instead
    last = acts[f"resid_post.{n - 1}"]
    assert not torch.allclose(last, out.hidden_states[n])
    norm = model.get_submodule(decoder_layers(model)[0].rsplit(".", 1)[0] + ".norm")
    torch.testing.assert_close(norm(last), out.hidden_states[n])


def test_sublayers_add_up_to_the_residual(tiny):
    """resid_pre + attn_out + mlp_out == resid_post in every layer (Gemma's sandwich norms included)."""
    arch, model, inputs = tiny
    n = len(decoder_layers(model)[1])
    kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    with torch.no_grad():
        acts = get_activations(model, inputs, [f"{k}.{i}" for i in range(n) for k in kinds])
    for i in range(n):
        total = acts[f"resid_pre.{i}"] + acts[f"attn_out.{i}"] + acts[f"mlp_out.{i}"]
        torch.testing.assert_close(total, acts[f"resid_post.{i}"], atol=1e-5, rtol=1e-5, msg=f"{arch} layer {i}")
        if i > 0:
            # one tensor, seen at two hooks: identical
            assert torch.equal(acts[f"resid_pre.{i}"], acts[f"resid_post.{i - 1}"])


def test_qwen3_5_attention_kind_follows_the_layer():
    from tiny_models import build_tiny

    model = build_tiny("qwen3_5_vl")
    paths = [resolve_hookpoint(model, f"attn_out.{i}").module_path for i in range(4)]
    assert paths == [
        f"model.language_model.layers.{i}.{m}"
        for i, m in enumerate(["linear_attn", "linear_attn", "linear_attn", "self_attn"])
    ]
    assert resolve_hookpoint(model, "resid_post.2").module_path == "model.language_model.layers.2"


def test_raw_module_paths_and_globs(tiny):
    arch, model, inputs = tiny
    path = decoder_layers(model)[0]
    hook = resolve_hookpoint(model, f"{path}.1.mlp")
    assert hook.layer == 1 and not hook.on_input
    assert resolve_hookpoint(model, f"{path}.1.mlp.input").on_input
    names = [h.name for h in resolve_hookpoints(model, "resid_post.*")]
    assert names == [f"resid_post.{i}" for i in range(4)]
    assert [h.name for h in resolve_hookpoints(model, "resid_post.[1-2], mlp_out.0")] == [
        "resid_post.1",
        "resid_post.2",
        "mlp_out.0",
    ]
    with torch.no_grad():
        acts = get_activations(model, inputs, [f"{path}.1.mlp", "mlp_out.1"])
    if arch != "gemma3":  # Gemma's mlp_out is the post-feedforward norm's output
        # one module's output under two names: identical
        assert torch.equal(acts[f"{path}.1.mlp"], acts["mlp_out.1"])


def test_clear_errors():
    from tiny_models import build_tiny

    model = build_tiny("qwen3")
    with pytest.raises(QwenscopeError, match=r"layer 4 is out of range .* 4 layers \(0\.\.3\)") as e:
        resolve_hookpoint(model, "resid_post.4")
    assert "\n" not in str(e.value)
    with pytest.raises(QwenscopeError, match="did you mean resid_post.3"):
        resolve_hookpoint(model, "resid_pst.3")
    with pytest.raises(QwenscopeError, match="matches nothing"):
        resolve_hookpoints(model, "resid_mid.*")
    with pytest.raises(QwenscopeError, match="no hookpoints"):
        resolve_hookpoints(model, "")


def test_sae_of_another_width_is_refused():
    from tiny_models import build_tiny

    model = build_tiny("qwen3")
    wrong = Sae(SaeConfig(d_in=2048, d_sae=64, k=4, hookpoint="resid_post.1", model="Qwen/Qwen3-1.7B-Base"))
    with pytest.raises(QwenscopeError, match=r"d_in=2048 does not match .* hidden size 64 .*another model"):
        check_sae_fits(wrong, model)
    with pytest.raises(QwenscopeError, match="out of range"):
        check_sae_fits(Sae(SaeConfig(d_in=64, d_sae=64, k=4, hookpoint="resid_post.9")), model)
    with pytest.raises(QwenscopeError, match="pass hookpoint="):
        check_sae_fits(Sae(SaeConfig(d_in=64, d_sae=64, k=4)), model)
    assert check_sae_fits(Sae(SaeConfig(d_in=64, d_sae=64, k=4, hookpoint="resid_post.1")), model).layer == 1


def test_resolved_hooks_are_accepted_and_checked_against_the_model():
    from tiny_models import build_tiny

    from qwenscope import capture, splice

    model, other = build_tiny("llama", num_layers=2), build_tiny("llama", num_layers=2)
    ids = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    (hook,) = resolve_hookpoints(model, "resid_post.0")
    assert resolve_hookpoint(model, hook) is hook and resolve_hookpoints(model, [hook, "resid_post.0"]) == [hook]
    by_name = get_activations(model, ids, "resid_post.0")["resid_post.0"]
    # the same hook by name or object: same kernels, same shapes: bit-identical
    torch.testing.assert_close(get_activations(model, ids, hook)["resid_post.0"], by_name, rtol=0, atol=0)
    with torch.no_grad(), splice(model, hook, torch.zeros_like), capture(model, ["resid_post.0"], stop=False) as a:
        model(ids)
    assert not a["resid_post.0"].any()
    with pytest.raises(QwenscopeError, match="resolved for another model"):
        get_activations(other, ids, hook)


def test_sae_of_another_layer_warns_or_with_strict_is_refused(caplog):
    from tiny_models import build_tiny

    model = build_tiny("qwen3")
    sae = Sae(SaeConfig(d_in=64, d_sae=64, k=4, hookpoint="resid_post.0"))
    with caplog.at_level("WARNING", logger="qwenscope.models.hookpoints"):
        assert check_sae_fits(sae, model, "resid_post.1").layer == 1
    assert "attached at resid_post.1" in caplog.text
    with pytest.raises(
        QwenscopeError, match=r"trained at resid_post.0, not at resid_post.1: it belongs to another layer"
    ):
        check_sae_fits(sae, model, "resid_post.1", strict=True)
    assert check_sae_fits(sae, model, "resid_post.0", strict=True).layer == 0
