"""An LLM judge of steered generations, as in AxBench (Wu et al. 2025, "AxBench: Steering LLMs? Even Simple Baselines
Outperform Sparse Autoencoders").

    chat = OpenAIChat("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B")     # or HFChat(model, tokenizer): qwenscope.models
    r = judge_generation(chat, "the sea", "Describe your morning.", "I woke to the sound of waves ...")
    r.concept, r.instruction, r.fluency, r.harmonic                    # 2, 1, 2, 1.5
    ratings = judge_generations(chat, "the sea", zip(prompts, outputs), progress=True)
    mean_ratings(ratings)   # {"n": 50, "concept": 1.2, "instruction": 1.6, "fluency": 1.4, "harmonic": 1.1, ...}

Three scores from 0 to 2, each asked in its own prompt: **concept** (does the output bring in the concept: 0 absent,
1 faintly or awkwardly, 2 clearly), **instruction** (is it related to the prompt the model was given, an instruction
or the opening of a text: 0 unrelated, 1 loosely, 2 clearly) and **fluency** (0 broken or repetitive, 1 with clear
flaws, 2 natural). A generation's score is their harmonic mean, 3 / (1/c + 1/i + 1/f), which is 0 when any of them is
0: a steered text must show the concept, stay on the prompt and read well at once.

The judge is asked to reply ``Rating: N``. The first rating in its answer (``Rating: N`` if written, else the first
number; ``<think>`` blocks removed) is read when it is 0, 1 or 2; any other answer, and a reasoning block cut off by
``max_tokens``, is **unreadable**: that score is None, never guessed, the generation has no harmonic mean, and the
count is logged and kept in ``mean_ratings``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.models.chat import Chat, strip_thinking

logger = logging.getLogger(__name__)

SCORES = ("concept", "instruction", "fluency")

_HEAD = (
    "You are grading a short text fragment written by a language model; it may stop in the middle of a sentence.\n\n"
)
_TAIL = '\n\nReply with a single line of the form "Rating: N" (N is 0, 1 or 2) and nothing else.'
_FRAGMENT = 'Fragment:\n"""\n{output}\n"""'

PROMPTS = {
    "concept": _HEAD
    + "How clearly does the fragment bring in the concept below? Judge only whether the concept is there, not the "
    "grammar, the coherence or whether it answers anything.\n\nConcept: {concept}\n\n"
    + _FRAGMENT
    + "\n\nRate 0 if the concept does not appear, 1 if it appears only faintly or awkwardly, 2 if it is clearly "
    "present." + _TAIL,
    "instruction": _HEAD
    + "Is the fragment related to the prompt the model was given (an instruction to answer, or the opening of a "
    "text to continue)? Judge only how related it is, not the grammar, and not any other topic it also brings in."
    "\n\nPrompt: {instruction}\n\n"
    + _FRAGMENT
    + "\n\nRate 0 if it has nothing to do with the prompt, 1 if it is loosely or partly related, 2 if it clearly "
    "addresses the prompt." + _TAIL,
    "fluency": _HEAD
    + "How fluent is the fragment? Judge only whether it reads as natural, grammatical language, not whether it is "
    "complete, on topic or informative.\n\n"
    + _FRAGMENT
    + "\n\nRate 0 if it is not fluent (garbled, broken or repeating itself), 1 if it is mostly readable but has "
    "clear flaws, 2 if it reads naturally." + _TAIL,
}
"""The judge's prompt per score, formatted with ``concept``, ``instruction`` and ``output``."""

_RATING = re.compile(r"rating\W{0,6}(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Rating:
    """The judge's three scores of one generation, each 0, 1 or 2, or None when its answer was unreadable."""

    concept: int | None
    instruction: int | None
    fluency: int | None
    unread: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """The unreadable answers, as the judge wrote them."""

    @property
    def scores(self) -> tuple[int | None, int | None, int | None]:
        return self.concept, self.instruction, self.fluency

    @property
    def harmonic(self) -> float | None:
        """3 / (1/c + 1/i + 1/f); 0 when any score is 0; None when any is unreadable."""
        scores = self.scores
        if any(s is None for s in scores):
            return None
        if 0 in scores:
            return 0.0
        return 3 / sum(1 / s for s in scores if s is not None)

    @property
    def unreadable(self) -> int:
        """How many of the three answers were unreadable."""
        return sum(s is None for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {**dict(zip(SCORES, self.scores)), "harmonic": self.harmonic}


def parse_rating(answer: str) -> int | None:
    """The first rating in ``answer`` if it is 0, 1 or 2, else None (the module doc)."""
    text = strip_thinking(answer).split("<think>")[0]  # an unclosed block: reasoning cut off, no verdict
    found = _RATING.search(text)
    value = found.group(1) if found else (m.group(0) if (m := _NUMBER.search(text)) else None)
    return int(value) if value in ("0", "1", "2") else None


def judge_generation(chat: Chat, concept: str, instruction: str, output: str, *, max_tokens: int = 256) -> Rating:
    """Rate one generation ``output`` of the prompt ``instruction`` for ``concept``: three prompts, one per score.

    ``instruction`` is the prompt as the user wrote it, without any steering instruction added to it; ``max_tokens``
    bounds each answer (a reasoning model needs room to close its ``<think>`` block)."""
    if not concept.strip():
        raise QwenscopeError("the judge's concept is empty; say in words what the steering should bring in")
    if not instruction.strip():
        raise QwenscopeError("the judge's instruction is empty; pass the prompt the model was given")
    values: dict[str, int | None] = {}
    unread = []
    for name in SCORES:
        prompt = PROMPTS[name].format(concept=concept, instruction=instruction, output=output)
        answer = chat.complete(prompt, max_tokens)
        values[name] = parse_rating(answer)
        if values[name] is None:
            logger.debug("unreadable %s rating: %r", name, answer[:200])
            unread.append(answer)
    return Rating(values["concept"], values["instruction"], values["fluency"], tuple(unread))


def judge_generations(
    chat: Chat,
    concept: str,
    instruction_output_pairs: Iterable[tuple[str, str]],
    *,
    max_tokens: int = 256,
    progress: bool = False,
) -> list[Rating]:
    """``judge_generation`` of each (instruction, output) pair, in order; logs how many answers were unreadable."""
    pairs = list(instruction_output_pairs)
    ratings = [
        judge_generation(chat, concept, instruction, output, max_tokens=max_tokens)
        for instruction, output in tqdm(pairs, desc="judging", unit="text", disable=not progress)
    ]
    unread = [a for r in ratings for a in r.unread]
    if unread:
        logger.warning(
            "judge: %d of %d answers unreadable, not counted (first: %r)", len(unread), 3 * len(pairs), unread[0][:80]
        )
    return ratings


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def mean_ratings(ratings: Sequence[Rating]) -> dict[str, Any]:
    """``n`` generations; the mean of each score over its readable answers and of ``harmonic`` over the generations
    with three readable answers (None where there are none); ``unreadable``: how many answers were unreadable."""
    if not ratings:
        raise QwenscopeError("no ratings to average; judge at least one generation")
    out: dict[str, Any] = {"n": len(ratings)}
    for i, name in enumerate(SCORES):
        out[name] = _mean([r.scores[i] for r in ratings])
    out["harmonic"] = _mean([r.harmonic for r in ratings])
    out["unreadable"] = sum(r.unreadable for r in ratings)
    return out
