"""The auto-interpretability suite: explain sampled features of an SAE and score the explanations.

    result = autointerp_suite(model, tokenizer, {"resid_post.15": sae}, texts, HFChat(model, tokenizer))

For each hookpoint: one pass over ``texts`` packed into windows of ``window`` tokens finds, for ``n_features``
features drawn (seeded) among those that fire in the pass, the ``n_examples`` windows where each fires most
(``activating``) and as many windows where it does not fire at all (``others``, a seeded sample). The explainer
(a ``qwenscope.models.chat`` client) reads the ten most activating windows with the feature's tokens marked and
writes a one-line explanation; then ``score_detection`` and ``score_fuzzing`` (``qwenscope.evaluate.autointerp``,
asked ``by`` list or logprob) score it on all the examples with the ``scorer`` (the explainer unless given), and the
null floor scores ``NULL_EXPLANATION`` on the same examples. Position 0 of each window is left out (the attention
sink). The windows' residuals are read in one pass for as many hookpoints as fit in ``RESIDUAL_BUDGET`` bytes and
shared by each SAE and its baseline. Means over
features; with ``baseline``, the same for a random-weight SAE of the same shape.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate.autointerp import NULL_EXPLANATION, Example, resolve_scoring, score_detection, score_fuzzing
from qwenscope.features.text import token_text
from qwenscope.models.capture import get_activations
from qwenscope.models.chat import Chat
from qwenscope.models.hookpoints import check_sae_fits, hidden_size
from qwenscope.sae.model import Sae
from qwenscope.sae.random import random_like

logger = logging.getLogger(__name__)

RESIDUAL_BUDGET = 2 << 30
"""Bytes of window residuals held at once: the hookpoints of one model pass (2 GiB: 2,000 windows of 32 tokens of a
2,048-wide model in fp32 is 0.5 GiB per hookpoint)."""

EXPLAIN_PROMPT = """Here are text examples where a feature of a language model is active; the tokens where it is most
active are marked <<like this>>.

{examples}

In one short line, say what the feature responds to. Answer with the explanation only."""


def collect_examples(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    hookpoint: str,
    windows: list[list[int]],
    *,
    n_features: int,
    n_examples: int,
    seed: int = 0,
    batch_size: int = 16,
    resid: torch.Tensor | None = None,
) -> dict[int, tuple[list[Example], list[Example]]]:
    """feature -> (activating examples, most active first; non-activating examples) (the module doc); empty when no
    feature fires in some windows and not in others. ``resid`` (``window_residuals``) skips the model's forwards."""
    if resid is None:
        resid = window_residuals(model, [hookpoint], windows, batch_size)[hookpoint]

    def codes(rows: list[int]):
        """(rows, their codes (b, window, d_sae) float32, position 0 zeroed), a batch at a time."""
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            code = sae.encode(resid[chunk].to(sae.device, sae.dtype)).float()
            code[:, 0] = 0  # the attention sink
            yield chunk, code

    peak = np.zeros((len(windows), sae.d_sae), np.float32)  # each window's largest activation of each feature
    with torch.no_grad():
        for chunk, code in codes(list(range(len(windows)))):
            peak[chunk] = code.max(1).values.cpu().numpy()
    fires = (peak > 0).sum(0)
    live = np.flatnonzero((fires >= 2) & (fires <= len(windows) - 2))  # some windows with it, some without
    rng = random.Random(seed)
    chosen = sorted(int(f) for f in rng.sample(list(live), min(n_features, len(live))))
    tops = {
        f: heapq.nlargest(n_examples, np.flatnonzero(peak[:, f] > 0), key=lambda w: (peak[w, f], -w)) for f in chosen
    }
    per_token: dict[int, np.ndarray] = {}  # window -> (window, len(chosen)): the chosen features' activations
    with torch.no_grad():  # the second pass reads only the activating windows, and keeps only the chosen columns
        for chunk, code in codes(sorted({int(w) for top in tops.values() for w in top})):
            sub = code[:, :, chosen].cpu().numpy()
            per_token.update(zip(chunk, sub))
    text = token_text(tokenizer)
    out = {}
    for j, f in enumerate(chosen):
        silent = np.flatnonzero(peak[:, f] == 0).tolist()
        others = rng.sample(silent, min(n_examples, len(silent)))
        out[f] = (
            [Example(text.pieces(windows[w]), per_token[int(w)][:, j].tolist()) for w in tops[f]],
            [Example(text.pieces(windows[w]), [0.0] * len(windows[w])) for w in others],
        )
    return out


