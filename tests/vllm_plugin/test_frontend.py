"""The vLLM front end (``qwenscope.vllm_plugin.frontend``) around a stand-in for vLLM's app that echoes what it
receives: the rewrite, the untouched pass-through, each refusal, the rows given back, the feature routes."""

from __future__ import annotations

import asyncio
import json
from argparse import Namespace

import pytest
import torch
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from qwenscope.vllm_plugin.engine import ENV_ROWS, ENV_SAES, ENV_SLOTS, EXTRA_KEY
from qwenscope.vllm_plugin.frontend import SteeringMiddleware, rewrite
from qwenscope.vllm_plugin.parse import parse_steering

ADD = [{"sae": "l1", "features": {"3": 4.0}}]
ABSOLUTE_HALF = [{"sae": "l1", "features": {"3": 0.5}}]
OTHER = [{"sae": "l1", "features": {"5": 2.0}}]


class Echo:
    """A stand-in for vLLM's app: answers the body and headers it got and the free rows at layer 1 meanwhile;
    ``hold`` (an event) keeps it answering until set, ``fail`` makes it raise."""

    def __init__(self, hold: asyncio.Event | None = None, fail: bool = False) -> None:
        self.calls: list[bytes] = []
        self.hold, self.fail = hold, fail
        self.front: SteeringMiddleware | None = None

    async def __call__(self, scope, receive, send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        self.calls.append(body)
        if self.fail:
            raise RuntimeError("the engine died")
        assert self.front is not None
        free = self.front.tables.layers["resid_post.1"].free_rows
        if self.hold is not None:  # a stream: one chunk, then the rest when ``hold`` is set, unless the client leaves
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            held, gone = asyncio.create_task(self.hold.wait()), asyncio.create_task(receive())
            await asyncio.wait({held, gone}, return_when=asyncio.FIRST_COMPLETED)
            held.cancel()
            gone.cancel()
            if not self.hold.is_set():
                return  # as Starlette's StreamingResponse does on a disconnect: no last chunk
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        response = JSONResponse({"body": body.decode(), "headers": headers, "free": free})
        if self.hold is not None:
            await send({"type": "http.response.body", "body": response.body, "more_body": False})
            return
        await response(scope, receive, send)


@pytest.fixture
def front(saes, tmp_path, monkeypatch):
    """``front(echo, rows=8)``: the middleware around ``echo``, configured by the environment as vLLM would run
    it, with conftest's SAEs saved as folders."""
    for sid, sae in saes.items():
        sae.save(tmp_path / sid)
    monkeypatch.setenv(ENV_SAES, ",".join(f"{sid}={tmp_path / sid}" for sid in saes))
    monkeypatch.setenv(ENV_SLOTS, "4")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)

    def make(echo: Echo, rows: int = 8) -> SteeringMiddleware:
        monkeypatch.setenv(ENV_ROWS, str(rows))
        echo.front = SteeringMiddleware(echo)
        return echo.front

    return make


def free_rows(front: SteeringMiddleware) -> dict[str, int]:
    return {h: t.free_rows for h, t in front.tables.layers.items()}


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_steered_request_reaches_vllm_rewritten(front, saes, route):
    echo = Echo()
    mw = front(echo, rows=8)
    idle = free_rows(mw)
    body = {"model": "m", "prompt": "hi", "steering": ADD, "vllm_xargs": {"mine": "x"}}
    got = TestClient(mw).post(route, json=body).json()
    sent = json.loads(got["body"])
    steering = parse_steering(ADD, saes)
    assert sent == {"model": "m", "prompt": "hi", "vllm_xargs": {"mine": "x", EXTRA_KEY: steering.to_json()}}
    assert int(got["headers"]["content-length"]) == len(got["body"].encode())
    assert got["free"] == idle["resid_post.1"] - 1  # one row, prompt and generated alike, while vLLM answers
    assert free_rows(mw) == idle  # given back once the response is out
    # what the engine parses from vllm_xargs is the same steering
    assert parse_steering(sent["vllm_xargs"][EXTRA_KEY], saes).salt == steering.salt


def test_a_client_salt_passes_through_and_nothing_steered_is_the_body_without_the_field(saes):
    body = {"prompt": "hi", "steering": ADD, "cache_salt": "tenant-7"}
    assert rewrite(body, parse_steering(ADD, saes))["cache_salt"] == "tenant-7"  # the engine salts it (gate.py)
    assert rewrite({"prompt": "hi", "steering": []}, parse_steering([], saes)) == {"prompt": "hi"}


def test_requests_without_steering_pass_through_untouched(front):
    echo = Echo()
    client = TestClient(front(echo))
    raw = b'{"model": "m",   "prompt": "caf\\u00e9" , "cache_salt": "s"}'
    for route in ("/v1/completions", "/v1/chat/completions", "/v1/responses"):
        got = client.post(route, content=raw, headers={"content-type": "application/json"}).json()
        assert got["body"].encode() == raw and got["headers"]["content-length"] == str(len(raw))
    for junk in (b"{not json", b"[1, 2]"):
        assert client.post("/v1/completions", content=junk).json()["body"].encode() == junk
    assert client.get("/v1/models").json()["body"] == ""
    assert len(echo.calls) == 6


