"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench's method).

    result = absorption(model, tokenizer, {"resid_post.15": sae})          # JSON-serialisable dict

A word's first letter is linearly readable from the residual at its token, so an SAE "should" have a latent per
letter. Absorption is when that latent stays silent on some words of its letter because a more specific latent
(say, one for "short") fires instead and carries the letter direction in its decoder row. Steps, per hookpoint:

1. Words: vocabulary tokens made of a leading space and 2 or more lowercase ASCII letters, a seeded sample of
   ``n_words``, split 60/40 into training and test words. Each is read at its own token after a fixed prefix
   (``PREFIX``: two "The word ... starts with ..." examples), so every input has the same length.
2. A logistic probe (standardised, multinomial) on the training words' residuals predicts the letter; its
   direction for letter L (the coefficients mapped back to the residual's scale, unit norm) is ``u_L``.
3. The main latent of L: the latent whose firing best predicts L on the training words (F1, ``main_f1``); a
   latent that fires hard on a few words of L (the absorbing kind) loses to one that fires on most of them.
4. On the test words of L that the probe gets right: a false negative is one where the main latent does not fire;
   it is absorbed when, among the latents that fire, the one contributing most along ``u_L``
   (activation x decoder row . ``u_L``) has a decoder row at cosine >= ``COSINE`` with ``u_L`` and carries at least
   ``PROJECTION`` of the residual's own projection on ``u_L`` (after the decoder bias).

Per letter (letters with at least ``min_words`` test words): the false-negative rate and the absorption rate
(absorbed / probe-correct test words), the absorbed words; means over letters. Below 1B parameters the result is
marked exploratory, as SAEBench marks it: small models read first letters poorly.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.sae.model import Sae
from qwenscope.sae.random import random_like
from qwenscope.util.optional import require

logger = logging.getLogger(__name__)

PREFIX = "The word tartan starts with T. The word mirror starts with M. The word"
COSINE = 0.025
"""The smallest cosine between an absorbing latent's decoder row and the letter's probe direction (SAEBench's)."""
PROJECTION = 0.4
"""The smallest share of the residual's projection on the probe direction an absorbing latent must carry
(SAEBench's)."""
_WORD = re.compile(r"^ [a-z]{2,}$")


def first_letter_words(tokenizer, n_words: int = 1500, seed: int = 0) -> list[tuple[int, str]]:
    """A seeded sample of (token id, word) for the vocabulary tokens that are a space and 2+ lowercase letters."""
    found = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if _WORD.match(text):
            found.append((i, text[1:]))
    if not found:
        raise QwenscopeError("the tokenizer has no tokens of a space and lowercase letters; absorption needs words")
    random.Random(seed).shuffle(found)
    return sorted(found[:n_words], key=lambda p: p[1])


@torch.no_grad()
def word_activations(model: nn.Module, tokenizer, ids: Sequence[int], hookpoints: Sequence[str], batch: int = 64):
    """hookpoint -> (n, d) float32: the residual at each word's token after ``PREFIX``."""
    prefix = tokenizer(PREFIX)["input_ids"]
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {hp: [] for hp in hookpoints}
    for start in range(0, len(ids), batch):
        rows = torch.tensor([[*prefix, t] for t in ids[start : start + batch]], device=device)
        acts = get_activations(model, rows, list(hookpoints))
        for hp in hookpoints:
            out[hp].append(acts[hp][:, -1].float().cpu())
    return {hp: torch.cat(v) for hp, v in out.items()}


def _probe_directions(x: np.ndarray, letters: np.ndarray, test_x: np.ndarray, seed: int):
    """(unit directions per class (n_classes, d), classes, predicted letters of test_x)."""
    require("sklearn", "eval", "the absorption suite")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(scaler.transform(x), letters)
    dirs = probe.coef_ / scaler.scale_  # back to the residual's coordinates
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True).clip(1e-12)
    return dirs, probe.classes_, probe.predict(scaler.transform(test_x))


