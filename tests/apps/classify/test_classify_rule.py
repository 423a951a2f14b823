"""The feature rule on a tiny Llama: pooled features, firing rates, Δ ranking and predictions equal a brute-force
dense computation text by text; a saved classifier reloads to identical predictions; the explanation agrees with the
prediction; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_HIDDEN, build_tiny

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.classify.classifier import Classifier, fit
from qwenscope.apps.classify.explain import explain, render_html
from qwenscope.apps.classify.pooled import pool_texts
from qwenscope.apps.classify.rule import firing_rates, fit_rule

TEXTS = [
    "You are a stupid idiot!",
    "The cat sat on the mat.",
    "Hi",
    "What an awful, dumb thing to say, moron.",
    "x" * 40,
    "Lovely weather today, isn't it?",
    "Shut up, fool",
    "Numbers: 12 + 30 = 42.",
    "Z</s>",
    "Go away, you horrible creep.",
    "A quiet afternoon with tea.",
    "Idiots everywhere!!",
]
LABELS = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1])
HOOKS = ["resid_post.1", "resid_post.2"]


def make_sae(hookpoint: str, seed: int = 0, d_sae: int = 64, k: int = 4) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.3, 0.1)  # some of the k slots stay at 0: not every feature fires everywhere
    return sae


@pytest.fixture(scope="module")
def saes():
    return {h: make_sae(h, seed=i) for i, h in enumerate(HOOKS)}


def brute(model, tokenizer, sae: Sae, layer: int, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Max SAE activation per feature and mean activation over the text's non-special tokens, the text alone."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        z = sae.encode(hidden)
    ordinary = ~torch.isin(ids[0], torch.tensor(tokenizer.all_special_ids))
    return z[ordinary].max(0).values.numpy(), hidden[ordinary].mean(0).numpy()


def test_pooled_features_equal_a_plain_forward_text_by_text(model, tokenizer, saes):
    pooled = pool_texts(model, tokenizer, TEXTS, list(saes.values()), HOOKS, batch_size=5, progress=False)
    for p, (hook, sae) in zip(pooled, saes.items()):
        layer = int(hook.split(".")[1])
        for i, text in enumerate(TEXTS):
            mx, mean = brute(model, tokenizer, sae, layer, text)
            np.testing.assert_allclose(p.max_acts[i].toarray()[0], mx, atol=1e-5)
            np.testing.assert_allclose(p.mean_acts[i], mean, atol=1e-5)
            assert set(p.fires[i].indices) == set(np.flatnonzero(mx > 0))


def test_cached_pooled_features_equal_the_computed_ones(model, tokenizer, saes):
    sae = saes["resid_post.1"]
    first = pool_texts(model, tokenizer, TEXTS, [sae], progress=False)[0]
    again = pool_texts(model, tokenizer, TEXTS, [sae], progress=False)[0]  # from the cache
    assert (first.max_acts != again.max_acts).nnz == 0
    np.testing.assert_array_equal(first.mean_acts, again.mean_acts)


def test_firing_rates_delta_ranking_and_predictions_equal_brute_force(model, tokenizer, saes):
    pooled = pool_texts(model, tokenizer, TEXTS, list(saes.values()), HOOKS, progress=False)
    fires = {p.hookpoint: p.fires for p in pooled}
    dense = {h: np.stack([brute(model, tokenizer, saes[h], int(h[-1]), t)[0] > 0 for t in TEXTS]) for h in HOOKS}
    for h in HOOKS:
        pos, neg = firing_rates(fires[h], LABELS)
        np.testing.assert_allclose(pos, dense[h][LABELS == 1].mean(0))
        np.testing.assert_allclose(neg, dense[h][LABELS == 0].mean(0))
    deltas = {h: dense[h][LABELS == 1].mean(0) - dense[h][LABELS == 0].mean(0) for h in HOOKS}
    best = max(HOOKS, key=lambda h: deltas[h].max())
    rule = fit_rule(fires, LABELS, k=3)
    assert rule.hookpoints == [best]
    expected = sorted(range(64), key=lambda j: (-deltas[best][j], j))[:3]
    assert [f.id for f in rule.features] == expected
    assert rule.top1 == pytest.approx({h: deltas[h].max() for h in HOOKS})
    np.testing.assert_array_equal(rule.predict(fires), dense[best][:, expected].any(1).astype(int))
    combined = fit_rule(fires, LABELS, k=4, choose="combine")
    pairs = sorted((-deltas[h][j], h, j) for h in HOOKS for j in range(64))[:4]
    assert [(f.hookpoint, f.id) for f in combined.features] == [(h, j) for _, h, j in pairs]


def test_saved_classifier_reloads_to_identical_predictions(model, tokenizer, saes, tmp_path):
    clf, _ = fit(model, tokenizer, "tiny", "tiny-saes", saes, TEXTS, LABELS, k=3, progress=False)
    preds, scores = clf.predict(model, tokenizer, saes, TEXTS)
    path = clf.save(tmp_path / "clf.json")
    again = Classifier.load(path)
    assert again.as_dict() == clf.as_dict()
    preds2, scores2 = again.predict(model, tokenizer, saes, TEXTS)
    np.testing.assert_array_equal(preds, preds2)
    np.testing.assert_array_equal(scores, scores2)
    records = explain(again, model, tokenizer, saes, TEXTS)
    assert [r["prediction"] for r in records] == preds.tolist()
    assert [r["score"] for r in records] == scores.tolist()
    page = render_html(records, [vars(f) for f in again.rule.features])
    assert page.count("<mark") == sum(bool(t["features"]) for r in records for t in r["tokens"])


def test_a_classifier_refuses_another_sae_or_model(model, tokenizer, saes, tmp_path):
    clf, _ = fit(model, tokenizer, "tiny", "tiny-saes", saes, TEXTS, LABELS, k=2, progress=False)
    other = {h: make_sae(h, seed=7) for h in HOOKS}
    with pytest.raises(QwenscopeError, match="not the one this classifier was fit with"):
        clf.predict(model, tokenizer, other, TEXTS)
    with pytest.raises(QwenscopeError, match="fit with the model tiny"):
        clf.predict(build_tiny("llama", num_layers=4, seed=3), tokenizer, saes, TEXTS)


def test_one_line_errors(model, tokenizer, saes, tmp_path):
    with pytest.raises(QwenscopeError, match="only label 1"):
        fit(model, tokenizer, "tiny", "s", saes, TEXTS[:2], np.array([1, 1]), progress=False)
    with pytest.raises(QwenscopeError, match="--k"):
        fit_rule({"a": pool_texts(model, tokenizer, TEXTS, [saes[HOOKS[0]]], progress=False)[0].fires}, LABELS, k=0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QwenscopeError, match="not a classifier file"):
        Classifier.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(QwenscopeError, match="not a qwenscope classifier"):
        Classifier.load(tmp_path / "other.json")
    with pytest.raises(QwenscopeError, match="no classifier at"):
        Classifier.load(tmp_path / "missing.json")
