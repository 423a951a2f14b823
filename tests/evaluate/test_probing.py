"""k-sparse probing: the sae-probes tasks as balanced splits, the pooled activations against one text at a time, the
probes against scikit-learn fitted directly, the random baseline, and one-line errors."""

import importlib.util

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError, Sae, SaeConfig, get_activations
from qwenscope.evaluate.probing import (
    CPU_TASKS,
    ProbingTask,
    fit_probe,
    load_task,
    pooled_activations,
    resolve_tasks,
    sparse_probing,
    top_mean_diff,
)
from qwenscope.sae import random_like

pytest.importorskip("zstandard")
if importlib.util.find_spec("sae_probes") is None:
    pytest.skip("could not import 'sae_probes': not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llama", num_layers=2), make_byte_tokenizer()


def tiny_sae(seed: int = 0, k: int = 4) -> Sae:
    torch.manual_seed(seed)
    return Sae(SaeConfig(d_in=64, d_sae=96, k=k, hookpoint="resid_post.1"))


def test_tasks_are_balanced_disjoint_and_deterministic():
    task = load_task("glue_sst2", n_train=40, n_test=20)
    assert task.name == "92_glue_sst2" and task.classes == ("0", "1")
    assert len(task.train_texts) == 40 and len(task.test_texts) == 20
    assert task.train_labels.sum() == 20 and task.test_labels.sum() == 10
    assert not set(task.train_texts) & set(task.test_texts)
    again = load_task("92_glue_sst2", n_train=40, n_test=20)
    assert again.train_texts == task.train_texts and again.test_texts == task.test_texts
    assert load_task("92_glue_sst2", n_train=40, n_test=20, seed=1).train_texts != task.train_texts
    assert resolve_tasks("cpu") == list(CPU_TASKS) and len(resolve_tasks("all")) > 100


def test_task_errors_are_one_line():
    with pytest.raises(QwenscopeError, match="probing task 'no_such_task' is not in the installed sae-probes") as e:
        load_task("no_such_task")
    assert "\n" not in str(e.value)
    with pytest.raises(QwenscopeError, match="has 1319 classes, not 2; choose a binary task"):
        load_task("2_hist_fig_birthyear")


def test_missing_sae_probes_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sae_probes" else real(name, *a))
    with pytest.raises(QwenscopeError, match=r"pip install --no-deps sae-probes zstandard"):
        load_task("92_glue_sst2")


def test_top_mean_diff_is_the_brute_force_choice():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 12)), rng.integers(0, 2, 50)
    diffs = [abs(x[y == 1, j].mean() - x[y == 0, j].mean()) for j in range(12)]
    assert list(top_mean_diff(x, y, 3)) == sorted(range(12), key=lambda j: -diffs[j])[:3]