def _one_sae(sae: Sae, x_train, x_test, train_letters, test_letters, test_words, dirs, classes, predicted, min_words):
    b_dec = sae.b_dec.detach().float().cpu().numpy()
    with torch.no_grad():
        a_train = sae.encode(torch.as_tensor(x_train).to(sae.device, sae.dtype)).float().cpu().numpy()
        a_test = sae.encode(torch.as_tensor(x_test).to(sae.device, sae.dtype)).float().cpu().numpy()
    w = sae.W_dec.detach().float().cpu().numpy()
    w_unit = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12)
    fired = a_train > 0  # (n_train, d_sae), the same for every letter
    fired_count = fired.sum(0)
    letters: dict[str, Any] = {}
    for c, letter in enumerate(classes):
        is_l = test_letters == letter
        if is_l.sum() < min_words:
            continue
        on = train_letters == letter
        f1 = 2 * fired[on].sum(0) / (fired_count + on.sum()).clip(1)
        main = int(np.argmax(f1))  # the latent whose firing best predicts the letter (ties: the lowest id)
        main_f1 = float(f1[main])
        u = dirs[c]
        cos = w_unit @ u
        correct = np.flatnonzero(is_l & (predicted == letter))
        fn, absorbed = [], []
        for i in correct:
            if a_test[i, main] > 0:
                continue
            fn.append(test_words[i])
            active = np.flatnonzero(a_test[i] > 0)
            if len(active) == 0:
                continue
            share = a_test[i, active] * (w[active] @ u)
            top = int(np.argmax(share))
            own = float((x_test[i] - b_dec) @ u)
            if cos[active[top]] >= COSINE and own > 0 and share[top] >= PROJECTION * own:
                absorbed.append(test_words[i])
        n = len(correct)
        letters[str(letter)] = {
            "n_test": int(is_l.sum()),
            "n_probe_correct": n,
            "main_latent": main,
            "main_f1": float(main_f1),
            "false_negative_rate": len(fn) / n if n else None,
            "absorption_rate": len(absorbed) / n if n else None,
            "absorbed_words": absorbed,
        }
    rates = [v["absorption_rate"] for v in letters.values() if v["absorption_rate"] is not None]
    fns = [v["false_negative_rate"] for v in letters.values() if v["false_negative_rate"] is not None]
    return {
        "letters": letters,
        "summary": {
            "mean_absorption_rate": float(np.mean(rates)) if rates else None,
            "mean_false_negative_rate": float(np.mean(fns)) if fns else None,
            "mean_main_f1": float(np.mean([v["main_f1"] for v in letters.values()])) if letters else None,
            "letters": len(letters),
        },
    }


def absorption(
    model: nn.Module,
    tokenizer,
    saes: Mapping[str, Sae],
    *,
    words: Sequence[tuple[int, str]] | None = None,
    n_words: int = 1500,
    min_words: int = 10,
    baseline: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """First-letter absorption for every SAE (and its random-weight baseline), the module doc's steps."""
    for hp, sae in saes.items():
        check_sae_fits(sae, model, hp)
    words = list(words) if words is not None else first_letter_words(tokenizer, n_words, seed)
    order = list(range(len(words)))
    random.Random(f"split/{seed}").shuffle(order)
    cut = int(0.6 * len(order))
    train, test = sorted(order[:cut]), sorted(order[cut:])
    if len(train) < 20 or len(test) < min_words:
        raise QwenscopeError(f"{len(words)} words are too few for the absorption suite; pass more (n_words)")
    acts = word_activations(model, tokenizer, [t for t, _ in words], list(saes))
    first = np.array([w[0] for _, w in words])
    params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {
        "n_words": len(words),
        "n_train": len(train),
        "n_test": len(test),
        "exploratory": params < 1e9,
        "model_parameters": int(params),
        "hookpoints": {},
    }
    test_words = [words[i][1] for i in test]
    for hp, sae in saes.items():
        x = acts[hp].numpy()
        dirs, classes, predicted = _probe_directions(x[train], first[train], x[test], seed)
        args = (x[train], x[test], first[train], first[test], test_words, dirs, classes, predicted, min_words)
        res = _one_sae(sae, *args)
        res["probe_accuracy"] = float((predicted == first[test]).mean())
        if baseline:
            res["random"] = _one_sae(random_like(sae, seed), *args)
        out["hookpoints"][hp] = res
        logger.info("absorption at %s: %s", hp, res["summary"])
    return out
