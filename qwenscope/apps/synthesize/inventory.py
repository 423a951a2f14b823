"""Which SAE features a target description needs, three ways, and which of them a seed corpus never turns on.

    contrast_inventory(model, tokenizer, sae, hook, positives, negatives, top=20, min_delta=0.2)
    label_inventory(store, "profanity", hook, top=20)                  # the feature store's labels
    judge_inventory(labeller, store, "offensive language", [12, 40, ...], hook)   # an LLM says yes/no per feature
    unreached(model, tokenizer, sae, hook, targets, seed_texts)        # the targets no seed text activates

Contrast ranks features by ``Δ = P(fires | positive) − P(fires | negative)`` over texts ("fires" = active at some
token, ``qwenscope.features.rank_features``) and keeps those with ``Δ >= min_delta``. The judge sees each candidate's
label and top contexts (tokens marked << >>) and answers yes or no; any OpenAI-compatible endpoint
(``OpenAILabeller``) or a local HF model (``HFLabeller``) serves, as for labelling.
Each returns ``Target`` records, best first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qwenscope import QwenscopeError, Sae, check_sae_fits
from qwenscope.features import (
    MAX_TOKENS,
    EncodeConfig,
    FeatureStore,
    Labeller,
    by_label,
    context_text,
    encode_texts,
    rank_features,
)
from qwenscope.models import OpenAIChat, says_yes

logger = logging.getLogger(__name__)

FALLBACK = "use --inventory contrast, or --judge-model <local HF model>"
"""What to do when the judge endpoint does not answer."""


@dataclass(frozen=True)
class Target:
    """One feature the synthesised data should turn on."""

    hookpoint: str
    id: int
    score: float
    """How relevant the inventory found it (contrast: Δ; label: the rank's reverse; judge: 1 for yes)."""
    why: str
    """Why it is in the inventory, in words."""

    @property
    def key(self) -> str:
        return f"{self.hookpoint}#{self.id}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_ids(ids: Iterable[int], sae: Sae) -> None:
    """One line when a feature id is outside the SAE's width."""
    bad = [int(i) for i in ids if not 0 <= int(i) < sae.d_sae]
    if bad:
        raise QwenscopeError(f"feature {bad[0]} is beyond this SAE's width: its ids run 0..{sae.d_sae - 1}")


# ---------------------------------------------------------------- contrast
def contrast_inventory(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hookpoint: str | None,
    positives: Sequence[str],
    negatives: Sequence[str],
    *,
    top: int = 20,
    min_delta: float = 0.2,
    max_tokens: int = MAX_TOKENS,
    progress: bool = False,
) -> list[Target]:
    """Up to ``top`` features of largest ``Δ`` between ``positives`` and ``negatives``, with ``Δ >= min_delta`` (and
    ``Δ > 0``: a feature as frequent on both sides says nothing about the target)."""
    if not positives or not negatives:
        raise QwenscopeError(
            "the contrast inventory needs positive and negative texts; pass --positives and "
            "--negatives (or use --inventory label)"
        )
    if top < 1:
        raise QwenscopeError(f"--top must be at least 1, got {top}")
    hook = check_sae_fits(sae, model, hookpoint).name
    texts = [*positives, *negatives]
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    cfg = EncodeConfig(max_tokens=max_tokens)
    pooled = encode_texts(model, tokenizer, texts, [sae], [hook], cfg, progress=progress)[0]
    ranked = rank_features(pooled.fires, labels, hook, top)
    n_pos, n_neg = len(positives), len(negatives)
    out = [
        Target(
            hook,
            f.id,
            round(f.delta, 4),
            f"contrast: Δ={f.delta:+.3f} (fires on {round(f.p_pos * n_pos)}/"
            f"{n_pos} positives, {round(f.p_neg * n_neg)}/{n_neg} negatives)",
        )
        for f in ranked
        if f.delta >= min_delta and f.delta > 0
    ]
    logger.info(
        "contrast inventory: %d features with Δ >= %.2f (best Δ %.3f)",
        len(out),
        min_delta,
        ranked[0].delta if ranked else float("nan"),
    )
    return out


# ---------------------------------------------------------------- labels
def label_inventory(store: FeatureStore, query: str, hookpoint: str, top: int = 20) -> list[Target]:
    """Features whose label, promoted tokens or top contexts match ``query`` (``features.search.by_label``)."""
    ids = by_label(store, query, top)
    out = []
    for rank_, i in enumerate(ids):
        label = store.feature(i).label or "no label"
        out.append(Target(hookpoint, i, float(len(ids) - rank_), f"label search {query!r}: {label}"))
    return out


# ---------------------------------------------------------------- judge
def judge_prompt(description: str, label: str | None, contexts: Sequence[str]) -> str:
    lines = [f"Target: {description}", "A feature of a language model fires on the tokens marked << >> in these texts:"]
    lines += [f"{i + 1}. {c!r}" for i, c in enumerate(contexts)]
    if label:
        lines.append(f"Its label: {label}")
    lines.append("Does this feature detect the target? Answer yes or no.")
    return "\n".join(lines)


def check_judge(labeller: Labeller) -> None:
    """One line naming the fallback when an OpenAI-compatible judge endpoint cannot be reached."""
    if isinstance(labeller, OpenAIChat):
        labeller.check(FALLBACK, "judge")


def judge_inventory(
    labeller: Labeller,
    store: FeatureStore,
    description: str,
    candidates: Sequence[int],
    hookpoint: str,
    *,
    n_contexts: int = 5,
    progress: bool = False,
) -> list[Target]:
    """The ``candidates`` the judge says detect ``description``, from their labels and top contexts in ``store``."""
    if not description.strip():
        raise QwenscopeError("--description is empty; say what the synthesised data should contain")
    if not candidates:
        raise QwenscopeError("the judge has no candidate features; pass --positives/--negatives or a label query")
    check_judge(labeller)
    out = []
    for i in tqdm(list(dict.fromkeys(int(c) for c in candidates)), desc="judging features", disable=not progress):
        info = store.feature(i)
        contexts = [context_text(c) for c in info.contexts[:n_contexts]]
        if not contexts:
            continue  # never fired in the store: nothing to judge it by
        answer = labeller.complete(judge_prompt(description, info.label, contexts), max_tokens=5)
        if says_yes(answer):
            out.append(Target(hookpoint, i, 1.0, f"judge: yes ({info.label or 'no label'})"))
    logger.info("judge inventory: %d of %d candidates detect %r", len(out), len(candidates), description)
    return out


# ---------------------------------------------------------------- the seed's gaps
def seed_counts(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hookpoint: str | None,
    seed_texts: Sequence[str],
    *,
    max_tokens: int = MAX_TOKENS,
    progress: bool = False,
) -> np.ndarray:
    """(d_sae,) on how many seed texts each feature fires."""
    if not seed_texts:
        raise QwenscopeError("the seed corpus is empty; pass --seed with at least one text")
    hook = check_sae_fits(sae, model, hookpoint).name
    cfg = EncodeConfig(max_tokens=max_tokens)
    pooled = encode_texts(model, tokenizer, seed_texts, [sae], [hook], cfg, progress=progress)[0]
    return np.asarray(pooled.fires.sum(axis=0)).ravel()


def unreached(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hookpoint: str | None,
    targets: Sequence[Target],
    seed_texts: Sequence[str],
    *,
    max_tokens: int = MAX_TOKENS,
    progress: bool = False,
) -> list[Target]:
    """The ``targets`` that fire on no seed text: what the seed corpus lacks."""
    check_ids((t.id for t in targets), sae)
    counts = seed_counts(model, tokenizer, sae, hookpoint, seed_texts, max_tokens=max_tokens, progress=progress)
    out = [t for t in targets if counts[t.id] == 0]
    logger.info(
        "%d of %d inventory features fire on none of the %d seed texts", len(out), len(targets), len(seed_texts)
    )
    return out
