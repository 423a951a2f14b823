"""Language features: nu and alpha against a token-by-token loop, save/load, and the one-line errors."""

import pytest
import torch
from tiny_models import tiny_qwen3

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.posttrain.language import LanguageFeatures, language_features
from qwenscope.data.tokens import special_token_ids

TEXTS = {
    "en": ["The cat sat on the mat and looked at the rain.", "Hello there, how are you today?", "Fine, thanks."],
    "es": ["El gato se sentó en la alfombra y miró la lluvia.", "Hola, ¿cómo estás hoy?"],
    "it": ["Il gatto si è seduto sul tappeto.", "Ciao, come stai oggi? Tutto bene, grazie mille."],
}


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = tiny_qwen3(num_layers=2)
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=64, d_sae=48, k=6, hookpoint="resid_post.0"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
    sae.cfg.apply_b_dec_to_input = True  # the b_dec path of pre_acts is exercised too
    return model.eval(), tokenizer, sae


def brute_force(model, tokenizer, sae, texts, lang):
    """One text at a time, one token at a time: the definitions of the module doc, literally."""
    special = set(special_token_ids(tokenizer))
    mean_act, alpha = {}, {}
    for name, group in texts.items():
        act, pre, n = torch.zeros(sae.d_sae, dtype=torch.float64), torch.zeros(sae.d_sae, dtype=torch.float64), 0
        for text in group:
            ids = tokenizer(text)["input_ids"]
            with torch.no_grad():
                hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]  # resid_post.0
                for t in range(1, len(ids)):
                    if ids[t] in special:
                        continue
                    act += sae.encode(hidden[t]).double()
                    pre += sae.pre_acts(hidden[t]).double()
                    n += 1
        mean_act[name], alpha[name] = act / n, pre / n
    others = sum(mean_act[k] for k in texts if k != lang) / (len(texts) - 1)
    return mean_act[lang] - others, alpha


def test_nu_and_alpha_equal_a_token_by_token_loop(setup):
    model, tokenizer, sae = setup
    feats = language_features(model, tokenizer, sae, TEXTS, "es", top=5, batch_size=2)  # batched and padded
    nu, alpha = brute_force(model, tokenizer, sae, TEXTS, "es")
    torch.testing.assert_close(feats.nu, nu.float(), atol=1e-5, rtol=1e-4)
    for lang in TEXTS:
        torch.testing.assert_close(feats.alpha[lang], alpha[lang].float(), atol=1e-5, rtol=1e-4)
    assert feats.ids == torch.argsort(nu, descending=True)[:5].tolist()
    assert nu[feats.ids[0]] > 0 and (feats.alpha["en"] < 0).any()  # pre-activations: negatives are kept
    assert feats.hookpoint == "resid_post.0" and feats.lang == "es" and feats.top(2).ids == feats.ids[:2]
    torch.testing.assert_close(feats.thresholds("it"), feats.alpha["it"][feats.ids])


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_save_load_round_trip(setup, tmp_path, suffix):
    model, tokenizer, sae = setup
    feats = language_features(model, tokenizer, sae, TEXTS, "en", top=3)
    feats.save(tmp_path / f"f{suffix}")
    back = LanguageFeatures.load(tmp_path / f"f{suffix}")
    assert (back.hookpoint, back.lang, back.ids, back.n_tokens) == (feats.hookpoint, "en", feats.ids, feats.n_tokens)
    assert torch.equal(back.nu, feats.nu)
    assert all(torch.equal(back.alpha[k], feats.alpha[k]) for k in TEXTS)


def test_bad_input_one_line(setup):
    model, tokenizer, sae = setup
    feats = language_features(model, tokenizer, sae, TEXTS, "en")
    other_model = Sae(SaeConfig(d_in=32, d_sae=48, k=6, hookpoint="resid_post.0", model="Qwen/Qwen3-8B"))
    other_layer = Sae(SaeConfig(d_in=64, d_sae=48, k=6, hookpoint="resid_post.1"))
    cases = [
        (lambda: language_features(model, tokenizer, sae, {"en": TEXTS["en"]}, "en"), "at least two languages"),
        (lambda: language_features(model, tokenizer, sae, {**TEXTS, "de": [" "]}, "en"), "no text for language 'de'"),
        (lambda: language_features(model, tokenizer, sae, TEXTS, "fr"), "no texts for 'fr'"),
        (lambda: language_features(model, tokenizer, other_model, TEXTS, "en"), "another model"),
        (
            lambda: language_features(model, tokenizer, other_layer, TEXTS, "en", hookpoint="resid_post.0"),
            "another layer",
        ),
        (lambda: feats.with_ids([3, 48]), "beyond the SAE's width d_sae=48"),
        (lambda: feats.thresholds("de"), "no alpha for language 'de'"),
        (lambda: LanguageFeatures.load("/nonexistent.json"), "no language features"),
    ]
    for call, match in cases:
        with pytest.raises(QwenscopeError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
