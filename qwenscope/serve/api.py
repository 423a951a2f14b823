"""An OpenAI-compatible HTTP API with per-request feature steering.

    app = create_app(model, tokenizer, {"l0": sae}, api_key="secret")   # or: qwenscope serve --model M --sae S
    uvicorn.run(app)

Routes: GET /health, GET /v1/models, POST /v1/completions and /v1/chat/completions (OpenAI request and response
shapes; ``temperature`` 0 is greedy). Both completion routes take one extension field, which the official client
passes through ``extra_body``:

    "steering": [{"sae": "l0", "features": {"12": 8.0}, "mode": "add", "relative": false, "positions": "all"}]

``sae`` names an SAE by its id (the key of ``saes``) or its hookpoint; each entry becomes one ``SteerSpec``.
Bad requests (malformed JSON, unknown fields, unknown SAEs, feature ids beyond the width, NaN strengths) get a 4xx
with an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``, never a 500. With ``api_key`` every
route but /health needs ``Authorization: Bearer <key>``.

Feature routes (``qwenscope.serve.features_api``): POST /v1/features/encode (a text's top SAE features per token,
with their labels) and GET /v1/features/{sae}/{id} (one feature's record from the SAE's feature store).

``stream=true`` answers with server-sent events (``data: {chunk}``, then ``data: [DONE]``), OpenAI's chunk shapes,
and a usage chunk with ``stream_options.include_usage``; a client that goes away cancels its row at the next token.

Generation (``generate_rows``) takes a list of rows, each with its own steering and sampling (a per-row seeded
sampler; temperature 0 is exactly ``model.generate``'s greedy decoding), and runs them as one batch under
``steer_rows``; for now the server runs one request at a time (a lock, in a worker thread). Not yet: ``n > 1``,
logprobs, dynamic batching, queue limits (429).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.steer.steer import SteerSpec, steer_rows

if TYPE_CHECKING:
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

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise QwenscopeError(f"limits must be positive, got {self}")


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


# ---------------------------------------------------------------- generation
@dataclass
class Row:
    """One sequence to generate: its prompt tokens, sampling settings and steering."""

    input_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    steering: list[SteerSpec] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set it to stop the row at its next token (a client that went away)."""


@dataclass
class RowResult:
    text: str
    completion_tokens: int
    finish_reason: str
    """"stop" (EOS or a stop string) or "length"."""


class _RowSampler:
    """A logits processor that samples each row with its own temperature, top-p and seeded generator, and leaves
    greedy rows untouched; the chosen token is made the only finite logit, so greedy decoding picks it."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.gens = [torch.Generator().manual_seed(r.seed if r.seed is not None else secrets.randbits(63))
                     for r in rows]  # fmt: skip

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(self.rows):
            if row.temperature == 0:
                continue
            probs = torch.softmax(scores[i].float().cpu() / row.temperature, dim=-1)
            if row.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(0) - sorted_p >= row.top_p  # keep the smallest prefix reaching top_p
                probs[order[drop]] = 0.0
            token = int(torch.multinomial(probs, 1, generator=self.gens[i]))
            scores[i] = torch.where(torch.arange(scores.shape[1], device=scores.device) == token, 0.0, -math.inf)
        return scores


class _RowStops:
    """Stopping criterion: row i is done once it has ``max_new_tokens`` tokens, its text holds a stop string, or it
    is cancelled."""

    def __init__(self, rows: list[Row], tokenizer: Any, prompt_len: int) -> None:
        self.rows, self.tokenizer, self.prompt_len = rows, tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(len(self.rows), dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_len :]
        for i, row in enumerate(self.rows):
            if new.shape[1] >= row.max_new_tokens or row.cancel.is_set():
                done[i] = True
            elif row.stop:
                text = self.tokenizer.decode(new[i], skip_special_tokens=True)
                done[i] = any(s in text for s in row.stop)
        return done


class _RowStreamer:
    """A transformers streamer that hands every row's new tokens to ``on_token(row index, token id)``."""

    def __init__(self, n_rows: int, on_token: Callable[[int, int], None]) -> None:
        self.n_rows, self.on_token, self.prompt_seen = n_rows, on_token, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        for i, tokens in enumerate(value.reshape(self.n_rows, -1).tolist()):
            for t in tokens:
                self.on_token(i, t)

    def end(self) -> None:
        pass