def window_residuals(
    model: nn.Module, hookpoints: list[str], windows: list[list[int]], batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """hookpoint -> (windows, window, d) on the CPU: the activations of every window, in the model's dtype, from one
    pass over the windows for all ``hookpoints``."""
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {hp: [] for hp in hookpoints}
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = torch.tensor(windows[start : start + batch_size], device=device)
            for hp, act in get_activations(model, ids, hookpoints).items():
                out[hp].append(act.cpu())
    return {hp: torch.cat(acts) for hp, acts in out.items()}


def _groups(model: nn.Module, hookpoints: list[str], n_tokens: int) -> list[list[str]]:
    """``hookpoints`` in runs whose window residuals together fit in ``RESIDUAL_BUDGET`` bytes (a model pass each)."""
    per = n_tokens * hidden_size(model) * next(model.parameters()).element_size()
    size = max(1, RESIDUAL_BUDGET // per)
    return [hookpoints[i : i + size] for i in range(0, len(hookpoints), size)]


def explain(chat: Chat, activating: list[Example], n: int = 10) -> str:
    """The explainer's one-line explanation from the ``n`` most activating examples, marked where they peak."""
    shown = []
    for e in activating[:n]:
        top = max(e.acts)
        shown.append(e.marked({i for i, a in enumerate(e.acts) if a > 0 and a >= 0.5 * top}))
    answer = chat.complete(EXPLAIN_PROMPT.format(examples="\n".join(f"- {t}" for t in shown)), max_tokens=48)
    line = next((s.strip() for s in answer.splitlines() if s.strip()), "")
    return line or NULL_EXPLANATION


def _mean(scores: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in scores if s[key] is not None]
    return float(np.mean(values)) if values else None


def _one_sae(model, tokenizer, sae, hp, windows, resid, chats, n_features, n_examples, seed, by) -> dict[str, Any]:
    explainer, scorer = chats
    examples = collect_examples(
        model, tokenizer, sae, hp, windows, n_features=n_features, n_examples=n_examples, seed=seed, resid=resid
    )
    features: dict[str, dict[str, Any]] = {}
    for f, (activating, others) in tqdm(examples.items(), desc=f"autointerp {hp}", leave=False):
        explanation = explain(explainer, activating)
        kw = {"seed": seed, "by": by}
        features[str(f)] = {
            "explanation": explanation,
            "n_activating": len(activating),
            "n_others": len(others),
            "detection": score_detection(scorer, explanation, activating, others, **kw).to_dict(),
            "detection_null": score_detection(scorer, NULL_EXPLANATION, activating, others, **kw).to_dict(),
            "fuzzing": score_fuzzing(scorer, explanation, activating, **kw).to_dict(),
            "fuzzing_null": score_fuzzing(scorer, NULL_EXPLANATION, activating, **kw).to_dict(),
        }
    summary = {
        f"{name}_{metric}": _mean([v[name] for v in features.values()], metric)
        for name in ("detection", "detection_null", "fuzzing", "fuzzing_null")
        for metric in ("balanced_accuracy", "f1", "auroc")
    }
    return {"features": features, "summary": summary}


def autointerp_suite(
    model: nn.Module,
    tokenizer,
    saes: Mapping[str, Sae],
    texts: Iterable[str],
    explainer: Chat,
    *,
    scorer: Chat | None = None,
    by: str = "auto",
    n_features: int = 20,
    n_examples: int = 50,
    window: int = 32,
    n_windows: int = 2000,
    baseline: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Explanations and their detection and fuzzing scores, with null floors (the module doc); JSON-serialisable."""
    from qwenscope.data import chunk_tokens

    if n_features < 1 or n_examples < 2 or window < 4:
        raise QwenscopeError("n_features >= 1, n_examples >= 2 and window >= 4 are needed")
    for hp, sae in saes.items():
        check_sae_fits(sae, model, hp)
    windows = []
    for chunk in chunk_tokens(texts, tokenizer, window):
        if len(chunk) == window:
            windows.append([int(t) for t in chunk])
        if len(windows) >= n_windows:
            break
    if len(windows) < 2 * n_examples:
        raise QwenscopeError(
            f"{len(windows)} windows of {window} tokens; need at least {2 * n_examples}: pass more text"
        )
    chats = (explainer, scorer or explainer)
    out: dict[str, Any] = {}
    for group in _groups(model, list(saes), len(windows) * window):
        residuals = window_residuals(model, group, windows)
        for hp in group:
            sae, resid = saes[hp], residuals.pop(hp)
            args = (windows, resid, chats, n_features, n_examples, seed, by)
            out[hp] = _one_sae(model, tokenizer, sae, hp, *args)
            if not out[hp]["features"]:
                raise QwenscopeError(f"no feature of the SAE at {hp} fires in some of the texts and not in others")
            if baseline:
                out[hp]["random"] = _one_sae(model, tokenizer, random_like(sae, seed), hp, *args)
            logger.info("autointerp at %s: %s", hp, out[hp]["summary"])
    scoring = resolve_scoring(chats[1], by)
    summary = {"n_windows": len(windows), "window": window, "n_examples": n_examples, "scoring": scoring}
    return summary | {"hookpoints": out}
