"""Auto-interpretability scoring: does a feature's explanation let a language model predict where it fires?

    llm = openai_llm("http://127.0.0.1:8000/v1", "smollm2-135m")       # any OpenAI-compatible endpoint (or hf_llm)
    det = score_detection(llm, "words about the sea", activating, others)   # Score: accuracy, F1, ...
    fuz = score_fuzzing(llm, "words about the sea", activating)
    floor = score_detection(llm, NULL_EXPLANATION, activating, others)      # the same examples, no explanation

Two scorers, as in EleutherAI's delphi ("Automatically Interpreting Millions of Features in LLMs", Paulo et al.):

- **detection**: the scorer sees the explanation and a shuffled batch of text examples, some where the feature fires
  (``activating``), some where it does not, and answers for each whether the feature fires in it;
- **fuzzing**: the scorer sees activating examples in which some tokens are marked ``<<like this>>``: either the
  tokens where the feature fires most (correct), or as many tokens picked at random (incorrect), half of each, and
  answers for each whether the marks fit the explanation.

Answers are a JSON list of 0/1, one per example; a batch whose answer cannot be read counts as failed (reported,
not guessed). Scores: accuracy, balanced accuracy, precision, recall and F1 of the "fires" / "correct" answers. Every
score should be read beside its **null floor**: the same examples scored with ``NULL_EXPLANATION`` ("none of them"),
what the scorer gets without any explanation (balanced accuracy 0.5 for a scorer that reads nothing; more when the
examples themselves give the answer away). delphi's protocol scores 50 activating and 50 other examples per feature.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qwenscope.errors import QwenscopeError

logger = logging.getLogger(__name__)

LLM = Callable[[str], str]
"""A scorer: a prompt in, the model's text out."""
NULL_EXPLANATION = "none of them"
"""The explanation of the null floor."""
BATCH = 10
"""Examples per scoring prompt."""


@dataclass
class Example:
    """A text example of a feature: its tokens and the feature's activation at each."""

    tokens: list[str]
    acts: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.acts) or not self.tokens:
            raise QwenscopeError(
                f"an example needs one activation per token, got {len(self.tokens)} tokens, {len(self.acts)} acts"
            )

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def marked(self, positions: set[int]) -> str:
        """The text with the tokens at ``positions`` marked ``<<token>>`` (runs of marked tokens marked once)."""
        out, inside = [], False
        for i, tok in enumerate(self.tokens):
            if i in positions and not inside:
                out.append("<<")
                inside = True
            if i not in positions and inside:
                out.append(">>")
                inside = False
            out.append(tok)
        return "".join(out) + (">>" if inside else "")


@dataclass
class Score:
    """One scorer's result on one explanation."""

    accuracy: float | None
    balanced_accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    n: int
    """Examples answered."""
    failed: int
    """Examples in batches whose answer could not be read."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DETECTION_PROMPT = """You will read an explanation of a feature of a language model and {n} numbered text examples.
The feature fires on text that matches the explanation. For each example, answer 1 if the feature fires in it,
else 0.

Explanation: {explanation}

{examples}

Answer with a JSON list of {n} numbers (0 or 1), one per example, in order, and nothing else."""

FUZZING_PROMPT = """You will read an explanation of a feature of a language model and {n} numbered text examples.
In each example some tokens are marked <<like this>>. Answer 1 if the marked tokens are the ones the explanation
describes, else 0.

Explanation: {explanation}

{examples}

