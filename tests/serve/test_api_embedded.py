"""The server on the embedded model (smollm2-135m and its shipped SAE), driven by the official ``openai`` client:
chat, completion, streaming, steering through ``extra_body``, and concurrent steered requests that share a batch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import running

from qwenscope import load_model, load_sae
from qwenscope.serve.api import Limits, Server, create_app
from qwenscope.steer.generate import generate_text

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model(NAME)
    return model, tokenizer, load_sae(NAME)


@pytest.fixture(scope="module")
def app(embedded):
    model, tokenizer, sae = embedded
    return create_app(model, tokenizer, {NAME: sae}, model_name=NAME, limits=Limits(batch_window_ms=300))


def _steer(feature: int, strength: float) -> dict:
    return {"steering": [{"sae": "resid_post.15", "features": {str(feature): strength}, "relative": True}]}


@pytest.mark.slow
def test_the_embedded_model_served_through_the_openai_client(embedded, app, one_thread):
    model, tokenizer, _ = embedded
    with running(app) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        question = "What is the capital of France?"
        chat = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0
        )
        # the server's row path vs plain generate, one prompt alone each: the same greedy text is the promise (a
        # trained model's greedy margins are wide, see floats.MARGIN)
        assert chat.choices[0].message.content == generate_text(model, tokenizer, question, max_new_tokens=12)
        assert "Paris" in chat.choices[0].message.content

        prompt = "The capital of France is"
        plain = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0).choices[0].text
        streamed = "".join(
            c.choices[0].text
            for c in client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0, stream=True)
            if c.choices
        )
        assert streamed == plain == generate_text(model, tokenizer, prompt, max_new_tokens=10, chat=False)
        steered = (
            client.completions.create(
                model=NAME, prompt=prompt, max_tokens=10, temperature=0, extra_body=_steer(3904, 0.8)
            )
            .choices[0]
            .text
        )
        assert steered != plain

        requests = [
            (p, None if i % 3 == 0 else _steer(1000 * i + 7, 0.6))
            for i, p in enumerate(
                [
                    "The capital of France is",
                    "Once upon a time",
                    "My favourite food is",
                    "The river flows",
                    "In 1999, the",
                    "Dear friend,",
                ]
            )
        ]

        def ask(request):
            p, extra = request
            return (
                client.completions.create(model=NAME, prompt=p, max_tokens=8, temperature=0, extra_body=extra)
                .choices[0]
                .text
            )

        alone = [ask(r) for r in requests]
        server: Server = app.state.server
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(ask, requests))
    assert max(server.batcher.batch_sizes) >= 4, server.batcher.batch_sizes
    # batched vs alone on the real model: other shapes; its greedy margins are wide (a trained model), see floats.MARGIN
    assert together == alone
