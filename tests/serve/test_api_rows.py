"""``generate_rows``: rows with different steering and sampling in one batch, each as if generated alone; and a
stream that is closed early cancels its row."""

from __future__ import annotations

import asyncio

import pytest
from floats import MARGIN
from serving import prompt_margin

from qwenscope.serve.api import ApiError, CompletionRequest, Limits, Server
from qwenscope.serve.rows import Row, RowResult, generate_rows
from qwenscope.steer.steer import SteerSpec

PROMPTS = ["The cat sat on the", "A river", "Numbers: 1, 2, 3,"]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def test_each_row_of_a_mixed_batch_equals_generating_it_alone(qwen3_parts, one_thread):
    model, tokenizer, sae = qwen3_parts
    steering = [[], [SteerSpec(sae, {3: 40.0})], [SteerSpec(sae, {5: -30.0}, positions="generated")]]
    rows = [Row(_ids(tokenizer, p), 8, steering=s) for p, s in zip(PROMPTS, steering)]
    rows.append(Row(_ids(tokenizer, PROMPTS[0]), 8, temperature=1.0, top_p=0.9, seed=3))
    batched = generate_rows(model, tokenizer, rows)
    alone = [generate_rows(model, tokenizer, [row])[0] for row in rows]
    # batched (padded) vs alone: other shapes, logits ~1e-5 apart; the same greedy text is the promise, and it holds
    # because no greedy step is anywhere near a tie (the sampled row 3: its seeded draws, same probabilities ~1e-6)
    for prompt, specs in zip(PROMPTS, steering, strict=True):
        assert prompt_margin(model, tokenizer, prompt, 8, specs) > MARGIN, prompt
    assert [r.text for r in batched] == [r.text for r in alone]
    plain = generate_rows(model, tokenizer, [Row(_ids(tokenizer, PROMPTS[1]), 8)])[0]
    assert plain.text != batched[1].text  # the steering of row 1 took effect
    assert all(isinstance(r, RowResult) and r.completion_tokens == 8 for r in batched)


def test_closing_a_stream_early_cancels_its_row(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    server = Server(model, tokenizer, {"l0": sae}, "tiny", Limits())
    row = Row(_ids(tokenizer, PROMPTS[0]), 200)

    async def first_piece() -> str | RowResult:
        stream = server.stream([row])
        index, piece = await stream.__anext__()
        await stream.aclose()
        return piece

    try:
        assert isinstance(asyncio.run(first_piece()), str)
        assert row.cancel.is_set()
    finally:
        server.close()


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Limits(max_new_tokens=0)


@pytest.mark.parametrize(("max_batch", "max_queue", "says"), [(2, 8, "batch size of 2"), (8, 2, "queue size of 2")])
def test_n_above_the_batch_or_queue_names_the_limit_it_breaks(qwen3_parts, max_batch, max_queue, says):
    model, tokenizer, sae = qwen3_parts
    server = Server(model, tokenizer, {"l0": sae}, "tiny", Limits(max_batch=max_batch, max_queue=max_queue))
    try:
        with pytest.raises(ApiError) as e:
            asyncio.run(server.rows(CompletionRequest(model="tiny", prompt="hi", n=3), _ids(tokenizer, "hi")))
        assert e.value.status == 400 and says in str(e.value) and "n <= 2" in str(e.value)
        assert len(asyncio.run(server.rows(CompletionRequest(model="tiny", prompt="hi", n=2), [1, 2]))) == 2
    finally:
        server.close()
