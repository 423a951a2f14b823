"""The LLM judge of steered generations: reading the ratings, the harmonic mean by hand, unreadable answers counted
(never guessed), one prompt per score, and a run through our own server as the judge endpoint."""

from __future__ import annotations

import logging
import re

import pytest

from qwenscope.errors import QwenscopeError
from qwenscope.steer import Rating, judge_generation, judge_generations, mean_ratings, parse_rating

# (score, output) -> the judge's answer
KEY = {
    ("concept", "The waves rolled in."): "Rating: 2",
    ("instruction", "The waves rolled in."): "**1**",
    ("fluency", "The waves rolled in."): "<think>0, or maybe 1</think> Rating: [[2]]",
    ("concept", "tax tax tax"): "Rating: 0",
    ("instruction", "tax tax tax"): "2",
    ("fluency", "tax tax tax"): "0",
    ("concept", "Ships at dawn."): "Rating: 2",
    ("instruction", "Ships at dawn."): "Rating: 2",
    ("fluency", "Ships at dawn."): "I cannot judge this.",
}


class ScriptedChat:
    """A judge that answers from ``KEY``: the score is told by the prompt's own line, the output by its fragment."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        self.prompts.append(prompt)
        score = "concept" if "\nConcept: " in prompt else "instruction" if "\nPrompt: " in prompt else "fluency"
        match = re.search(r'"""\n(.*)\n"""', prompt, re.S)
        assert match is not None
        return KEY[score, match.group(1)]


class Recorded:
    """A chat client that keeps every answer of the client it wraps."""

    def __init__(self, chat) -> None:
        self.chat, self.answers = chat, []

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        self.answers.append(self.chat.complete(prompt, max_tokens))
        return self.answers[-1]


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        ("Rating: 2", 2),
        ("**1**", 1),
        ("<think>0</think> 2", 2),
        ("Rating: [[0]]", 0),
        ("It names 3 ships and a harbour. Rating: 2", 2),  # an explicit rating wins over an earlier number
        ("I would give it 1.", 1),
        ("banana", None),
        ("", None),
        ("Rating: 5", None),
        ("1.5", None),
        ("<think>it is clearly a 2", None),  # reasoning cut off by max_tokens: no verdict
    ],
)
def test_parse_rating(answer, want):
    assert parse_rating(answer) == want


def test_harmonic_mean_by_hand():
    assert Rating(2, 2, 1).harmonic == pytest.approx(3 / (1 / 2 + 1 / 2 + 1))  # 1.5
    assert Rating(2, 1, 1).harmonic == pytest.approx(3 / (1 / 2 + 1 + 1))  # 1.2
    assert Rating(2, 2, 2).harmonic == 2
    assert Rating(0, 2, 2).harmonic == 0 and Rating(2, 2, 0).harmonic == 0
    assert Rating(None, 2, 2).harmonic is None and Rating(0, None, 2).harmonic is None
    assert Rating(2, 2, 1).to_dict() == {"concept": 2, "instruction": 2, "fluency": 1, "harmonic": 1.5}


def test_one_prompt_per_score_holding_the_concept_instruction_and_output():
    chat = ScriptedChat()
    r = judge_generation(chat, "the sea", "Describe your morning.", "The waves rolled in.")
    assert (r.concept, r.instruction, r.fluency, r.harmonic, r.unreadable) == (2, 1, 2, 1.5, 0)
    concept, instruction, fluency = chat.prompts
    assert "the sea" in concept and "Describe your morning." not in concept
    assert "Describe your morning." in instruction and "the sea" not in instruction
    assert "the sea" not in fluency and "Describe your morning." not in fluency
    assert all("The waves rolled in." in p for p in chat.prompts)


def test_unreadable_answers_are_counted_not_guessed(caplog):
    pairs = [("Describe your morning.", "The waves rolled in."), ("Plan a trip.", "tax tax tax")]
    pairs.append(("Name a colour.", "Ships at dawn."))
    with caplog.at_level(logging.WARNING, logger="qwenscope.steer.judge"):
        ratings = judge_generations(ScriptedChat(), "the sea", pairs)
    assert [r.scores for r in ratings] == [(2, 1, 2), (0, 2, 0), (2, 2, None)]
    assert ratings[2].harmonic is None and ratings[2].unread == ("I cannot judge this.",)
    assert "1 of 9 answers unreadable" in caplog.text
    summary = mean_ratings(ratings)
    assert summary == {
        "n": 3,
        "concept": pytest.approx(4 / 3),
        "instruction": pytest.approx(5 / 3),
        "fluency": 1.0,  # (2 + 0) / 2: the unreadable answer is left out, not read as 0
        "harmonic": pytest.approx((1.5 + 0) / 2),
        "unreadable": 1,
    }
    assert mean_ratings([Rating(None, None, None)])["harmonic"] is None


def test_bad_input_is_one_line():
    for concept, instruction in (("", "Plan a trip."), ("the sea", "  ")):
        with pytest.raises(QwenscopeError) as error:
            judge_generation(ScriptedChat(), concept, instruction, "text")
        assert "\n" not in str(error.value)
    with pytest.raises(QwenscopeError, match="no ratings"):
        mean_ratings([])


def test_our_own_server_as_the_judge():
    """A tiny random model answers garbage through the OpenAI route: whatever it writes is read by the same rule,
    and an answer without a rating is counted unreadable, never guessed."""
    pytest.importorskip("uvicorn")
    import torch
    from serving import running
    from tiny_models import tiny_qwen3

    from qwenscope import Sae, SaeConfig
    from qwenscope.models.chat import OpenAIChat
    from qwenscope.serve.api import create_app

    model, tokenizer = tiny_qwen3()
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.0"))
    with running(create_app(model.eval(), tokenizer, {"l0": sae}, model_name="tiny")) as base_url:
        chat = OpenAIChat(f"{base_url}/v1", "tiny")
        chat.check("run without --judge")
        recorded = Recorded(chat)
        pairs = [("Describe your morning.", "The waves rolled in."), ("Plan a trip.", "tax tax tax")]
        ratings = judge_generations(recorded, "the sea", pairs, max_tokens=8)
    answers = recorded.answers
    assert len(answers) == 6
    assert [s for r in ratings for s in r.scores] == [parse_rating(a) for a in answers]
    assert mean_ratings(ratings)["unreadable"] == sum(parse_rating(a) is None for a in answers) == 6
