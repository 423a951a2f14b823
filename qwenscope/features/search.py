"""Finding features: by the tokens of a text, contrastively between two sets of texts, by the token a decoder
direction promotes, and by label.

    token_features(model, tokenizer, sae, "resid_post.15", "The Eiffel Tower", top=5)   # per token
    contrastive(model, tokenizer, sae, ["I love it", ...], ["I hate it", ...])          # ContrastiveHit list
    effect_ranked(model, tokenizer, sae, ["I love it", ...], ["I hate it", ...])        # EffectHit list
    by_token(model, tokenizer, sae, " Paris")                                           # [(feature, logit)]
    by_label(store, "capital cities")                                                   # feature ids

Contrastive search follows the Qwen-Scope demo: on each set of texts, a feature's firing rate is the fraction of
the texts' tokens (position 0 and special tokens excluded, as in training) on which it fires, and its mean is its
mean activation over those tokens (zeros included); features are ranked by the difference positive - negative.

Effect-ranked search re-ranks the top contrastive candidates by what steering each one does
(``qwenscope.steer.probe``): added at a relative strength (``qwenscope.steer.strength``; 0.75 by default) while the
positive and negative texts are teacher-forced after neutral prefixes, how much more likely it makes the positive
texts than the negative ones (the change in log-likelihood per token, positive minus negative: steering that merely
breaks the model lowers both). Which feature fires most on a concept is often not the one that, added, writes it.
The default strength, 0.75, is a little past the one that generates best: there the differences between candidates
stand out from the noise (``experiments/steering_concepts/steer_probe_dev.py`` compares probe strengths on
development prompts; see docs/results/steering-probe.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.features.encode import read_batches, tokenize_texts
from qwenscope.features.text import token_text
from qwenscope.models.capture import get_activations
from qwenscope.models.head import output_head, unembed
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.sae.model import Sae

if TYPE_CHECKING:
    from qwenscope.features.store import FeatureStore

_TEXT_BATCH = 16
_DIRECTIONS_CHUNK = 4096


def token_features(
    model, tokenizer, sae, hookpoint: str, text: str | Sequence[int], top: int, digits: int | None = 4
) -> list[dict[str, Any]]:
    """Per token of ``text`` (a string, or its token ids): {"pos", "token", "token_id", "features": [{"id", "act"}]},
    the ``top`` strongest active features, strongest first, activations rounded to ``digits`` (None: as the SAE's
    ``encode`` gives them).

    The tokens' texts are decoded jointly (``qwenscope.features.text``): a character split over several tokens is
    the text of the last of them, the others have ''.
    """
    inputs = tokenizer(text, return_tensors="pt") if isinstance(text, str) else torch.tensor([list(text)])
    ids = (inputs if isinstance(inputs, Tensor) else inputs["input_ids"])[0].tolist()
    acts = get_activations(model, inputs, [hookpoint])[hookpoint][0]
    with torch.no_grad():
        z = sae.encode(acts)
    vals, top_ids = z.topk(min(top, sae.d_sae), dim=-1)
    pieces = token_text(tokenizer).pieces(ids)
    return [
        {
            "pos": i,
            "token": piece,
            "token_id": ids[i],
            "features": [
                {"id": int(f), "act": float(v) if digits is None else round(float(v), digits)}
                for f, v in zip(top_ids[i], vals[i])
                if v > 0
            ],
        }
        for i, piece in enumerate(pieces)
    ]


@dataclass
class ContrastiveHit:
    """A feature that tells the positive texts from the negative ones."""

    feature: int
    rate_pos: float
    """Fraction of the positive texts' tokens on which it fires."""
    rate_neg: float
    """Fraction of the negative texts' tokens on which it fires."""
    mean_pos: float
    """Mean activation over the positive texts' tokens (zeros included)."""
    mean_neg: float
    """Mean activation over the negative texts' tokens."""
    rate_diff: float
    """rate_pos - rate_neg."""
    mean_diff: float
    """mean_pos - mean_neg."""


