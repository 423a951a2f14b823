"""steer(): exact no-ops, the edit each mode makes, positions under generate, several SAEs, hooks never leak, errors."""

import math

import pytest
import torch
from tiny_models import build_tiny, random_inputs

from qwenscope import QwenscopeError, Sae, SaeConfig, SteerSpec, capture, steer
from qwenscope.steer.steer import _Clock


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def make_sae(layer: int, d_in: int = 64, d_sae: int = 256, seed: int = 0) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=8, hookpoint=f"resid_post.{layer}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
    return sae.requires_grad_(False)


@pytest.fixture(scope="module")
def llama():
    model = build_tiny("llama", num_layers=3)
    return model, random_inputs(model, batch=2, seq=10)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_strength_zero_is_bit_identical_on_every_arch(tiny):
    arch, model, inputs = tiny
    base = n_hooks(model)
    sae = make_sae(1)
    plain = logits(model, inputs)
    with steer(model, sae, {3: 0.0, 200: 0.0}):
        steered = logits(model, inputs)
    # a no-op steering leaves every op as it was: same kernels, same shapes: bit-identical
    assert torch.equal(plain, steered), arch
    with steer(model, sae, {3: 5.0}):
        assert not torch.equal(plain, logits(model, inputs)), arch
    assert n_hooks(model) == base


def test_clamp_to_own_value_is_bit_identical(llama):
    model, inputs = llama
    sae = make_sae(1)
    with torch.no_grad(), capture(model, ["resid_post.1"]) as acts:
        model(**inputs)
    z = sae.encode(acts["resid_post.1"])
    b, p = 1, 6
    f = int(z[b, p].argmax())
    own = float(z[b, p, f])
    assert own > 0
    plain = logits(model, inputs)
    with steer(model, sae, {f: own}, mode="clamp", positions=[p]):
        clamped = logits(model, inputs)
    # row 0 reads another value at position p, so it changes; row 1 keeps its own value there: bit-identical
    # the unedited row of the same batch: same kernels, same shapes: bit-identical
    assert torch.equal(plain[1], clamped[1])
    assert not torch.equal(plain[0], clamped[0])


@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
def test_each_mode_makes_its_edit(llama, mode):
    model, inputs = llama
    sae = make_sae(1)
    feats = {5: 3.0, 17: -1.5}
    with torch.no_grad():
        with capture(model, ["resid_post.1"]) as before:
            model(**inputs)
        with steer(model, sae, feats, mode=mode, positions=slice(2, 5)), capture(model, ["resid_post.1"]) as after:
            model(**inputs)
    h, out = before["resid_post.1"], after["resid_post.1"]
    ids, s = torch.tensor(list(feats)), torch.tensor(list(feats.values()))
    a = sae.encode(h)[..., ids]
    coef = {"add": s.expand_as(a), "clamp": s - a, "ablate": -a}[mode]
    expected = h + coef @ sae.W_dec[ids]
    assert torch.allclose(out[:, 2:5], expected[:, 2:5], atol=1e-5)
    assert torch.equal(out[:, :2], h[:, :2]) and torch.equal(out[:, 5:], h[:, 5:])


def test_acts_own_reads_features_outside_the_top_k(llama):
    model, inputs = llama
    sae = make_sae(1)  # TopK, k = 8 of 256
    with torch.no_grad():
        with capture(model, ["resid_post.1"]) as before:
            model(**inputs)
        h = before["resid_post.1"]
        pre = sae.pre_acts(h)[0, 4]
        f = int(torch.where(sae.encode(h)[0, 4] == 0, pre, -torch.inf).argmax())  # active, but not in the top k
        assert pre[f] > 0
        out = {}
        for acts in ("encode", "own"):
            with steer(model, sae, {f: 1.0}, mode="clamp", acts=acts), capture(model, ["resid_post.1"]) as after:
                model(**inputs)
            out[acts] = after["resid_post.1"][0, 4]
    torch.testing.assert_close(out["encode"], h[0, 4] + sae.W_dec[f], rtol=0, atol=1e-5)  # a_f = 0: an add
    torch.testing.assert_close(out["own"], h[0, 4] + (1.0 - pre[f]) * sae.W_dec[f], rtol=0, atol=1e-5)
    with pytest.raises(QwenscopeError, match="acts='both'"):
        SteerSpec(sae, [f], mode="ablate", acts="both")


