"""The auto-interpretability suite end to end on a tiny model with a planted feature and a keyword scorer."""

import re

import numpy as np
import torch
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import Sae, SaeConfig, get_activations
from qwenscope.evaluate.interp import autointerp_suite

WORDS = ["cat", "sat", "mat", "dog", "run", "sun", "hat", "pen", "cup", "box"]


class KeywordChat:
    """Explains by the marked strings; scores 1 where an example holds a word of the explanation (list answers)."""

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        return keyword_answer(prompt)


def keyword_answer(prompt: str) -> str:
    if prompt.startswith("Here are text examples"):
        return " ".join(sorted({m.strip() for m in re.findall(r"<<(.*?)>>", prompt)}))
    explanation = re.search(r"^Explanation: (.*)$", prompt, re.M).group(1)
    words = set() if explanation == "none of them" else set(explanation.split())
    examples = re.findall(r"^Example \d+: (.*)$", prompt, re.M)
    if "marked <<like this>>" in prompt:  # fuzzing: are the marks on an explanation word?
        return str([int(any(m.strip() in words for m in re.findall(r"<<(.*?)>>", e))) for e in examples])
    return str([int(any(w in e for w in words)) for e in examples])


def test_a_planted_feature_is_explained_and_scored_above_its_null_floor():
    model, tokenizer = build_tiny("llama", num_layers=2), make_byte_tokenizer()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 12)) + (" zz" if i % 3 == 0 else "") for i in range(120)]
    # feature 0 fires on the letter z (a direction between the residuals at z and elsewhere); the others never fire
    ids = torch.tensor([tokenizer("ab zz cd zz")["input_ids"]])
    h = get_activations(model, ids, ["resid_post.0"])["resid_post.0"][0]
    is_z = torch.tensor([t == tokenizer.convert_tokens_to_ids("z") for t in ids[0].tolist()])
    d = h[is_z].mean(0) - h[~is_z].mean(0)
    sae = Sae(SaeConfig(d_in=64, d_sae=4, activation="relu", hookpoint="resid_post.0"))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = d / d.norm()
        mid = float((h[is_z].mean(0) + h[~is_z].mean(0)) @ d / d.norm()) / 2
        sae.b_enc.fill_(-1e6)
        sae.b_enc[0] = -mid
    out = autointerp_suite(
        model, tokenizer, {"resid_post.0": sae}, texts, KeywordChat(), n_features=3, n_examples=10, window=16
    )
    res = out["hookpoints"]["resid_post.0"]
    assert list(res["features"]) == ["0"]  # the only live feature
    feat = res["features"]["0"]
    assert "z" in feat["explanation"] and feat["n_activating"] == feat["n_others"] == 10
    assert feat["detection"]["balanced_accuracy"] == 1.0 and feat["detection_null"]["balanced_accuracy"] == 0.5
    assert feat["fuzzing"]["accuracy"] > feat["fuzzing_null"]["accuracy"]
    assert res["summary"]["detection_balanced_accuracy"] == 1.0
    random = res["random"]["summary"]  # random weights: features that fire on no word in particular
    assert random["detection_balanced_accuracy"] < 1.0 and random["detection_null_balanced_accuracy"] == 0.5


def test_all_hookpoints_are_read_in_one_pass_unless_the_budget_splits_them(monkeypatch):
    import qwenscope.evaluate.interp as interp

    model, tokenizer = build_tiny("llama", num_layers=2), make_byte_tokenizer()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 12)) for _ in range(60)]
    saes = {
        hp: Sae(SaeConfig(d_in=64, d_sae=16, activation="relu", hookpoint=hp))
        for hp in ("resid_post.0", "resid_post.1")
    }
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    kw = {"n_features": 2, "n_examples": 5, "window": 16, "baseline": False}
    together = autointerp_suite(model, tokenizer, saes, texts, KeywordChat(), **kw)
    one_pass = len(calls)
    calls.clear()
    monkeypatch.setattr(interp, "RESIDUAL_BUDGET", 1)  # one hookpoint per pass
    apart = autointerp_suite(model, tokenizer, saes, texts, KeywordChat(), **kw)
    assert len(calls) == 2 * one_pass
    assert together == apart and set(together["hookpoints"]) == set(saes)