def contrastive(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    positive: Sequence[str],
    negative: Sequence[str],
    top: int = 20,
    by: Literal["rate", "mean"] = "rate",
    hookpoint: str | None = None,
) -> list[ContrastiveHit]:
    """The ``top`` features that fire more on ``positive`` than on ``negative`` texts, ranked by rate or mean diff."""
    if by not in ("rate", "mean"):
        raise QwenscopeError(f"rank by 'rate' or 'mean', got {by!r}")
    hook = check_sae_fits(sae, model, hookpoint).name
    rate_pos, mean_pos = firing_profile(model, tokenizer, sae, hook, positive, "positive")
    rate_neg, mean_neg = firing_profile(model, tokenizer, sae, hook, negative, "negative")
    rate_diff, mean_diff = rate_pos - rate_neg, mean_pos - mean_neg
    order = (rate_diff if by == "rate" else mean_diff).argsort(descending=True, stable=True)[:top]
    return [
        ContrastiveHit(
            int(f),
            float(rate_pos[f]),
            float(rate_neg[f]),
            float(mean_pos[f]),
            float(mean_neg[f]),
            float(rate_diff[f]),
            float(mean_diff[f]),
        )
        for f in order
    ]


@dataclass
class EffectHit:
    """A contrastive candidate with what steering it does (``effect_ranked``)."""

    feature: int
    score: float
    """gain_pos - gain_neg: nats per token the steering moves the model toward the positive texts."""
    gain_pos: float
    """Change of the positive texts' log-likelihood per token (nats; mean over the probe strengths)."""
    gain_neg: float
    """Change of the negative texts' log-likelihood per token (nats; mean over the probe strengths)."""
    rate_pos: float
    """Fraction of the positive texts' tokens on which it fires."""
    rate_neg: float
    """Fraction of the negative texts' tokens on which it fires."""
    contrastive_rank: int
    """Its place (0 = first) in the contrastive ranking it was taken from."""


def effect_ranked(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    positive: Sequence[str],
    negative: Sequence[str],
    top: int = 10,
    candidates: int = 16,
    alphas: Sequence[float] = (0.75,),
    by: Literal["rate", "mean"] = "rate",
    hookpoint: str | None = None,
    unit: float | None = None,
    probe_texts: int = 8,
) -> list[EffectHit]:
    """The ``top`` of the first ``candidates`` contrastive hits, re-ranked by the steering probe (see the module doc).

    ``alphas``: relative strengths probed (the score is the mean over them); ``unit``: the relative unit (default
    ``steering_unit`` at the hookpoint); ``probe_texts``: positive and negative texts teacher-forced (the first ones
    of each list).
    """
    if candidates < 1 or top < 1:
        raise QwenscopeError(f"top and candidates must be at least 1, got {top} and {candidates}")
    hook = check_sae_fits(sae, model, hookpoint).name
    hits = contrastive(model, tokenizer, sae, positive, negative, candidates, by, hook)
    ranked = rank_by_effect(
        model, tokenizer, sae, hits, positive, negative, alphas, hookpoint=hook, unit=unit, probe_texts=probe_texts
    )
    return ranked[:top]


