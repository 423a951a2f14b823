"""Feature labels: written by an LLM from a feature's top contexts and logit lens, scored by detection, or built
from the statistics alone when there is no LLM.

    labeller = OpenAILabeller("http://localhost:8000/v1", "Qwen/Qwen3-8B")   # any OpenAI-compatible server
    labeller = HFLabeller(model, tokenizer)                                  # or a local HF causal LM
    label_store(store, labeller)                                             # labels + detection scores
    label_store(store, None)                                                 # fallback labels, no LLM

Detection score: the labeller is shown one context at a time and asked whether the label applies; the score is
the balanced accuracy over the feature's own top contexts (positives) and other features' top contexts
(negatives). Negatives are an approximation: the feature might fire on another feature's context too.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.features.store import Context, FeatureInfo, FeatureStore
from qwenscope.features.text import join_pieces, piece_at
from qwenscope.models.chat import Chat, HFChat, OpenAIChat, says_yes, strip_thinking

logger = logging.getLogger(__name__)

SYSTEM = "You label features of a language model's sparse autoencoder. Answer tersely."
_MAX_LABEL_CHARS = 80


Labeller = Chat
"""Anything with ``complete(prompt, max_tokens)``: ``qwenscope.models.chat``'s clients."""


class OpenAILabeller(OpenAIChat):
    """An OpenAI-compatible endpoint (``qwenscope.models.chat.OpenAIChat``) with the labelling system prompt."""

    system = SYSTEM


class HFLabeller(HFChat):
    """A local HF causal LM (``qwenscope.models.chat.HFChat``) with the labelling system prompt."""

    system = SYSTEM


# ---------------------------------------------------------------- prompts
def context_text(context: Context, mark: bool = True) -> str:
    """A context's text; with ``mark``, its max-activating token is wrapped in << >> (a character split over several
    tokens counts as one)."""
    units = join_pieces(context.tokens, context.acts)
    top = max(range(len(units)), key=lambda i: units[i][1]) if units else -1
    return "".join(f"<<{t}>>" if mark and i == top else t for i, (t, _) in enumerate(units))


def label_prompt(info: FeatureInfo, n_contexts: int = 8) -> str:
    lines = [f"Feature {info.id} fires on the tokens marked << >> in these texts:"]
    lines += [f"{i + 1}. {context_text(c)!r}" for i, c in enumerate(info.contexts[:n_contexts])]
    if info.promoted:
        lines.append("Its decoder direction promotes the tokens: " + ", ".join(repr(t) for t, _ in info.promoted[:10]))
    lines.append("Reply with a label of at most 8 words for what the feature detects, nothing else.")
    return "\n".join(lines)


def clean_label(answer: str) -> str:
    """The first non-empty line of an answer, without quotes, 'Label:' prefixes or thinking blocks."""
    answer = strip_thinking(answer)
    line = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
    line = re.sub(r"^(label|answer)\s*:\s*", "", line.strip(" \"'`*."), flags=re.I)
    return line.strip(" \"'`*.")[:_MAX_LABEL_CHARS]


def label_feature(info: FeatureInfo, labeller: Labeller) -> str:
    """A short label for a feature from its top contexts and logit lens (the fallback label if it never fired)."""
    if not info.contexts:
        return fallback_label(info)
    return clean_label(labeller.complete(label_prompt(info))) or fallback_label(info)


def fallback_label(info: FeatureInfo) -> str:
    """A label without an LLM: the commonest max-activating tokens of the top contexts and the top promoted tokens."""
    if info.count == 0 or not info.contexts:
        return "dead feature (never fired)"
    tops = Counter(piece_at(c.tokens, max(range(len(c.acts)), key=c.acts.__getitem__)) for c in info.contexts if c.acts)
    fires = ", ".join(repr(t) for t, _ in tops.most_common(3))
    promotes = ", ".join(repr(t) for t, _ in info.promoted[:3])
    return f"fires on {fires}" + (f"; promotes {promotes}" if promotes else "")


# ---------------------------------------------------------------- detection
def applies(labeller: Labeller, label: str, text: str) -> bool:
    prompt = (
        f"Feature description: {label}\nText: {text!r}\n"
        "Does the description apply to some part of the text? Answer yes or no."
    )
    return says_yes(labeller.complete(prompt, max_tokens=5))


def detection_score(labeller: Labeller, label: str, positives: Sequence[str], negatives: Sequence[str]) -> float:
    """Balanced accuracy of the labeller telling ``positives`` from ``negatives`` given only the label."""
    if not positives or not negatives:
        raise QwenscopeError("detection needs at least one positive and one negative text")
    hit = sum(applies(labeller, label, t) for t in positives) / len(positives)
    false_alarm = sum(applies(labeller, label, t) for t in negatives) / len(negatives)
    return 0.5 * (hit + 1.0 - false_alarm)


def label_store(
    store: FeatureStore,
    labeller: Labeller | None,
    features: Iterable[int] | None = None,
    *,
    n_detect: int = 4,
    seed: int = 0,
) -> dict[int, tuple[str, float | None]]:
    """Label ``features`` (default: every feature that fired) and save the labels into the store.

    With a labeller: its label and a detection score over ``n_detect`` of the feature's contexts and ``n_detect``
    contexts of other random features (0 skips scoring). Without: ``fallback_label`` and no score.
    """
    table = store.table()
    ids = [int(i) for i in (features if features is not None else table.index[table["count"] > 0])]
    alive = [int(i) for i in table.index[table["count"] > 0]]
    rng = random.Random(seed)
    labels: dict[int, tuple[str, float | None]] = {}
    for i in tqdm(ids, desc="labels", unit="feature", disable=len(ids) < 20):
        info = store.feature(i)
        if labeller is None or not info.contexts:
            labels[i] = (fallback_label(info), None)
            continue
        label = label_feature(info, labeller)
        score = None
        others = [j for j in rng.sample(alive, min(len(alive), 4 * n_detect)) if j != i]
        negatives = [context_text(c, mark=False) for j in others for c in store.contexts(j)[:1]][:n_detect]
        if n_detect and negatives:
            positives = [context_text(c, mark=False) for c in info.contexts[:n_detect]]
            score = detection_score(labeller, label, positives, negatives)
        labels[i] = (label, score)
    store.set_labels(labels)
    logger.info("labelled %d features of %s", len(labels), store.folder)
    return labels