def test_positions_prompt_and_generated_under_generate(llama):
    model, _ = llama
    sae = make_sae(1)
    inputs = random_inputs(model, batch=1, seq=6)
    kw = {"max_new_tokens": 4, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}

    def scores(**steer_kw):
        with torch.no_grad():
            if not steer_kw:
                return model.generate(**inputs, **kw).scores
            with steer(model, sae, {7: 40.0}, **steer_kw):
                return model.generate(**inputs, **kw).scores

    plain, gen_only, prompt_only = scores(), scores(positions="generated"), scores(positions="prompt")
    # the same batch, the hook leaves it: same kernels, same shapes: bit-identical
    assert torch.equal(plain[0], gen_only[0])  # the prompt forward is untouched
    assert not torch.equal(plain[1], gen_only[1])  # the first generated token is steered
    assert not torch.equal(plain[0], prompt_only[0])
    at_5 = scores(positions=5)  # the last prompt token only: the first step changes, the cached later steps see it
    assert not torch.equal(plain[0], at_5[0])


def test_clock_reads_offsets_from_the_cache(llama):
    model, _ = llama
    clock = _Clock()
    seen = []

    def record(module, args, kwargs):
        clock.before_forward(module, args, kwargs)
        seen.append((clock.offset, clock.prompt_len))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**random_inputs(model, batch=1, seq=5), max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    assert seen == [(0, 5), (5, 5), (6, 5)]


def test_several_saes_at_once_equal_nested(llama):
    model, inputs = llama
    sae0, sae2 = make_sae(0, seed=1), make_sae(2, seed=2)
    with steer(model, [SteerSpec(sae0, {1: 2.0}), SteerSpec(sae2, [4, 9], mode="ablate")]):
        both = logits(model, inputs)
    with steer(model, sae0, {1: 2.0}), steer(model, sae2, [4, 9], mode="ablate"):
        nested = logits(model, inputs)
    # the same edits in the same order: same kernels, same shapes: bit-identical
    assert torch.equal(both, nested)
    assert not torch.equal(both, logits(model, inputs))


def test_relative_strength_adds_a_vector_of_that_many_units(llama):
    model, inputs = llama
    sae = make_sae(1)
    with torch.no_grad():
        sae.W_dec[5] *= 4.0  # a decoder row of norm 4: the unit divides its norm out
    norm = float(sae.W_dec[5].norm())
    with steer(model, sae, {5: 2.0}, relative=True, unit=2.5):
        rel = logits(model, inputs)
    with steer(model, sae, {5: 2.0 * 2.5 / norm}):
        absolute = logits(model, inputs)
    torch.testing.assert_close(rel, absolute)
    with torch.no_grad(), capture(model, ["resid_post.1"]) as plain:
        model(**inputs)
    with torch.no_grad(), steer(model, sae, {5: 2.0}, relative=True, unit=2.5):
        with capture(model, ["resid_post.1"], stop=False) as steered:
            model(**inputs)
    added = steered["resid_post.1"] - plain["resid_post.1"]
    torch.testing.assert_close(added.norm(dim=-1), torch.full(added.shape[:2], 5.0))


def test_hooks_removed_after_generate_exception_and_interrupt(llama):
    model, inputs = llama
    sae = make_sae(1)
    base = n_hooks(model)
    with torch.no_grad(), steer(model, sae, {1: 1.0}, mode="clamp"):
        model.generate(**random_inputs(model, batch=1, seq=4), max_new_tokens=2, do_sample=False)
    assert n_hooks(model) == base
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc), steer(model, sae, {1: 1.0}):
            raise exc()
        assert n_hooks(model) == base


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": {256: 1.0}}, "feature id 256 is outside this SAE (it has 256 features"),
        ({"features": {-1: 1.0}}, "feature id -1 is outside"),
        ({"features": {3: math.nan}}, "strength of feature 3 is nan"),
        ({"features": {3: math.inf}}, "strength of feature 3 is inf"),
        ({"features": {}}, "no features to steer"),
        ({"features": {3: 1.0}, "mode": "boost"}, "unknown steering mode 'boost'"),
        ({"features": {3: 1.0}, "relative": True}, "relative strengths need the residual's typical size"),
        ({"features": {3: 1.0}, "relative": True, "unit": -1.0}, "unit is -1.0; pass the positive number"),
        ({"features": {3: 1.0}, "positions": -2}, "pass non-negative token positions"),
        ({"features": {3: 1.0}, "positions": "answer"}, "positions='answer'"),
        ({"features": {3: 1.0}, "hookpoint": "resid_post.2"}, "trained on resid_post.1, not resid_post.2"),
    ],
)
def test_bad_input_one_line(llama, kwargs, message):
    model, _ = llama
    sae = make_sae(1)
    features = kwargs.pop("features")
    with pytest.raises(QwenscopeError, match=None) as err, steer(model, sae, features, **kwargs):
        pass
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sae_of_another_model_is_refused(llama):
    model, _ = llama
    with (
        pytest.raises(QwenscopeError, match="does not match LlamaForCausalLM's hidden size 64"),
        steer(model, make_sae(1, d_in=32), {1: 1.0}),
    ):
        pass
    with pytest.raises(QwenscopeError, match="layer"), steer(model, make_sae(7), {1: 1.0}):
        pass
