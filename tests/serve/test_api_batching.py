"""Dynamic batching: concurrent requests share batches without affecting each other; n > 1; the queue limit (429);
early results, cancelled rows and failed batches in the batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from floats import MARGIN
from serving import prompt_margin, running

from qwenscope.serve.api import Limits, Server, create_app
from qwenscope.serve.batcher import Batcher, Job
from qwenscope.serve.rows import Row, RowResult
from qwenscope.steer.generate import generate_text
from qwenscope.steer.steer import SteerSpec

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

NAME = "tiny"
PROMPTS = ["The cat sat on", "A river", "Count: 1, 2, 3,", "Hello there, my good friend, how"]  # no greedy near-ties


def _steering(i: int) -> list[dict]:
    """Request i's steering: none for every fourth, else one of add / clamp / ablate on its own feature."""
    if i % 4 == 0:
        return []
    mode = ("add", "clamp", "ablate")[i % 3]
    entry = {"sae": "l0", "features": {str(3 + i): 30.0 + i} if mode != "ablate" else [3 + i], "mode": mode}
    if i % 5 == 1:
        entry["positions"] = "generated"
    return [entry]


def _specs(sae, i: int) -> list[SteerSpec]:
    """Request i's steering as SteerSpecs, for generating it in-process."""
    return [
        SteerSpec(
            sae,
            {int(k): v for k, v in e["features"].items()} if isinstance(e["features"], dict) else e["features"],
            mode=e["mode"],
            positions=e.get("positions"),
        )
        for e in _steering(i)
    ]


def _complete(base_url: str, i: int) -> str:
    body = {
        "model": NAME,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": 8,
        "temperature": 0,
        "steering": _steering(i),
    }
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_sixteen_concurrent_steered_requests_equal_each_served_alone(qwen3_parts, one_thread):
    model, tokenizer, sae = qwen3_parts
    app = create_app(model, tokenizer, {"l0": sae}, model_name=NAME, limits=Limits(batch_window_ms=250))
    server: Server = app.state.server
    with running(app) as base_url:
        alone = [_complete(base_url, i) for i in range(16)]  # one at a time: each in its own batch
        assert set(server.batcher.batch_sizes) == {1}
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda i: _complete(base_url, i), range(16)))
    assert max(server.batcher.batch_sizes) >= 8, server.batcher.batch_sizes  # they really shared batches
    # batched (padded) vs alone: other shapes, logits ~1e-5 apart; the same greedy text is the promise, and it holds
    # because no greedy step of these requests is anywhere near a tie
    for i in range(16):
        margin = prompt_margin(model, tokenizer, PROMPTS[i % len(PROMPTS)], 8, _specs(sae, i))
        assert margin > MARGIN, (i, margin)
    assert together == alone
    assert len(set(alone)) > 4  # the steering made a difference
    for i in range(0, 16, 4):  # unsteered requests equal plain generation (the margins above: no near-ties)
        assert alone[i] == generate_text(model, tokenizer, PROMPTS[i % len(PROMPTS)], max_new_tokens=8, chat=False)


def test_n_choices_are_the_seeded_single_requests(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    app = create_app(model, tokenizer, {"l0": sae}, model_name=NAME)
    with running(app) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        kw = {"model": NAME, "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 1.0}
        three = client.completions.create(n=3, seed=7, **kw)
        singles = [client.completions.create(seed=7 + k, **kw).choices[0].text for k in range(3)]
        assert [c.index for c in three.choices] == [0, 1, 2]
        assert [c.text for c in three.choices] == singles
        assert len(set(singles)) > 1
        assert three.usage.completion_tokens == sum(
            client.completions.create(seed=7 + k, **kw).usage.completion_tokens for k in range(3)
        )
        pieces: dict[int, str] = {0: "", 1: "", 2: ""}
        for chunk in client.completions.create(n=3, seed=7, stream=True, **kw):
            for choice in chunk.choices:
                pieces[choice.index] += choice.text
        assert [pieces[k] for k in range(3)] == singles
        chat = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], n=2, seed=1, max_tokens=4, temperature=1.0
        )
        assert [c.index for c in chat.choices] == [0, 1]