NAN = b'{"model": "m", "prompt": "hi", "steering": [{"sae": "l1", "features": {"3": NaN}}]}'


@pytest.mark.parametrize(
    ("body", "route", "status", "code", "message"),
    [
        ({"steering": [{"sae": "nope", "features": {"3": 1.0}}]}, None, 404, "sae_not_found", "unknown SAE 'nope'"),
        ({"steering": [{"sae": "l1", "features": {"256": 1.0}}]}, None, 400, None, "256"),
        (NAN, None, 400, None, "steering"),
        ({"steering": [{"sae": "l1", "features": [3], "mode": "shout"}]}, None, 400, None, "mode"),
        ({"steering": '{"entries": [], "units": {"resid_post.1": 1e9}}'}, None, 400, None, "valid list"),
        ({"steering": [{"sae": "l1", "features": list(range(5)), "mode": "ablate"}]}, None, 400, None, "at most 4"),
        ({"vllm_xargs": {EXTRA_KEY: "[]"}}, None, 400, None, "written by the server"),
        ({"steering": ADD}, "/v1/responses", 400, None, "/v1/completions and /v1/chat/completions only"),
        (  # a raw route's sampling parameters: refused, so every steering gets the front end's checks and 4xx
            {"sampling_params": {"max_tokens": 4, "extra_args": {EXTRA_KEY: "[]"}}},
            "/inference/v1/generate",
            400,
            None,
            "written by the server",
        ),
    ],
)
def test_each_bad_request_gets_one_clear_4xx(front, body, route, status, code, message):
    echo = Echo()
    mw = front(echo)
    idle = free_rows(mw)
    raw = body if isinstance(body, bytes) else json.dumps({"model": "m", "prompt": "hi"} | body).encode()
    response = TestClient(mw).post(route or "/v1/completions", content=raw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == code and "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"
    assert echo.calls == [] and free_rows(mw) == idle


async def _request(app, body: dict, disconnect: asyncio.Event | None = None) -> list[dict]:
    """One POST /v1/completions straight through ASGI; the client disconnects when ``disconnect`` is set."""
    raw = json.dumps({"model": "m", "prompt": "hi"} | body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
    }
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await (disconnect or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_full_table_gets_a_429_while_a_stream_holds_its_row(front):
    hold = asyncio.Event()
    mw = front(Echo(hold), rows=2)  # one row to hand out

    async def scenario() -> None:
        streaming = asyncio.create_task(_request(mw, {"steering": ADD, "stream": True}))
        while mw.tables.layers["resid_post.1"].free_rows:
            await asyncio.sleep(0.001)
        refused = await _request(mw, {"steering": OTHER})
        assert refused[0]["status"] == 429
        error = json.loads(refused[1]["body"])["error"]
        assert error["code"] == "steering_table_full" and error["type"] == "rate_limit_error"
        assert "full" in error["message"]
        hold.set()  # the stream ends: its row is free for the other steering
        assert (await streaming)[-1]["more_body"] is False
        assert mw.tables.layers["resid_post.1"].free_rows == 1
        assert (await _request(mw, {"steering": OTHER}))[0]["status"] == 200

    asyncio.run(scenario())


def test_the_same_steering_shares_a_row_of_a_full_table(front):
    hold = asyncio.Event()
    mw = front(Echo(hold), rows=2)

    async def scenario() -> list[list[dict]]:
        first = asyncio.create_task(_request(mw, {"steering": ADD}))
        second = asyncio.create_task(_request(mw, {"steering": ADD, "max_tokens": 3}))
        await asyncio.sleep(0.05)
        hold.set()
        return [await first, await second]

    assert [sent[0]["status"] for sent in asyncio.run(scenario())] == [200, 200]
    assert free_rows(mw)["resid_post.1"] == 1


def test_rows_are_given_back_when_vllm_fails(front):
    mw = front(Echo(fail=True))
    idle = free_rows(mw)
    with pytest.raises(RuntimeError, match="the engine died"):
        TestClient(mw).post("/v1/completions", json={"prompt": "hi", "steering": ADD})
    assert free_rows(mw) == idle


def test_rows_are_given_back_when_the_client_goes_away(front):
    echo = Echo()
    mw = front(echo)
    idle = free_rows(mw)

    async def scenario(cancel: bool) -> list[dict]:
        echo.hold = asyncio.Event()  # never set: the stream only ends because the client leaves (one per loop)
        gone = asyncio.Event()
        task = asyncio.create_task(_request(mw, {"steering": ADD, "stream": True}, gone))
        while free_rows(mw) == idle:
            await asyncio.sleep(0.001)
        if cancel:  # the server cancels the request (its shutdown, a timeout)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return []
        gone.set()  # the stream sees the disconnect and stops without its last chunk
        return await task

    sent = asyncio.run(scenario(cancel=False))
    assert sent[-1]["more_body"] is True and free_rows(mw) == idle
    asyncio.run(scenario(cancel=True))
    assert free_rows(mw) == idle


def test_the_routes_it_answers_check_vllms_api_key(front, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "secret")
    echo = Echo()
    client = TestClient(front(echo))
    body = {"prompt": "hi", "steering": ADD}
    refused = client.post("/v1/completions", json=body)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/features/l1/3").status_code == 401
    assert echo.calls == []
    assert client.post("/v1/completions", json=body, headers={"authorization": "Bearer secret"}).status_code == 200
    assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 200  # unsteered: vLLM checks it


@pytest.fixture
def vllm_like(front, tmp_path, monkeypatch):
    """A Starlette app with vLLM's arguments in ``app.state.args`` (a tiny Qwen3 folder) and the middleware."""
    from tiny_models import save_tiny_qwen3

    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    model = save_tiny_qwen3(tmp_path / "model", num_layers=3)  # the SAEs hook layers 1 and 2
    front(Echo())  # sets the environment
    routes = [Route("/v1/models", lambda request: JSONResponse({}))]
    app = Starlette(routes=routes, middleware=[Middleware(SteeringMiddleware)])
    app.state.args = Namespace(model=str(model), served_model_name=["tiny"], api_key=None)
    return app


def test_the_feature_routes_answer_from_the_store_and_a_lazily_loaded_model(vllm_like, saes, tmp_path):
    from tiny_models import tiny_qwen3

    from qwenscope.features.packed import sae_fingerprint
    from qwenscope.features.stats import StatsConfig, compute_feature_stats
    from qwenscope.features.store import FeatureStore, feature_store_dir

    model, tokenizer = tiny_qwen3(num_layers=3)
    sae = saes["l1"]
    cfg = StatsConfig(n_tokens=200, seq_len=16, batch_size=4, top_n=2, hist_bins=4, lens_top=2, progress=False)
    stats = compute_feature_stats(model, tokenizer, sae, [f"Note {i}: the cat sat." for i in range(40)], cfg)
    meta = {"model": "model", "sae": "l1", "sae_fingerprint": sae_fingerprint(sae)}
    FeatureStore.write(feature_store_dir("model", "l1", "resid_post.1"), stats, tokenizer, meta)
    client = TestClient(vllm_like)
    record = client.get("/v1/features/l1/3")
    assert record.status_code == 200, record.text
    assert record.json()["object"] == "feature" and record.json()["id"] == 3
    assert client.get("/v1/features/resid_post.1/3").json()["sae"] == "l1"
    missing = client.get("/v1/features/l2/3")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "feature_store_not_found"
    assert client.get("/v1/features/l1/256").status_code == 400
    assert client.get("/v1/features/nope/3").json()["error"]["code"] == "sae_not_found"
    encoded = client.post("/v1/features/encode", json={"sae": "l1", "input": "The cat sat", "top_k": 3})
    assert encoded.status_code == 200, encoded.text
    data = encoded.json()["data"]
    assert len(data) == len(tokenizer("The cat sat")["input_ids"]) and all(len(t["features"]) <= 3 for t in data)
    assert client.get("/v1/models").status_code == 200  # everything else is vLLM's


def test_relative_strengths_travel_with_the_unit_serve_measures(front, saes, tmp_path, monkeypatch):
    """The first relative request loads the HF copy and measures the unit as ``qwenscope serve`` does; the engine's
    parse of the forwarded text builds the rows the front end admitted, and an absolute request keeps its old form."""
    from starlette.requests import Request
    from tiny_models import save_tiny_qwen3

    from qwenscope.models.load import load_model
    from qwenscope.steer.strength import steering_unit

    folder = save_tiny_qwen3(tmp_path / "model", num_layers=3)

    async def completions(request: Request) -> JSONResponse:
        return JSONResponse(json.loads(await request.body()))

    front(Echo())  # the environment
    app = Starlette(
        routes=[Route("/v1/completions", completions, methods=["POST"])], middleware=[Middleware(SteeringMiddleware)]
    )
    app.state.args = Namespace(model=str(folder), served_model_name=["tiny"], api_key=None)
    relative = [{"sae": "l1", "features": {"3": 0.5}, "relative": True}, {"sae": "l2", "features": {"7": 1.0}}]
    sent = TestClient(app).post("/v1/completions", json={"model": "tiny", "prompt": "hi", "steering": relative})
    assert sent.status_code == 200, sent.text
    model, tokenizer = load_model(str(folder))
    unit = steering_unit(model, tokenizer, "resid_post.1")
    text = sent.json()["vllm_xargs"][EXTRA_KEY]
    assert json.loads(text)["units"] == {"resid_post.1": unit}
    engine_side, reference = parse_steering(text, saes), parse_steering(relative, saes, unit=lambda hp: unit)
    assert engine_side.salt == reference.salt
    assert not torch.equal(
        engine_side.layers["resid_post.1"].prompt.add,
        parse_steering(ABSOLUTE_HALF, saes).layers["resid_post.1"].prompt.add,
    )
    absolute = TestClient(app).post("/v1/completions", json={"model": "tiny", "prompt": "hi", "steering": ADD})
    assert json.loads(absolute.json()["vllm_xargs"][EXTRA_KEY]) == parse_steering(ADD, saes).entries
