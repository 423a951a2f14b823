"""The auto-interpretability scorer talks to ``qwenscope serve``'s chat route like any OpenAI-compatible endpoint."""

import pytest
from serving import running

from qwenscope.evaluate.autointerp import Example, score_detection
from qwenscope.models.chat import OpenAIChat
from qwenscope.serve.api import create_app

pytest.importorskip("uvicorn")


def test_an_endpoint_scorer_scores_through_our_own_server(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    app = create_app(model, tokenizer, {"l0": sae}, model_name="tiny")
    with running(app) as base_url:
        chat = OpenAIChat(f"{base_url}/v1", "tiny")
        chat.check("unused")  # answers
        assert isinstance(chat.complete("Answer with [1, 0]."), str)
        s = score_detection(chat, "sea words", [Example([" sea"], [1.0])], [Example([" tax"], [0.0])])
    # a random tiny model writes no JSON list: the batch is reported as failed, never guessed
    assert s.n + s.failed == 2