Answer with a JSON list of {n} numbers (0 or 1), one per example, in order, and nothing else."""


def parse_answers(text: str, n: int) -> list[int] | None:
    """The first JSON list of ``n`` zeros and ones in ``text`` (booleans allowed), else None."""
    for match in re.finditer(r"\[[^\[\]]*\]", text):
        try:
            values = json.loads(match.group(0).lower())
        except json.JSONDecodeError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) for v in values):
            return [int(v) for v in values]
    return None


def _numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))


def _metrics(truth: list[int], answers: list[int], failed: int) -> Score:
    n = len(truth)
    tp = sum(1 for t, a in zip(truth, answers) if t and a)
    tn = sum(1 for t, a in zip(truth, answers) if not t and not a)
    fp = sum(1 for t, a in zip(truth, answers) if not t and a)
    fn = sum(1 for t, a in zip(truth, answers) if t and not a)
    pos, neg = tp + fn, tn + fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / pos if pos else None
    specificity = tn / neg if neg else None
    f1 = 2 * precision * recall / (precision + recall) if recall and precision + recall else (0.0 if pos else None)
    return Score(
        accuracy=(tp + tn) / n if n else None,
        balanced_accuracy=(recall + specificity) / 2 if recall is not None and specificity is not None else None,
        precision=precision if n else None,
        recall=recall,
        f1=f1,
        n=n,
        failed=failed,
    )


def _score(llm: LLM, template: str, explanation: str, items: list[tuple[str, int]], batch: int, seed: int) -> Score:
    if not explanation.strip():
        raise QwenscopeError("the explanation is empty; pass the text to score (or NULL_EXPLANATION for the floor)")
    if batch < 1:
        raise QwenscopeError(f"batch must be at least 1, got {batch}")
    random.Random(seed).shuffle(items)
    truth: list[int] = []
    answers: list[int] = []
    failed = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompt = template.format(
            n=len(chunk), explanation=explanation.strip(), examples=_numbered([t for t, _ in chunk])
        )
        got = parse_answers(llm(prompt), len(chunk))
        if got is None:
            failed += len(chunk)
            logger.warning(
                "could not read the scorer's answer to a batch of %d examples; counted as failed", len(chunk)
            )
            continue
        truth += [y for _, y in chunk]
        answers += got
    return _metrics(truth, answers, failed)


def score_detection(
    llm: LLM,
    explanation: str,
    activating: Sequence[Example],
    others: Sequence[Example],
    *,
    batch: int = BATCH,
    seed: int = 0,
) -> Score:
    """Detection (the module doc): how well the scorer, given ``explanation``, tells ``activating`` from ``others``."""
    if not activating or not others:
        raise QwenscopeError("detection needs activating and non-activating examples; pass both")
    items = [(e.text, 1) for e in activating] + [(e.text, 0) for e in others]
    return _score(llm, DETECTION_PROMPT, explanation, items, batch, seed)


def score_fuzzing(
    llm: LLM,
    explanation: str,
    activating: Sequence[Example],
    *,
    batch: int = BATCH,
    seed: int = 0,
) -> Score:
    """Fuzzing (the module doc): half of ``activating`` marked at their most active tokens, half at as many random
    tokens (never exactly the right ones where another choice exists); can the scorer tell which?"""
    if len(activating) < 2:
        raise QwenscopeError("fuzzing needs at least two activating examples (one marked right, one wrong)")
    rng = random.Random(seed)
    items = []
    for i, e in enumerate(activating):
        firing = [j for j, a in enumerate(e.acts) if a > 0]
        if not firing:
            raise QwenscopeError(f"activating example {i} has no token where the feature fires")
        top = max(e.acts)
        right = {j for j in firing if e.acts[j] >= 0.5 * top}
        if i % 2 == 0:
            items.append((e.marked(right), 1))
            continue
        candidates = [j for j in range(len(e.tokens)) if j not in right] or list(range(len(e.tokens)))
        wrong = set(rng.sample(candidates, min(len(right), len(candidates))))
        items.append((e.marked(wrong), 0))
    return _score(llm, FUZZING_PROMPT, explanation, items, batch, seed)


def openai_llm(base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0) -> LLM:
    """A scorer on an OpenAI-compatible chat endpoint (``qwenscope serve`` included), greedy. An endpoint that does
    not answer is one clear error that names the local fallback."""
    import httpx

    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ask(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 64}
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as e:
            raise QwenscopeError(
                f"the explainer endpoint {base_url} does not answer ({type(e).__name__}); start it (qwenscope serve) "
                "or score with a local model: hf_llm(model, tokenizer)"
            ) from None
        if response.status_code != 200:
            raise QwenscopeError(
                f"the explainer endpoint {base_url} answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()["choices"][0]["message"]["content"]

    return ask


def hf_llm(model: Any, tokenizer: Any, *, max_new_tokens: int = 64) -> LLM:
    """A scorer on a local Hugging Face causal LM (through its chat template when it has one), greedy."""
    from qwenscope.steer.generate import generate_text

    def ask(prompt: str) -> str:
        return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens)

    return ask