@torch.no_grad()
def generate_rows(model: nn.Module, tokenizer: Any, rows: list[Row],
                  on_token: Callable[[int, int], None] | None = None) -> list[RowResult]:  # fmt: skip
    """Generate every row in one left-padded batch, each with its own steering (``steer_rows``) and sampling;
    ``on_token(row index, token id)`` sees each new token as it comes (tokens after a row stopped included)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if not rows:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r.input_ids) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r.input_ids)) + r.input_ids for r in rows])
    mask = torch.tensor([[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r in rows])
    device = next(model.parameters()).device
    kwargs = {"max_new_tokens": max(r.max_new_tokens for r in rows), "do_sample": False, "pad_token_id": pad,
              "logits_processor": LogitsProcessorList([_RowSampler(rows)]),
              "stopping_criteria": StoppingCriteriaList([_RowStops(rows, tokenizer, width)]),
              "streamer": _RowStreamer(len(rows), on_token) if on_token else None}  # fmt: skip
    with steer_rows(model, [r.steering or None for r in rows]):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)  # type: ignore[operator]
    return [_finish(row, out[i, width:].tolist(), tokenizer) for i, row in enumerate(rows)]


def _finish(row: Row, tokens: list[int], tokenizer: Any) -> RowResult:
    """Cut a row's generated tokens at EOS (or the padding after it stopped), and its text at its first stop string."""
    tokens = tokens[: row.max_new_tokens]
    eos = tokenizer.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.pad_token_id}
    end = next((j for j, t in enumerate(tokens) if t in ends), None)
    count = len(tokens) if end is None else end + 1  # the EOS counts as generated
    text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
    cuts = [text.find(s) for s in row.stop if s in text]
    if cuts:
        text = text[: min(cuts)]
    return RowResult(text, count, "stop" if end is not None or cuts else "length")


