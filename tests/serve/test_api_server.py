"""The OpenAI-compatible API, driven over HTTP by the official ``openai`` client and by raw httpx requests."""

from __future__ import annotations

import httpx
import pytest
from floats import MARGIN
from serving import prompt_margin, running

from qwenscope.serve.api import Limits, create_app
from qwenscope.steer.generate import generate_text

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "test-key"
NAME = "tiny"
PROMPT = "The cat sat on"
STEER = [{"sae": "l0", "features": {"3": 40.0}}]


@pytest.fixture(scope="module")
def parts(qwen3_parts):
    """The tiny Qwen3 on the real Qwen3 tokenizer (chat template included) and a random SAE at resid_post.0."""
    return qwen3_parts


@pytest.fixture(scope="module")
def base_url(parts):
    """A running server (uvicorn in a thread on a free port) with an API key."""
    model, tokenizer, sae = parts
    app = create_app(model, tokenizer, {"l0": sae}, api_key=KEY, limits=Limits(max_new_tokens=16), model_name=NAME)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_greedy_completion_equals_plain_generate(client, parts, one_thread):
    model, tokenizer, _ = parts
    out = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    expected = generate_text(model, tokenizer, PROMPT, max_new_tokens=8, chat=False)
    # server (its row path) vs plain generate: the same greedy text is the promise; no step is near a tie
    assert prompt_margin(model, tokenizer, PROMPT, 8) > MARGIN
    assert expected and out.choices[0].text == expected
    assert out.object == "text_completion"
    prompt_tokens = len(tokenizer(PROMPT)["input_ids"])
    assert out.usage.prompt_tokens == prompt_tokens
    assert out.usage.total_tokens == prompt_tokens + out.usage.completion_tokens
    assert 1 <= out.usage.completion_tokens <= 8


def test_greedy_chat_equals_plain_generate(client, parts):
    model, tokenizer, _ = parts
    out = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content
    assert prompt_margin(model, tokenizer, PROMPT, 8, chat=True) > MARGIN  # greedy steps far from a tie
    assert out.choices[0].message.content == generate_text(model, tokenizer, PROMPT, max_new_tokens=8, chat=True)


def test_steering_through_extra_body_changes_the_output(client):
    kwargs = {"model": NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    plain = client.completions.create(**kwargs).choices[0].text
    steered = client.completions.create(**kwargs, extra_body={"steering": STEER}).choices[0].text
    by_hookpoint = [{**STEER[0], "sae": "resid_post.0"}]
    again = client.completions.create(**kwargs, extra_body={"steering": by_hookpoint}).choices[0].text
    zero = client.completions.create(**kwargs, extra_body={"steering": [{"sae": "l0", "features": {"3": 0.0}}]})
    assert plain and steered != plain
    assert again == steered
    assert zero.choices[0].text == plain


def test_acts_own_reaches_the_steering(client, parts):
    _, _, sae = parts
    assert sae.cfg.activation == "topk"  # where "own" and "encode" differ: features outside the top k
    kwargs = {"model": NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    ablate = {"sae": "l0", "features": list(range(sae.d_sae)), "mode": "ablate"}
    encode = client.completions.create(**kwargs, extra_body={"steering": [ablate]}).choices[0].text
    own = client.completions.create(**kwargs, extra_body={"steering": [{**ablate, "acts": "own"}]}).choices[0].text
    assert own != encode


def test_seeded_sampling_repeats_and_stop_cuts(client):
    kwargs = {"model": NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "top_p": 0.9}
    a = client.completions.create(**kwargs, seed=7).choices[0].text
    b = client.completions.create(**kwargs, seed=7).choices[0].text
    assert a == b
    plain = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0).choices[0]
    assert plain.finish_reason == "length"
    stop = plain.text[3:5]
    cut = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop).choices[0]
    assert cut.text == plain.text[: plain.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_streamed_completion_adds_up_to_the_whole_one(client):
    kwargs = {"model": NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "extra_body": {"steering": STEER}}
    whole = client.completions.create(**kwargs).choices[0]
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert chunks[-1].usage.completion_tokens == 12


def test_streamed_chat_with_a_stop_string(client):
    kwargs = {"model": NAME, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12, "temperature": 0}
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = plain[4:6]
    whole = client.chat.completions.create(**kwargs, stop=[stop]).choices[0]
    chunks = list(client.chat.completions.create(**kwargs, stop=[stop], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
    assert whole.message.content == plain[: plain.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def _post(base_url: str, path: str, content: str, key: str | None = KEY) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    return httpx.post(f"{base_url}{path}", content=content, headers=headers, timeout=30)


def _body(steering: str = "[]", extra: str = "") -> str:
    return f'{{"model": "{NAME}", "prompt": "hi", "max_tokens": 2, "steering": {steering}{extra}}}'


@pytest.mark.parametrize(
    ("content", "status", "says"),
    [
        ('{"model": "tiny", "prompt": ', 400, "not valid JSON"),
        (_body(extra=', "frobnicate": 1'), 400, "frobnicate"),
        (_body('[{"sae": "nope", "features": {"1": 1.0}}]'), 404, "unknown SAE 'nope'"),
        (_body('[{"sae": "l0", "features": {"128": 1.0}}]'), 400, "outside this SAE"),
        (_body('[{"sae": "l0", "features": [1], "mode": "ablate", "acts": "both"}]'), 400, "acts"),
        (_body('[{"sae": "l0", "features": {"1": NaN}}]'), 400, "features"),
        (_body('[{"sae": "l0", "features": {"1": 1.0}, "mode": "boost"}]'), 400, "mode"),
        (_body(extra=', "n": 99'), 400, "batch size"),
        (_body().replace('"max_tokens": 2', '"max_tokens": 99'), 400, "limit"),
    ],
)
def test_bad_requests_get_4xx_with_an_openai_error_body(base_url, content, status, says):
    response = _post(base_url, "/v1/completions", content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_api_key_is_needed_everywhere_but_health(base_url):
    assert httpx.get(f"{base_url}/health").status_code == 200
    assert httpx.get(f"{base_url}/v1/models").status_code == 401
    assert _post(base_url, "/v1/completions", _body(), key=None).status_code == 401
    wrong = _post(base_url, "/v1/chat/completions", "{}", key="wrong")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base_url}/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
