"""Auto-interpretability scoring: does a feature's explanation let a language model predict where it fires?

    chat = OpenAIChat("http://127.0.0.1:8000/v1", "smollm2-135m")       # any endpoint, or HFChat(model, tokenizer)
    det = score_detection(chat, "words about the sea", activating, others)   # Score: accuracy, F1, AUROC ...
    fuz = score_fuzzing(chat, "words about the sea", activating)
    floor = score_detection(chat, NULL_EXPLANATION, activating, others)      # the same examples, no explanation

Two scorers, as in EleutherAI's delphi ("Automatically Interpreting Millions of Features in LLMs", Paulo et al.):

- **detection**: the scorer sees the explanation and a shuffled batch of text examples, some where the feature fires
  (``activating``), some where it does not, and answers for each whether the feature fires in it;
- **fuzzing**: the scorer sees activating examples in which some tokens are marked ``<<like this>>``: either the
  tokens where the feature fires most (correct), or as many tokens picked at random (incorrect), half of each, and
  answers for each whether the marks fit the explanation.

Two ways to ask (``by``). ``list``, delphi's: ten examples per prompt, answered as a JSON list of 0/1; a batch whose
answer cannot be read counts as failed (reported, not guessed). ``logprob``, for local models (``HFChat``): one
example per prompt, and the scorer's p(yes) of its first answer token (``HFChat.yes_probability``) is the score, so
no answer is unreadable and AUROC is defined (delphi's ``log_prob`` option); "fires" is p(yes) > 0.5. ``auto`` picks
``logprob`` where the scorer has it. Scores: accuracy, balanced accuracy, precision, recall and F1 of the "fires" /
"correct" answers, and AUROC of p(yes) (``logprob`` only). Every
score should be read beside its **null floor**: the same examples scored with ``NULL_EXPLANATION`` ("none of them"),
what the scorer gets without any explanation (balanced accuracy 0.5 for a scorer that reads nothing; more when the
examples themselves give the answer away). delphi's protocol scores 50 activating and 50 other examples per feature.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.models.chat import Chat

logger = logging.getLogger(__name__)

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
    auroc: float | None = None
    """AUROC of the scorer's p(yes) (``by="logprob"``; None for list answers)."""

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


DETECTION_ONE = """A feature of a language model fires on text that matches this explanation: {explanation}

Text: {example}

Does the feature fire in this text? Answer yes or no."""

FUZZING_ONE = """A feature of a language model fires on text that matches this explanation: {explanation}

In this text some tokens are marked <<like this>>: {example}

Are the marked tokens the ones the explanation describes? Answer yes or no."""

SCORING = ("auto", "list", "logprob")
"""How the scorer is asked (the module doc)."""


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


def _auroc(truth: Sequence[int], scores: Sequence[float]) -> float | None:
    """scikit-learn's AUROC of ``scores`` against ``truth``; None without both a positive and a negative."""
    from sklearn.metrics import roc_auc_score

    if len(set(truth)) < 2:
        return None
    return float(roc_auc_score(truth, scores))


def _metrics(truth: list[int], answers: list[int], failed: int, auroc: float | None = None) -> Score:
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
        auroc=auroc,
    )


def resolve_scoring(chat: Chat, by: str) -> str:
    """The scoring ``by`` stands for with this scorer: auto is logprob where the scorer has p(yes), else list."""
    if by not in SCORING:
        raise QwenscopeError(f"unknown scoring {by!r}; choose from {', '.join(SCORING)}")
    has = callable(getattr(chat, "yes_probability", None))
    if by == "logprob" and not has:
        raise QwenscopeError("logprob scoring needs a local model (HFChat); score an endpoint with by='list'")
    return "logprob" if by == "auto" and has else ("list" if by == "auto" else by)


def _score(
    chat: Chat,
    templates: tuple[str, str],
    explanation: str,
    items: list[tuple[str, int]],
    batch: int,
    seed: int,
    by: str,
) -> Score:
    if not explanation.strip():
        raise QwenscopeError("the explanation is empty; pass the text to score (or NULL_EXPLANATION for the floor)")
    if batch < 1:
        raise QwenscopeError(f"batch must be at least 1, got {batch}")
    random.Random(seed).shuffle(items)
    if resolve_scoring(chat, by) == "logprob":
        one = templates[1]
        prompts = [one.format(explanation=explanation.strip(), example=t) for t, _ in items]
        p = chat.yes_probability(prompts)  # type: ignore[attr-defined]
        labels = [y for _, y in items]
        return _metrics(labels, [int(x > 0.5) for x in p], 0, _auroc(labels, p))
    truth: list[int] = []
    answers: list[int] = []
    failed = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompt = templates[0].format(
            n=len(chunk), explanation=explanation.strip(), examples=_numbered([t for t, _ in chunk])
        )
        got = parse_answers(chat.complete(prompt, max_tokens=64), len(chunk))
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
    chat: Chat,
    explanation: str,
    activating: Sequence[Example],
    others: Sequence[Example],
    *,
    batch: int = BATCH,
    seed: int = 0,
    by: str = "auto",
) -> Score:
    """Detection (the module doc): how well the scorer, given ``explanation``, tells ``activating`` from ``others``."""
    if not activating or not others:
        raise QwenscopeError("detection needs activating and non-activating examples; pass both")
    items = [(e.text, 1) for e in activating] + [(e.text, 0) for e in others]
    return _score(chat, (DETECTION_PROMPT, DETECTION_ONE), explanation, items, batch, seed, by)


def score_fuzzing(
    chat: Chat,
    explanation: str,
    activating: Sequence[Example],
    *,
    batch: int = BATCH,
    seed: int = 0,
    by: str = "auto",
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
    return _score(chat, (FUZZING_PROMPT, FUZZING_ONE), explanation, items, batch, seed, by)
