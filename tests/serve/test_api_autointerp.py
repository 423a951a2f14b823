"""The auto-interpretability scorer talks to ``qwenscope serve``'s chat route like any OpenAI-compatible endpoint."""

import pytest
from serving import running

from qwenscope.evaluate.autointerp import Example, openai_llm, score_detection
from qwenscope.serve.api import create_app

pytest.importorskip("uvicorn")


def test_openai_llm_scores_through_our_own_server(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    app = create_app(model, tokenizer, {"l0": sae}, model_name="tiny")
    with running(app) as base_url:
        llm = openai_llm(f"{base_url}/v1", "tiny")
        assert isinstance(llm("Answer with [1, 0]."), str)
        s = score_detection(llm, "sea words", [Example([" sea"], [1.0])], [Example([" tax"], [0.0])])
    # a random tiny model writes no JSON list: the batch is reported as failed, never guessed
    assert s.n + s.failed == 2