def test_a_full_queue_answers_429_and_the_server_carries_on(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    limits = Limits(max_new_tokens=64, max_batch=1, max_queue=1, batch_window_ms=0)
    app = create_app(model, tokenizer, {"l0": sae}, model_name=NAME, limits=limits)
    body = {"model": NAME, "prompt": PROMPTS[0], "max_tokens": 64, "temperature": 0}
    with running(app) as base_url:
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(lambda _: httpx.post(f"{base_url}/v1/completions", json=body, timeout=120), range(6))
            )
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes and 200 in codes, codes
        busy = next(r for r in responses if r.status_code == 429).json()["error"]
        assert busy["code"] == "rate_limit_exceeded" and "retry later" in busy["message"]
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        assert client.completions.create(model=NAME, prompt="hi", max_tokens=2).choices[0].text is not None
        too_many = httpx.post(f"{base_url}/v1/completions", json=body | {"n": 2}, timeout=60)
        assert too_many.status_code == 400 and "batch size of 1" in too_many.json()["error"]["message"]


def test_a_short_row_is_answered_before_its_long_batch_mate_ends(qwen3_parts):
    model, tokenizer, _ = qwen3_parts
    batcher = Batcher(model, tokenizer, threading.Lock(), window=1.0)
    order: list[tuple[str, RowResult]] = []
    both = threading.Event()

    def job(name: str, tokens: int) -> Job:
        def done(result):
            order.append((name, result))
            if len(order) == 2:
                both.set()

        return Job(Row(list(tokenizer(PROMPTS[0])["input_ids"]), tokens), None, done)

    try:
        batcher.submit([job("long", 40), job("short", 2)])
        assert both.wait(120)
    finally:
        batcher.close()
    assert [name for name, _ in order] == ["short", "long"]
    assert batcher.batch_sizes == {2: 1}
    assert order[0][1].completion_tokens == 2 and order[1][1].completion_tokens == 40


def test_a_failed_batch_fails_its_rows_and_the_worker_lives_on(qwen3_parts):
    model, tokenizer, _ = qwen3_parts
    batcher = Batcher(model, tokenizer, threading.Lock(), window=0)
    results: list[RowResult | BaseException] = []
    done = threading.Semaphore(0)

    def collect(result):
        results.append(result)
        done.release()

    try:
        batcher.submit([Job(Row([model.config.vocab_size + 5], 3), None, collect)])  # a token id beyond the vocabulary
        assert done.acquire(timeout=60)
        batcher.submit([Job(Row(list(tokenizer("hi")["input_ids"]), 3), None, collect)])
        assert done.acquire(timeout=60)
    finally:
        batcher.close()
    assert isinstance(results[0], Exception)
    assert isinstance(results[1], RowResult) and results[1].completion_tokens == 3


def test_a_client_that_goes_away_cancels_its_rows(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    server = Server(model, tokenizer, {"l0": sae}, NAME, Limits(max_new_tokens=4000))
    row = Row(list(tokenizer(PROMPTS[0])["input_ids"]), 4000)

    async def gone() -> bool:
        return True

    async def main() -> list[RowResult]:
        return await server.run([row], gone)

    try:
        start = time.perf_counter()
        [result] = asyncio.run(main())
    finally:
        server.close()
    assert result.finish_reason == "cancelled" and result.completion_tokens < 4000
    assert time.perf_counter() - start < 30


def test_rows_waiting_at_shutdown_get_an_error(qwen3_parts):
    model, tokenizer, _ = qwen3_parts
    batcher = Batcher(model, tokenizer, threading.Lock(), window=0)
    lock_held = batcher.lock
    results: list[RowResult | BaseException] = []
    lock_held.acquire()  # the worker blocks on its first batch, so the second row waits
    try:
        ids = list(tokenizer("hi")["input_ids"])
        batcher.submit([Job(Row(ids, 2), None, results.append)])
        time.sleep(0.2)
        batcher.submit([Job(Row(ids, 2), None, results.append)])
        closer = threading.Thread(target=batcher.close)
        closer.start()
        time.sleep(0.2)
    finally:
        lock_held.release()
    closer.join(30)
    assert isinstance(results[0], RowResult)
    assert isinstance(results[1], Exception) and "shut down" in str(results[1])