def rank_by_effect(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    hits: Sequence[ContrastiveHit],
    positive: Sequence[str],
    negative: Sequence[str],
    alphas: Sequence[float] = (0.75,),
    *,
    hookpoint: str | None = None,
    unit: float | None = None,
    probe_texts: int = 8,
) -> list[EffectHit]:
    """Contrastive ``hits`` re-ranked by the steering probe, best first (``effect_ranked`` without the search)."""
    from qwenscope.steer.probe import probe_effects
    from qwenscope.steer.strength import steering_unit

    if not hits or probe_texts < 1:
        raise QwenscopeError(
            f"rank_by_effect needs at least one hit and one probe text, got {len(hits)} and {probe_texts}"
        )
    hook = check_sae_fits(sae, model, hookpoint).name
    unit = steering_unit(model, tokenizer, hook) if unit is None else unit
    effects = probe_effects(
        model,
        tokenizer,
        sae,
        [h.feature for h in hits],
        list(positive)[:probe_texts],
        list(negative)[:probe_texts],
        alphas,
        unit=unit,
        hookpoint=hook,
    )
    gain_pos, gain_neg = effects.gain_pos.mean(1), effects.gain_neg.mean(1)  # (n, n_alphas) -> (n,)
    ranked = [
        EffectHit(
            h.feature,
            float(gain_pos[i] - gain_neg[i]),
            float(gain_pos[i]),
            float(gain_neg[i]),
            h.rate_pos,
            h.rate_neg,
            i,
        )
        for i, h in enumerate(hits)
    ]
    return sorted(ranked, key=lambda e: -e.score)


@torch.no_grad()
def firing_profile(
    model: nn.Module, tokenizer, sae: Sae, hookpoint: str, texts: Sequence[str], what: str = "texts"
) -> tuple[Tensor, Tensor]:
    """(firing rate, mean activation), both (d_sae,) float64, over the scored tokens of ``texts``."""
    if isinstance(texts, str) or not texts:
        raise QwenscopeError(f"the {what} texts are empty; pass a list of at least one text")
    if any(not t.strip() for t in texts):
        raise QwenscopeError(f"one of the {what} texts is empty; remove it or write some text")
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    total = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    n = 0
    for acts, idx in _scored_codes(model, tokenizer, sae, hookpoint, list(texts)):
        fired += torch.bincount(idx[acts > 0], minlength=sae.d_sae)
        total += torch.bincount(idx.reshape(-1), weights=acts.reshape(-1).double(), minlength=sae.d_sae)
        n += len(acts)
    if n == 0:
        raise QwenscopeError(f"the {what} texts have no token past the first; use texts of at least two tokens")
    return (fired / n).cpu(), (total / n).cpu()


def _scored_codes(model, tokenizer, sae: Sae, hookpoint: str, texts: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
    """Sparse codes (n, k) of the scored tokens of ``texts``, a few texts per forward in their order (exact)."""
    ids = tokenize_texts(tokenizer, texts, max_tokens=None)
    widest = _TEXT_BATCH * max(map(len, ids))  # no cap on a batch's tokens: always _TEXT_BATCH texts
    for batch in read_batches(
        model,
        tokenizer,
        ids,
        [hookpoint],
        skip_first=True,
        batch_size=_TEXT_BATCH,
        max_batch_tokens=widest,
        by_length=False,
    ):
        acts = batch.acts[hookpoint]
        code = sae.encode_sparse(acts[batch.keep.to(acts.device)].to(sae.device))  # (n, d) -> (n, k)
        yield code.top_acts, code.top_indices


@torch.no_grad()
def by_token(model: nn.Module, tokenizer, sae: Sae, token: str, top: int = 10) -> list[tuple[int, float]]:
    """The ``top`` features whose decoder directions most promote ``token`` (its logit-lens column), strongest first."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise QwenscopeError(f"{token!r} is not one token: it tokenises to {pieces}; pass one of those tokens")
    head, weight = output_head(model)
    column = weight[ids[0]].float()  # (d,)
    logits = torch.cat(
        [unembed(model, sae.W_dec[s : s + _DIRECTIONS_CHUNK]) @ column for s in range(0, sae.d_sae, _DIRECTIONS_CHUNK)]
    )
    bias = getattr(head, "bias", None)
    if isinstance(bias, Tensor):
        logits += bias[ids[0]].float()
    values, features = logits.topk(min(top, sae.d_sae))
    return [(int(f), float(v)) for f, v in zip(features, values)]


def by_label(store: FeatureStore, query: str, top: int = 20) -> list[int]:
    """Feature ids whose label, promoted tokens or top contexts match ``query`` (``FeatureStore.search_label``)."""
    return store.search_label(query, top)
