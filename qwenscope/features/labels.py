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
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.features.store import Context, FeatureInfo, FeatureStore
from qwenscope.features.text import join_pieces, piece_at

logger = logging.getLogger(__name__)

SYSTEM = "You label features of a language model's sparse autoencoder. Answer tersely."
_MAX_LABEL_CHARS = 80


class Labeller(Protocol):
    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        """The model's answer to one user message."""
        ...


class OpenAILabeller:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp, Ollama, OpenAI ...), via httpx.

    ``base_url`` ends in ``/v1``; ``api_key`` defaults to ``$OPENAI_API_KEY`` (none is sent if neither is set).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.client = httpx.Client(headers=headers, timeout=timeout)

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        import httpx

        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        }
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except httpx.HTTPError as error:
            raise QwenscopeError(f"the labeller at {self.url} failed ({error}); check the URL, model and key") from None
        except (KeyError, IndexError, TypeError, ValueError):
            raise QwenscopeError(f"{self.url} did not answer like /v1/chat/completions; check the base URL") from None


class HFLabeller:
    """A local Hugging Face causal LM, greedy, prompted through its chat template when it has one."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            batch = tok(text, return_tensors="pt", add_special_tokens=False)
        else:
            batch = tok(f"{SYSTEM}\n\n{prompt}\n", return_tensors="pt")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
        return str(tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True))


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
    answer = re.sub(r"<think>.*?</think>", "", answer, flags=re.S)
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
    answer = re.sub(r"<think>.*?</think>", "", labeller.complete(prompt, max_tokens=5), flags=re.S)
    return answer.strip().lower().lstrip("\"'*").startswith("yes")


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