# ---------------------------------------------------------------- the app
class ApiError(Exception):
    """A request the API refuses: answered with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Server:
    """The model, its SAEs and the request-to-rows logic behind the routes."""

    def __init__(self, model: nn.Module, tokenizer: Any, saes: dict[str, Sae], name: str, limits: Limits) -> None:
        from qwenscope.models.hookpoints import check_sae_fits

        self.model, self.tokenizer, self.saes, self.name, self.limits = model, tokenizer, dict(saes), name, limits
        self.hookpoints = {sid: check_sae_fits(sae, model, None).name for sid, sae in self.saes.items()}
        self.lock = threading.Lock()
        self._units: dict[str, float] = {}
        self._worker: asyncio.Future | None = None

    def find_sae(self, key: str) -> tuple[Sae, str]:
        if key in self.saes:
            return self.saes[key], self.hookpoints[key]
        for sid, sae in self.saes.items():
            if key in (sae.cfg.hookpoint, self.hookpoints[sid]):
                return sae, self.hookpoints[sid]
        known = ", ".join(self.saes) or "none loaded"
        raise ApiError(404, f"unknown SAE {key!r}; use an id or hookpoint from: {known}", "steering", "sae_not_found")

    def unit(self, hookpoint: str) -> float:
        from qwenscope.steer.strength import steering_unit

        if hookpoint not in self._units:
            self._units[hookpoint] = steering_unit(self.model, self.tokenizer, hookpoint)
        return self._units[hookpoint]

    def specs(self, steering: list[Steering]) -> list[SteerSpec]:
        specs = []
        for item in steering:
            sae, hookpoint = self.find_sae(item.sae)
            unit = self.unit(hookpoint) if item.relative else None
            positions = None if item.positions == "all" else item.positions
            try:
                specs.append(SteerSpec(sae, item.features, mode=item.mode, positions=positions, relative=item.relative,
                                       unit=unit))  # fmt: skip
            except QwenscopeError as e:
                raise ApiError(400, str(e), "steering") from None
        return specs

    def row(self, req: _Sampling, input_ids: list[int]) -> Row:
        if req.n != 1:
            raise ApiError(400, "n > 1 is not supported yet; send n=1", "n")
        if req.model != self.name:
            raise ApiError(404, f"model {req.model!r} is not served here; use {self.name!r}", "model",
                           "model_not_found")  # fmt: skip
        if len(input_ids) > self.limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(input_ids)} tokens; the limit is {self.limits.max_prompt_tokens}",
                           "prompt", "context_length_exceeded")  # fmt: skip
        if not input_ids:
            raise ApiError(400, "the prompt is empty; send some text", "prompt")
        max_tokens = req.max_tokens or self.limits.max_new_tokens
        if max_tokens > self.limits.max_new_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is above this server's limit of {self.limits.max_new_tokens}",
                           "max_tokens")  # fmt: skip
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Row(input_ids, max_tokens, req.temperature, req.top_p, req.seed, [s for s in stop if s],
                   self.specs(req.steering))  # fmt: skip

    def encode_chat(self, messages: list[Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
        text = self.tokenizer.apply_chat_template([m.model_dump(exclude_none=True) for m in messages], tokenize=False,
                                                  add_generation_prompt=True)  # fmt: skip
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (model work other than generation, e.g. encoding text with an SAE) in a worker thread while no
        batch runs, so no request's steering hooks are on the model during it."""

        def work() -> T:
            with self.lock:
                return fn()

        return await asyncio.to_thread(work)

    async def run(self, row: Row) -> RowResult:
        def work() -> RowResult:
            with self.lock:
                return generate_rows(self.model, self.tokenizer, [row])[0]

        return await asyncio.to_thread(work)

    async def stream(self, row: Row) -> AsyncIterator[str | RowResult]:
        """The row's text in pieces as it is generated, then its ``RowResult``; the pieces add up to its text.
        Text that may still turn into a stop string or an unfinished character is held back. Closing the iterator
        (a client that went away) cancels the row."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | RowResult | BaseException] = asyncio.Queue()

        def on_token(i: int, token: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token)

        def work() -> None:
            try:
                with self.lock:
                    result: RowResult | BaseException = generate_rows(self.model, self.tokenizer, [row], on_token)[0]
            except Exception as e:  # handed to the stream, which reports it
                result = e
            loop.call_soon_threadsafe(queue.put_nowait, result)

        hold = max((len(s) for s in row.stop), default=1) - 1
        tokens: list[int] = []
        sent = ""
        self._worker = asyncio.ensure_future(asyncio.to_thread(work))  # referenced, so it is not collected
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, RowResult):
                    if item.text.startswith(sent) and len(item.text) > len(sent):
                        yield item.text[len(sent) :]
                    yield item
                    return
                tokens.append(item)
                text = _finish(row, tokens, self.tokenizer).text
                safe = text[: len(text) - hold].rstrip("\ufffd")
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield safe[len(sent) :]
                    sent = safe
        finally:
            row.cancel.set()  # a no-op once the row is done; the worker ends by itself


def _usage(row: Row, result: RowResult) -> dict[str, int]:
    prompt = len(row.input_ids)
    return {"prompt_tokens": prompt, "completion_tokens": result.completion_tokens,
            "total_tokens": prompt + result.completion_tokens}  # fmt: skip


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _events(server: Server, row: Row, req: _Sampling, chunk: Callable[..., dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion: ``chunk(delta text or None, finish_reason)`` shapes each one."""
    try:
        async for piece in server.stream(row):
            if isinstance(piece, RowResult):
                yield _sse(chunk(None, piece.finish_reason))
                if req.stream_options and req.stream_options.include_usage:
                    yield _sse(chunk(None, None) | {"choices": [], "usage": _usage(row, piece)})
            else:
                yield _sse(chunk(piece, None))
    except Exception as e:  # the response has started: report it in the stream
        logger.exception("streamed request failed")
        yield _sse(error_body(f"internal error: {e}", "server_error"))
    yield _sse("[DONE]")