def test_fit_probe_is_scikit_learn_fitted_directly():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 5)), rng.integers(0, 2, 80)
    x[:, 2] += 1.5 * y
    scaler = StandardScaler().fit(x[:60])
    direct = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x[:60]), y[:60])
    score = direct.decision_function(scaler.transform(x[60:]))
    got = fit_probe(x[:60], y[:60], x[60:], y[60:])
    assert got["accuracy"] == pytest.approx(((score > 0) == y[60:]).mean(), abs=1e-12)
    assert got["auroc"] == pytest.approx(roc_auc_score(y[60:], score), abs=1e-12)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_activations_match_one_text_at_a_time(tiny, pooling):
    model, tokenizer = tiny
    sae = tiny_sae()
    texts = ["a cat sat", "on the warm mat today", "x"]
    resid, codes = pooled_activations(model, tokenizer, texts, {"resid_post.1": [sae]}, pooling=pooling)
    for i, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        h = get_activations(model, ids, ["resid_post.1"])["resid_post.1"][0]
        if pooling == "last":
            want_x, want_code = h[-1], sae.encode(h[-1:])[0]
        else:  # every token but the first (the attention sink); a one-token text is its first token
            kept = h[1:] if len(h) > 1 else h
            want_x, want_code = kept.mean(0), sae.encode(kept).mean(0)
        # batched and padded vs alone: other shapes, float32 rounding
        np.testing.assert_allclose(resid["resid_post.1"][i], want_x.detach().numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(codes["resid_post.1"][0][i], want_code.detach().numpy(), atol=1e-5, rtol=1e-5)


def test_sparse_probing_reproduces_a_direct_computation_and_finds_a_planted_latent(tiny):
    model, tokenizer = tiny
    # a planted task: class 1 texts hold the letter "z", which a hand-built latent (0) detects at the last token
    rng = np.random.default_rng(0)
    words = ["cat", "sat", "mat", "dog", "run", "sun", "hat", "pen"]
    texts = [" ".join(rng.choice(words, 3)) + (" z" if i % 2 else " a") for i in range(48)]
    labels = np.arange(48) % 2
    task = ProbingTask("planted", texts[:32], labels[:32], texts[32:], labels[32:], ("a", "z"))
    sae = tiny_sae(k=8)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    h_last = torch.stack(
        [get_activations(model, torch.tensor([i]), ["resid_post.1"])["resid_post.1"][0, -1] for i in ids]
    )
    z = torch.tensor(labels, dtype=torch.bool)
    direction = h_last[z].mean(0) - h_last[~z].mean(0)
    with torch.no_grad():
        sae.W_enc[:, 0] = 10 * direction / direction.norm()
        sae.b_enc[0] = -10 * float((h_last[z].mean(0) + h_last[~z].mean(0)) @ direction / direction.norm()) / 2
    out = sparse_probing(model, tokenizer, {"resid_post.1": sae}, [task], ks=[1, 5], progress=False)
    row = out["hookpoints"]["resid_post.1"]["tasks"]["planted"]
    assert row["sae@1"]["accuracy"] == 1.0 and row["sae@1"]["auroc"] == 1.0
    # the same probe, computed directly from the per-text activations
    codes = sae.encode(h_last).detach().numpy()
    cols = top_mean_diff(codes[:32], labels[:32], 5)
    direct = fit_probe(codes[:32][:, cols], labels[:32], codes[32:][:, cols], labels[32:])
    assert row["sae@5"]["accuracy"] == pytest.approx(direct["accuracy"], abs=1 / 16)  # one text may flip on rounding
    assert set(row) == {f"{m}@{k}" for m in ("sae", "random", "resid_topk") for k in (1, 5)} | {"resid_full"}
    summary = out["hookpoints"]["resid_post.1"]["summary"]["sae@1"]
    assert summary["accuracy"] == 1.0 and summary["accuracy_ci95"] == [1.0, 1.0]


def test_random_like_keeps_the_shape_and_reconstructs_worse(tiny):
    model, _ = tiny
    from qwenscope.evaluate.metrics import explained_variance

    trained = tiny_sae(k=8)
    x = get_activations(model, torch.randint(3, 250, (4, 16)), ["resid_post.1"])["resid_post.1"].reshape(-1, 64)
    with torch.no_grad():  # a "trained" SAE: its decoder rows span the data's top principal directions
        u = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:48]
        trained.W_dec[:48], trained.W_dec[48:] = u, -u
        trained.W_enc.copy_(trained.W_dec.T)
        trained.b_dec.copy_(x.mean(0))
    state = torch.random.get_rng_state()
    base = random_like(trained, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert base.cfg == trained.cfg and torch.equal(base.b_dec, trained.b_dec)
    assert torch.equal(base.W_dec, random_like(trained, seed=3).W_dec)
    assert not torch.equal(base.W_dec, random_like(trained, seed=4).W_dec)
    ev = {n: float(explained_variance(x, s(x).sae_out)) for n, s in (("trained", trained), ("random", base))}
    assert ev["random"] < ev["trained"]
