"""An OpenAI-compatible HTTP API with per-request feature steering.

    app = create_app(model, tokenizer, {"l0": sae}, api_key="secret")   # or: qwenscope serve --model M --sae S
    uvicorn.run(app)

Routes: GET /health, GET /v1/models, POST /v1/completions and /v1/chat/completions (OpenAI request and response
shapes; ``temperature`` 0 is greedy). Both completion routes take one extension field, which the official client
passes through ``extra_body``:

    "steering": [{"sae": "l0", "features": {"12": 8.0}, "mode": "add", "relative": false, "positions": "all",
                  "acts": "encode"}]

``sae`` names an SAE by its id (the key of ``saes``) or its hookpoint; each entry becomes one ``SteerSpec``.
Bad requests (malformed JSON, unknown fields, unknown SAEs, feature ids beyond the width, NaN strengths) get a 4xx
with an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``, never a 500. With ``api_key`` every
route but /health needs ``Authorization: Bearer <key>``.

Feature routes (``qwenscope.serve.features_api``): POST /v1/features/encode (a text's top SAE features per token,
with their labels) and GET /v1/features/{sae}/{id} (one feature's record from the SAE's feature store).

``stream=true`` answers with server-sent events (``data: {chunk}``, then ``data: [DONE]``), OpenAI's chunk shapes,
and a usage chunk with ``stream_options.include_usage``; a client that goes away cancels its row at the next token.

Requests are batched (``batcher.Batcher``): rows that arrive within ``batch_window_ms`` of the oldest waiting one are
generated together, up to ``max_batch``, each with its own steering and sampling (``rows.generate_rows``), so a
greedy row gives the tokens it gives alone. A request with ``n`` asks for n rows. Past ``max_queue`` waiting rows a
request gets a 429; a client that goes away (stream closed, or connection dropped while waiting) cancels its rows at
their next token. The server holds no state beyond the model and SAEs it read at start: a killed server restarts
clean. Not yet: logprobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from qwenscope.errors import QwenscopeError

try:  # at module level: FastAPI resolves the routes' (string) annotations in this module's globals
    from starlette.requests import Request
except ImportError:  # the serve extra is missing; create_app says so when it imports fastapi
    Request = Any  # type: ignore[misc,assignment]
from qwenscope.sae.model import Sae
from qwenscope.serve.batcher import Batcher, Job, QueueFull
from qwenscope.serve.rows import Row, RowResult, end_tokens, finish_row
from qwenscope.steer.steer import SteerSpec

if TYPE_CHECKING:
    from fastapi import FastAPI

    from qwenscope.features.store import FeatureStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Limits:
    """What one request may ask for."""

    max_new_tokens: int = 512
    """The largest ``max_tokens`` a request may ask for (also the default when it gives none)."""
    max_prompt_tokens: int = 4096
    """The longest prompt, in tokens."""
    max_batch: int = 16
    """The most rows generated together (a request with ``n`` asks for n rows; n may not exceed it)."""
    max_queue: int = 64
    """The most rows waiting for a batch; a request past it gets a 429."""
    batch_window_ms: float = 10.0
    """How long the first waiting row waits for others to share its batch."""

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.max_prompt_tokens, self.max_batch, self.max_queue) < 1:
            raise QwenscopeError(f"limits must be positive, got {self}")
        if not self.batch_window_ms >= 0:
            raise QwenscopeError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")


# ---------------------------------------------------------------- request models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Steering(_Strict):
    """One entry of the ``steering`` extension field."""

    sae: str
    features: dict[int, float] | list[int]
    mode: Literal["add", "clamp", "ablate"] = "add"
    relative: bool = False
    positions: Literal["all", "prompt", "generated"] = "all"
    acts: Literal["encode", "own"] = "encode"
    """How clamp and ablate read a feature's activation (``SteerSpec.acts``); the vLLM plugin computes "own"."""


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    steering: list[Steering] = []


class CompletionRequest(_Sampling):
    prompt: str


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


