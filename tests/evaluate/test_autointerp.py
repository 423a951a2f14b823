"""Auto-interpretability scoring against hand-scored examples, the null floor, answer parsing, one-line errors."""

import re

import pytest

from qwenscope import QwenscopeError
from qwenscope.evaluate.autointerp import (
    NULL_EXPLANATION,
    Example,
    parse_answers,
    score_detection,
    score_fuzzing,
)
from qwenscope.models.chat import OpenAIChat

SEA = [Example([" The", " sea", " was", " calm"], [0, 5.0, 0, 0]), Example([" waves", " broke"], [3.0, 1.0])]
SEA += [Example([" a", " ship", " sailed"], [0, 4.0, 0.5]), Example([" the", " tide", " rose"], [0, 2.0, 0])]
OTHER = [Example([" bread", " rises"], [0, 0]), Example([" tax", " forms"], [0, 0]), Example([" a", " bike"], [0, 0])]


def examples_in(prompt: str) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", prompt, re.M)


class Scripted:
    """A chat client whose answers a function writes."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        return self.answer(prompt)


def keyed(answers: dict[str, int]) -> Scripted:
    """A scorer that answers each example from a hand-written key (the hand scoring)."""
    return Scripted(lambda prompt: str([answers[t] for t in examples_in(prompt)]))


class Probabilities(Scripted):
    """A local scorer whose p(yes) per one-example prompt comes from a key of texts."""

    def __init__(self, key: dict[str, float]) -> None:
        super().__init__(lambda prompt: "")
        self.key, self.prompts = key, []

    def yes_probability(self, prompts):
        self.prompts += prompts
        return [next(p for t, p in self.key.items() if f"Text: {t}" in q or f"like this>>: {t}" in q) for q in prompts]


def test_detection_against_hand_scored_answers():
    # the hand scoring: three of the four sea texts found, and "a bike" wrongly flagged
    key = {" The sea was calm": 1, " waves broke": 1, " a ship sailed": 1, " the tide rose": 0}
    key |= {" bread rises": 0, " tax forms": 0, " a bike": 1}
    s = score_detection(keyed(key), "words about the sea", SEA, OTHER, batch=3)
    # tp 3, fn 1, tn 2, fp 1
    assert (s.n, s.failed) == (7, 0)
    assert s.accuracy == pytest.approx(5 / 7) and s.recall == pytest.approx(3 / 4)
    assert s.precision == pytest.approx(3 / 4) and s.f1 == pytest.approx(3 / 4)
    assert s.balanced_accuracy == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_the_null_floor_of_a_scorer_that_reads_nothing():
    says_no = Scripted(lambda prompt: str([0] * len(examples_in(prompt))))
    floor = score_detection(says_no, NULL_EXPLANATION, SEA, OTHER)
    assert floor.balanced_accuracy == 0.5 and floor.recall == 0.0 and floor.f1 == 0.0
    seen = []
    score_detection(Scripted(lambda p: seen.append(p) or str([0] * len(examples_in(p)))), NULL_EXPLANATION, SEA, OTHER)
    assert "Explanation: none of them" in seen[0]


def test_fuzzing_marks_the_most_active_tokens_or_random_ones():
    prompts = []

    def truthful(prompt: str) -> str:  # answers 1 exactly when the marks sit on a sea word
        prompts.append(prompt)
        sea = {"sea", "waves", "ship", "tide"}
        return str([int(any(m.strip() in sea for m in re.findall(r"<<(.*?)>>", t))) for t in examples_in(prompt)])

    s = score_fuzzing(Scripted(truthful), "sea words", SEA, batch=4)
    texts = examples_in(prompts[0])
    assert " The<< sea>> was calm" in texts and " a<< ship>> sailed" in texts  # examples 0 and 2: marked right
    assert s.accuracy == 1.0 and s.n == 4  # examples 1 and 3: as many marks, elsewhere


def test_answers_are_parsed_or_the_batch_counts_as_failed():
    assert parse_answers("Sure! [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_answers("[true, false]", 2) == [1, 0]
    assert parse_answers("[1, 0] then [1, 1, 0]", 3) == [1, 1, 0]
    assert parse_answers("[2, 0, 1]", 3) is None and parse_answers("yes no yes", 3) is None
    s = score_detection(Scripted(lambda p: "I think so"), "sea", SEA, OTHER, batch=4)
    assert (s.n, s.failed, s.accuracy) == (0, 7, None)


def test_errors_are_one_line():
    with pytest.raises(QwenscopeError, match="the explanation is empty"):
        score_detection(keyed({}), " ", SEA, OTHER)
    with pytest.raises(QwenscopeError, match="one activation per token"):
        Example(["a"], [1.0, 2.0])
    with pytest.raises(QwenscopeError, match="activating example 0 has no token where the feature fires"):
        score_fuzzing(keyed({}), "x", [Example(["a"], [0.0]), Example(["b"], [1.0])])
    with pytest.raises(QwenscopeError, match="logprob scoring needs a local model"):
        score_detection(keyed({}), "sea", SEA, OTHER, by="logprob")
    with pytest.raises(QwenscopeError, match="unknown scoring 'votes'"):
        score_detection(keyed({}), "sea", SEA, OTHER, by="votes")
    chat = OpenAIChat("http://127.0.0.1:9/v1", "m", timeout=2)  # port 9: nothing listens
    with pytest.raises(QwenscopeError) as err:
        chat.check("pass a local model", "explainer")
    msg = str(err.value)
    assert "explainer endpoint" in msg and "unreachable" in msg and "pass a local model" in msg and "\n" not in msg


def test_logprob_scoring_asks_one_example_at_a_time_and_ranks_by_p_yes():
    # hand scoring: p(yes) ranks three sea texts above every other text, " the tide rose" below " tax forms"
    key = {" The sea was calm": 0.9, " waves broke": 0.8, " a ship sailed": 0.7, " the tide rose": 0.3}
    key |= {" bread rises": 0.2, " tax forms": 0.4, " a bike": 0.1}
    scorer = Probabilities(key)
    s = score_detection(scorer, "words about the sea", SEA, OTHER)  # auto: logprob, as the scorer has p(yes)
    assert len(scorer.prompts) == 7 and all("Answer yes or no." in p for p in scorer.prompts)
    assert (s.n, s.failed) == (7, 0)
    # AUROC: of the 4 x 3 (sea, other) pairs, only (tide 0.3, tax 0.4) is misordered
    assert s.auroc == pytest.approx(11 / 12)
    # fires = p > 0.5: tp 3, fn 1, tn 3, fp 0
    assert s.accuracy == pytest.approx(6 / 7) and s.precision == 1.0 and s.recall == pytest.approx(3 / 4)
    listed = score_detection(keyed(dict.fromkeys(key, 0)), "sea", SEA, OTHER)  # auto on a text-only scorer: lists
    assert listed.auroc is None and listed.n == 7