def create_app(model: nn.Module, tokenizer: Any, saes: dict[str, Sae], *, api_key: str | None = None,
               limits: Limits | None = None, model_name: str | None = None,
               stores: dict[str, FeatureStore | None] | None = None):  # fmt: skip
    """A FastAPI app serving ``model`` with ``saes`` (id -> SAE) for steering and ``stores`` (id -> the SAE's
    feature store, for labels and feature records); see the module docstring."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    name = model_name or str(getattr(model.config, "_name_or_path", "") or "qwenscope")
    server = Server(model, tokenizer, saes, name, limits or Limits())
    app = FastAPI(title="qwenscope", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

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

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(error_body("missing or wrong API key: send Authorization: Bearer <key>",
                                               code="invalid_api_key"), status_code=401)  # fmt: skip
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
    async def completions(req: CompletionRequest) -> Any:  # a dict, or a StreamingResponse with stream=true
        row = server.row(req, list(tokenizer(req.prompt)["input_ids"]))
        if req.stream:
            top = head("text_completion", "cmpl")

            def chunk(text: str | None, reason: str | None) -> dict[str, Any]:
                return top | {"choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}]}

            return StreamingResponse(_events(server, row, req, chunk), media_type="text/event-stream")
        result = await server.run(row)
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": name, "choices": [choice], "usage": _usage(row, result)}  # fmt: skip

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> Any:  # a dict, or a StreamingResponse with stream=true
        row = server.row(req, server.encode_chat(req.messages))
        if req.stream:
            top = head("chat.completion.chunk", "chatcmpl")
            started: list[bool] = []

            def chunk(text: str | None, reason: str | None) -> dict[str, Any]:
                delta = {} if text is None else {"content": text} | ({} if started else {"role": "assistant"})
                started.append(True)
                return top | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

            return StreamingResponse(_events(server, row, req, chunk), media_type="text/event-stream")
        result = await server.run(row)
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                  "finish_reason": result.finish_reason}  # fmt: skip
        return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": [choice], "usage": _usage(row, result)}  # fmt: skip

    from qwenscope.serve.features_api import add_feature_routes

    add_feature_routes(app, server, stores or {})
    return app


# ---------------------------------------------------------------- the command
@dataclass
class ServeConfig:
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
    max_new_tokens: int = 512
    """The largest max_tokens a request may ask for."""
    max_prompt_tokens: int = 4096
    """The longest prompt, in tokens."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise QwenscopeError(f"--port must be in 1..65535, got {self.port}")
        Limits(self.max_new_tokens, self.max_prompt_tokens)


def run_serve(cfg: ServeConfig) -> None:
    import uvicorn

    from qwenscope.features.store import find_store
    from qwenscope.models.load import load_model, model_name
    from qwenscope.sae.load import load_sae

    model, tokenizer = load_model(cfg.model)
    saes = {source: load_sae(source) for source in cfg.sae or (cfg.model,)}
    stores = {source: find_store(model, tokenizer, sae, model_name(model), source) for source, sae in saes.items()}
    app = create_app(model, tokenizer, saes, api_key=cfg.api_key, model_name=cfg.model,
                     limits=Limits(cfg.max_new_tokens, cfg.max_prompt_tokens), stores=stores)  # fmt: skip
    logger.info("serving %s with SAEs %s on http://%s:%d/v1 (Ctrl-C stops it)", cfg.model, ", ".join(saes), cfg.host,
                cfg.port)  # fmt: skip
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