# ---------------------------------------------------------------- the app
class ApiError(Exception):
    """A request the API refuses: answered with ``status`` and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def find_sae(saes: dict[str, Sae], hookpoints: dict[str, str], key: str) -> tuple[Sae, str]:
    """(SAE, its hookpoint) that ``key`` names: an id of ``saes`` or a hookpoint (the SAE's own or
    ``hookpoints[id]``); a 404 ``ApiError`` otherwise."""
    if key in saes:
        return saes[key], hookpoints[key]
    for sid, sae in saes.items():
        if key in (sae.cfg.hookpoint, hookpoints[sid]):
            return sae, hookpoints[sid]
    known = ", ".join(saes) or "none loaded"
    raise ApiError(404, f"unknown SAE {key!r}; use an id or hookpoint from: {known}", "steering", "sae_not_found")


class Server:
    """The model, its SAEs, the batcher and the request-to-rows logic behind the routes."""

    def __init__(self, model: nn.Module, tokenizer: Any, saes: dict[str, Sae], name: str, limits: Limits) -> None:
        from qwenscope.models.hookpoints import check_sae_fits

        self.model, self.tokenizer, self.saes, self.name, self.limits = model, tokenizer, dict(saes), name, limits
        self.hookpoints = {sid: check_sae_fits(sae, model, None).name for sid, sae in self.saes.items()}
        self.lock = threading.Lock()
        self.batcher = Batcher(
            model, tokenizer, self.lock, limits.max_batch, limits.max_queue, limits.batch_window_ms / 1000
        )
        self._units: dict[str, float] = {}

    def close(self) -> None:
        self.batcher.close()

    def find_sae(self, key: str) -> tuple[Sae, str]:
        return find_sae(self.saes, self.hookpoints, key)

    async def unit(self, hookpoint: str) -> float:
        """The hookpoint's steering unit (measured once, while no batch runs)."""
        from qwenscope.steer.strength import steering_unit

        if hookpoint not in self._units:
            self._units[hookpoint] = await self.exclusive(lambda: steering_unit(self.model, self.tokenizer, hookpoint))
        return self._units[hookpoint]

    async def specs(self, steering: list[Steering]) -> list[SteerSpec]:
        specs = []
        for item in steering:
            sae, hookpoint = self.find_sae(item.sae)
            unit = await self.unit(hookpoint) if item.relative else None
            positions = None if item.positions == "all" else item.positions
            try:
                specs.append(
                    SteerSpec(
                        sae,
                        item.features,
                        mode=item.mode,
                        positions=positions,
                        relative=item.relative,
                        unit=unit,
                        acts=item.acts,
                    )
                )
            except QwenscopeError as e:
                raise ApiError(400, str(e), "steering") from None
        return specs

    async def rows(self, req: _Sampling, input_ids: list[int]) -> list[Row]:
        """The ``n`` rows of a request (sampled rows seeded ``seed``, ``seed + 1``, ... when it gives a seed)."""
        most = min(self.limits.max_batch, self.limits.max_queue)  # n rows must fit one batch and the queue
        if req.n > most:
            limit = "batch size" if most == self.limits.max_batch else "queue size"
            raise ApiError(400, f"n={req.n} is above this server's {limit} of {most}; ask for n <= {most}", "n")
        if req.model != self.name:
            raise ApiError(
                404, f"model {req.model!r} is not served here; use {self.name!r}", "model", "model_not_found"
            )
        if len(input_ids) > self.limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(input_ids)} tokens; the limit is {self.limits.max_prompt_tokens}",
                "prompt",
                "context_length_exceeded",
            )
        if not input_ids:
            raise ApiError(400, "the prompt is empty; send some text", "prompt")
        max_tokens = req.max_tokens or self.limits.max_new_tokens
        if max_tokens > self.limits.max_new_tokens:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is above this server's limit of {self.limits.max_new_tokens}",
                "max_tokens",
            )
        stop = [s for s in ([req.stop] if isinstance(req.stop, str) else list(req.stop or [])) if s]
        specs = await self.specs(req.steering)
        return [
            Row(
                list(input_ids),
                max_tokens,
                req.temperature,
                req.top_p,
                None if req.seed is None else req.seed + k,
                list(stop),
                specs,
            )
            for k in range(req.n)
        ]

    def encode_chat(self, messages: list[Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
        text = self.tokenizer.apply_chat_template(
            [m.model_dump(exclude_none=True) for m in messages], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (model work other than generation, e.g. encoding text with an SAE) in a worker thread while no
        batch runs, so no request's steering hooks are on the model during it."""

        def work() -> T:
            with self.lock:
                return fn()

        return await asyncio.to_thread(work)

    def _submit(
        self,
        rows: list[Row],
        on_token: Callable[[int, int], None] | None,
        on_done: Callable[[int, RowResult | BaseException], None],
    ) -> None:
        """Queue the rows (all or none: a 429 when the queue is full); the callbacks get the row's index."""
        jobs = [
            Job(row, None if on_token is None else functools.partial(on_token, i), functools.partial(on_done, i))
            for i, row in enumerate(rows)
        ]
        try:
            self.batcher.submit(jobs)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}", None, "rate_limit_exceeded", "rate_limit_error") from None
        except QwenscopeError as e:
            raise ApiError(503, str(e), None, "unavailable", "server_error") from None

    async def run(self, rows: list[Row], gone: Callable[[], Awaitable[bool]] | None = None) -> list[RowResult]:
        """The rows' results; ``gone()`` (polled while waiting) tells that the client went away: the rows are
        cancelled at their next token."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[RowResult]] = [loop.create_future() for _ in rows]

        def on_done(i: int, result: RowResult | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, futures[i], result)

        self._submit(rows, None, on_done)
        try:
            while True:
                _, pending = await asyncio.wait(futures, timeout=0.5)
                if not pending:
                    return [f.result() for f in futures]
                if gone is not None and await gone():
                    logger.info("client went away: cancelling its %d row(s)", len(rows))
                    gone = None
                    for row in rows:
                        row.cancel.set()
        finally:
            for row in rows:  # a no-op for finished rows; frees the slots of a request whose task was cancelled
                row.cancel.set()

    def stream(self, rows: list[Row]) -> AsyncIterator[tuple[int, str | RowResult]]:
        """Queue the rows now (a 429 when the queue is full) and give ``(row index, piece)`` as they are generated:
        text pieces that add up to the row's text, then its ``RowResult``. Text that may still turn into a stop
        string or an unfinished character is held back. Closing the iterator (a client that went away) cancels the
        rows."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, int | RowResult | BaseException]] = asyncio.Queue()

        def put(i: int, item: int | RowResult | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (i, item))

        self._submit(rows, put, put)
        return self._pieces(rows, queue)

    async def _pieces(
        self, rows: list[Row], queue: asyncio.Queue[tuple[int, int | RowResult | BaseException]]
    ) -> AsyncIterator[tuple[int, str | RowResult]]:
        tokens: list[list[int]] = [[] for _ in rows]
        sent = [""] * len(rows)
        holds = [max((len(s) for s in row.stop), default=1) - 1 for row in rows]
        ends = end_tokens(self.tokenizer)
        left = len(rows)
        try:
            while left:
                i, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, RowResult):
                    left -= 1
                    if item.text.startswith(sent[i]) and len(item.text) > len(sent[i]):
                        yield i, item.text[len(sent[i]) :]
                    yield i, item
                    continue
                tokens[i].append(item)
                text = finish_row(rows[i], tokens[i], self.tokenizer, ends).text
                safe = text[: len(text) - holds[i]].rstrip("\ufffd")
                if len(safe) > len(sent[i]) and safe.startswith(sent[i]):
                    yield i, safe[len(sent[i]) :]
                    sent[i] = safe
        finally:
            for row in rows:  # a no-op for finished rows
                row.cancel.set()


def _settle(future: asyncio.Future[RowResult], result: RowResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _usage(rows: list[Row], results: list[RowResult]) -> dict[str, int]:
    prompt, completion = len(rows[0].input_ids), sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _events(
    pieces: AsyncIterator[tuple[int, str | RowResult]],
    rows: list[Row],
    req: _Sampling,
    chunk: Callable[[int, str | None, str | None], dict[str, Any]],
) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion: ``chunk(index, delta text or None, finish_reason)`` shapes each."""
    results: list[RowResult] = []
    try:
        async for i, piece in pieces:
            if isinstance(piece, RowResult):
                results.append(piece)
                yield _sse(chunk(i, None, piece.finish_reason))
            else:
                yield _sse(chunk(i, piece, None))
        if req.stream_options and req.stream_options.include_usage:
            yield _sse(chunk(0, None, None) | {"choices": [], "usage": _usage(rows, results)})
    except Exception as e:  # the response has started: report it in the stream
        logger.exception("streamed request failed")
        yield _sse(error_body(f"internal error: {e}", "server_error"))
    yield _sse("[DONE]")


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, invalid requests, HTTP errors and crashes on the FastAPI ``app`` with an OpenAI error body
    (``error_body``): a 4xx for what the client can fix, a 500 with the cause otherwise."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p)]  # not union tags
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx")
            detail = ctx.get("error", first["msg"]) if isinstance(ctx, dict) else first["msg"]
            message, param = f"the body is not valid JSON: {detail}", None
        else:
            message, param = f"{'.'.join(loc) or 'body'}: {first['msg']}", ".".join(loc) or None
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)


def create_app(
    model: nn.Module,
    tokenizer: Any,
    saes: dict[str, Sae],
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    model_name: str | None = None,
    stores: dict[str, FeatureStore | None] | None = None,
):
    """A FastAPI app serving ``model`` with ``saes`` (id -> SAE) for steering and ``stores`` (id -> the SAE's
    feature store, for labels and feature records); see the module docstring."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    name = model_name or str(getattr(model.config, "_name_or_path", "") or "qwenscope")
    server = Server(model, tokenizer, saes, name, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()  # after the last request: the batcher's running batch finishes, waiting rows get an error

    app = FastAPI(title="qwenscope", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server

    add_error_handlers(app)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(
                    error_body("missing or wrong API key: send Authorization: Bearer <key>", code="invalid_api_key"),
                    status_code=401,
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "qwenscope"}]}

    def head(kind: str, prefix: str) -> dict[str, Any]:
        return {"id": f"{prefix}-{secrets.token_hex(12)}", "object": kind, "created": int(time.time()), "model": name}

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Any:  # a dict, or a stream with stream=true
        rows = await server.rows(req, list(tokenizer(req.prompt)["input_ids"]))
        if req.stream:
            top = head("text_completion", "cmpl")

            def chunk(i: int, text: str | None, reason: str | None) -> dict[str, Any]:
                return top | {"choices": [{"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}]}

            events = _events(server.stream(rows), rows, req, chunk)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await server.run(rows, request.is_disconnected)
        choices = [
            {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
            for i, r in enumerate(results)
        ]
        return head("text_completion", "cmpl") | {"choices": choices, "usage": _usage(rows, results)}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest, request: Request) -> Any:  # a dict, or a stream with stream=true
        rows = await server.rows(req, server.encode_chat(req.messages))
        if req.stream:
            top = head("chat.completion.chunk", "chatcmpl")
            started: set[int] = set()

            def chunk(i: int, text: str | None, reason: str | None) -> dict[str, Any]:
                delta = {} if text is None else {"content": text} | ({} if i in started else {"role": "assistant"})
                started.add(i)
                return top | {"choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]}

            events = _events(server.stream(rows), rows, req, chunk)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await server.run(rows, request.is_disconnected)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return head("chat.completion", "chatcmpl") | {"choices": choices, "usage": _usage(rows, results)}

    from qwenscope.serve.features_api import add_feature_routes

    add_feature_routes(app, server, stores or {})
    return app


# ---------------------------------------------------------------- the command
@dataclass
class ServeConfig(Limits):
    """Serve a model and its SAEs over an OpenAI-compatible API (the limits are ``Limits``' fields)."""

    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: tuple[str, ...] = ()
    """SAEs to steer with, comma-separated (folders, files, hub repo ids); default: the model's embedded SAE. A
    request names one by this string or by its hookpoint."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface)."""
    port: int = 8000
    """Port to serve on."""
    api_key: str | None = None
    """Require Authorization: Bearer <key> on every route but /health."""
    engine: Literal["hf", "vllm"] = "hf"
    """What generates: hf (transformers in this process, batched here) or vllm (vLLM's OpenAI server with the
    steering plugin: the same requests and feature routes; the limits above are then vLLM's own, see --vllm-args)."""
    vllm_python: str | None = None
    """With --engine vllm: the Python of vLLM's virtualenv (make vllm-venv builds .venv-vllm); default: this Python."""
    vllm_args: str = ""
    """With --engine vllm: more arguments for vllm serve in one string, e.g. --vllm-args="--dtype float32
    --max-model-len 2048"."""
    steering_rows: int = 64
    """With --engine vllm: rows of each hooked layer's steering table, the most distinct steerings running at once
    plus one; a request that needs a row when none is free gets a 429."""
    steering_slots: int = 8
    """With --engine vllm: the most features one request clamps or ablates at one layer."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise QwenscopeError(f"--port must be in 1..65535, got {self.port}")
        if self.steering_rows < 2 or self.steering_slots < 1:
            raise QwenscopeError(
                f"--steering-rows must be >= 2 (row 0 is 'not steered') and --steering-slots >= 1, got "
                f"{self.steering_rows} and {self.steering_slots}"
            )
        super().__post_init__()


def run_serve(cfg: ServeConfig) -> None:
    if cfg.engine == "vllm":
        from qwenscope.vllm_plugin.launch import run_vllm_serve

        run_vllm_serve(cfg)
        return
    import uvicorn

    from qwenscope.features.store import find_store
    from qwenscope.models.load import load_model, model_name
    from qwenscope.sae.load import load_sae

    model, tokenizer = load_model(cfg.model)
    saes = {source: load_sae(source) for source in cfg.sae or (cfg.model,)}
    stores = {source: find_store(model, tokenizer, sae, model_name(model), source) for source, sae in saes.items()}
    app = create_app(model, tokenizer, saes, api_key=cfg.api_key, model_name=cfg.model, limits=cfg, stores=stores)
    logger.info(
        "serving %s with SAEs %s on http://%s:%d/v1 (Ctrl-C stops it)", cfg.model, ", ".join(saes), cfg.host, cfg.port
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
