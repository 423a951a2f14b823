"""The front end inside vLLM's OpenAI server: ``qwenscope serve``'s ``steering`` field and feature routes.

    QWENSCOPE_VLLM_SAES="id=/path/to/sae,..." vllm serve MODEL \\
        --middleware qwenscope.vllm_plugin.frontend.SteeringMiddleware          # qwenscope serve --engine vllm does it

A pure ASGI middleware in the API server process (vLLM adds it with ``app.add_middleware(SteeringMiddleware)``,
outermost, so before vLLM's own API-key check; it checks the same keys itself on what it answers). On
``POST /v1/completions`` and ``/v1/chat/completions`` with a ``steering`` field it

- validates the field with the engine's ``parse_steering``, cached by its text (``ParseCache``; a 4xx with serve's
  OpenAI error body on a bad one),
- admits it against a bookkeeping-only mirror of the engine's tables (``Tables`` on ``meta``; a 429 when full, where
  the engine's scheduler would only make it wait: ``gate.py``, which also salts its prefix-cache key),
- rewrites the body: ``steering`` out, ``vllm_xargs.qwenscope_steering`` (its JSON) merged with the client's
  ``vllm_xargs``,
- gives the mirror's rows back once the response has been sent, or failed, or the client went away.

Any other request goes to vLLM with its body untouched. ``steering`` on another route, or a client-written
``vllm_xargs.qwenscope_steering``, is refused (400): it would skip the admission. The feature routes of
``qwenscope serve`` (``features_api``) are answered here: ``GET /v1/features/{sae}/{id}`` from the SAE's feature
store, and ``POST /v1/features/encode`` by an HF copy of the model that this process loads at the first encode
request (fp32 on the CPU: the weights once more in RAM, about 4 bytes a parameter, and the load's seconds; the
engine's copy cannot be read from here). The same copy measures each hookpoint's steering unit, once, at the first
``relative`` request; the unit travels to the engine with the entries.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.serve.api import ApiError, Limits, error_body, find_sae
from qwenscope.vllm_plugin.engine import ENV_SAES, EXTRA_KEY, load_saes, table_config
from qwenscope.vllm_plugin.parse import ParseCache, RequestSteering, relative_hookpoints
from qwenscope.vllm_plugin.rows import Tables, hooked_widths, table_full_error
from qwenscope.vllm_plugin.table import TableConfig, TableFull

if TYPE_CHECKING:
    from fastapi import FastAPI
    from torch import nn

logger = logging.getLogger(__name__)
T = TypeVar("T")
STEERED_ROUTES = ("/v1/completions", "/v1/chat/completions")
FEATURE_PREFIX = "/v1/features/"


def mirror_tables(saes: dict[str, Sae], cfg: TableConfig) -> Tables:
    """The front end's mirror of the engine's tables: one per hooked layer, as wide as its SAE."""
    return Tables(hooked_widths(saes), cfg)


def client_xargs(body: dict[str, Any]) -> dict[str, Any]:
    """The client's ``vllm_xargs`` (a 400 when it is not an object, or when it writes the steering itself)."""
    xargs = body.get("vllm_xargs")
    if xargs is None:
        return {}
    if not isinstance(xargs, dict):
        raise ApiError(400, "vllm_xargs must be an object", "vllm_xargs")
    if EXTRA_KEY in xargs:
        raise ApiError(
            400,
            f"vllm_xargs.{EXTRA_KEY} is written by the server: send the steering in the steering field",
            "vllm_xargs",
        )
    return xargs


def rewrite(body: dict[str, Any], steering: RequestSteering) -> dict[str, Any]:
    """``body`` as vLLM takes it: no ``steering``, the entries in ``vllm_xargs`` (the engine's scheduler salts the
    prefix-cache key with them: ``gate.py``)."""
    out = {k: v for k, v in body.items() if k != "steering"}
    xargs = client_xargs(body)
    if steering.salt is None:  # nothing steered: the body vLLM would have had without the field
        return out
    out["vllm_xargs"] = xargs | {EXTRA_KEY: steering.to_json()}
    return out


class FeatureBackend:
    """What the feature routes read (``features_api.FeatureServer``) in the front end: the SAEs, the tokenizer, and
    the model, loaded from ``source`` at the first use (the first encode or relative request), on the CPU in fp32."""

    def __init__(self, saes: dict[str, Sae], source: str, name: str, limits: Limits | None = None) -> None:
        self.saes, self.source, self.name, self.limits = saes, source, name, limits or Limits()
        self.hookpoints = {sid: sae.cfg.hookpoint or sid for sid, sae in saes.items()}
        self._lock = threading.Lock()
        self._model: nn.Module | None = None

    @functools.cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source)

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            from qwenscope.models.load import load_model

            start = time.perf_counter()
            logger.info("loading an HF copy of %s for encoding and steering units (once)", self.source)
            self._model, _ = load_model(self.source)
            logger.info("loaded %s in %.1f s", self.source, time.perf_counter() - start)
        return self._model

    def find_sae(self, key: str) -> tuple[Sae, str]:
        return find_sae(self.saes, self.hookpoints, key)

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread, one at a time (the first one loads the model)."""

        def work() -> T:
            with self._lock:
                return fn()

        return await asyncio.to_thread(work)


def feature_app(backend: FeatureBackend) -> FastAPI:
    """A FastAPI app with serve's feature routes over ``backend``, each SAE with the feature store ``qwenscope
    serve`` finds for it (read with a skeleton of the model on ``meta``: no weights are loaded)."""
    from fastapi import FastAPI

    from qwenscope.features.store import find_store
    from qwenscope.models.load import model_name
    from qwenscope.serve.api import add_error_handlers
    from qwenscope.serve.features_api import add_feature_routes

    skeleton = _skeleton(backend.source)
    name = model_name(skeleton)  # type: ignore[arg-type]
    stores = {sid: find_store(skeleton, backend.tokenizer, sae, name, sid) for sid, sae in backend.saes.items()}
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    add_feature_routes(app, backend, stores)
    return app


def _skeleton(source: str) -> nn.Module:
    """The model built from its config on the ``meta`` device (module names and sizes, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.config._name_or_path = source  # what model_name() reads, as from_pretrained(source) records it
    return model


class SteeringMiddleware:
    """The ASGI middleware (see the module doc); configured from ``QWENSCOPE_VLLM_SAES``, ``QWENSCOPE_VLLM_ROWS`` and
    ``QWENSCOPE_VLLM_SLOTS``, as the engine is, and from vLLM's arguments (``app.state.args``: the model, its served
    name, the API keys)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        spec = os.environ.get(ENV_SAES, "")
        self.saes = load_saes(spec)
        if not self.saes:
            raise QwenscopeError(f"{ENV_SAES} names no SAE; set it to id=/path/to/sae,... as for the engine")
        self.tables = mirror_tables(self.saes, table_config("meta"))
        self.parse = ParseCache(self.saes)
        self._ids = itertools.count()
        self._features: ASGIApp | None = None
        self._features_lock = asyncio.Lock()
        self._feature_backend: FeatureBackend | None = None
        self._unit_cache: dict[str, float] = {}
        logger.info("qwenscope front end: steering with %s (%d rows)", ", ".join(self.saes), self.tables.cfg.rows)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif path.startswith(FEATURE_PREFIX):
            if await self._authorized(scope, receive, send):
                await (await self._feature_app(scope))(scope, receive, send)
        elif scope["method"] == "POST" and _is_json(scope):
            await self._post(scope, receive, send, path)
        else:
            await self.app(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        raw = await _read_body(receive)
        if raw is None:  # the client went away before sending its body
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or ("steering" not in body and not _writes_steering(body)):
            await self.app(scope, _replay(raw, receive), send)  # untouched
            return
        if not await self._authorized(scope, receive, send):
            return
        rid = f"frontend-{next(self._ids)}"
        try:
            if path not in STEERED_ROUTES:
                if "steering" not in body:
                    raise ApiError(
                        400,
                        f"{EXTRA_KEY} is written by the server: send the steering in the steering field of "
                        f"{' or '.join(STEERED_ROUTES)}",
                        EXTRA_KEY,
                    )
                raise ApiError(400, f"steering is taken on {' and '.join(STEERED_ROUTES)} only", "steering")
            if not isinstance(
                body.get("steering", []), list
            ):  # as serve's schema: the engine's JSON text is not for clients
                raise ApiError(400, "steering: Input should be a valid list", "steering")
            needed = relative_hookpoints(body.get("steering"), self.saes)
            unit = await self._units(scope, needed) if needed else None
            steering = self.parse(body.get("steering"), unit)
            forwarded = json.dumps(rewrite(body, steering), ensure_ascii=False).encode()
            self._admit(rid, steering)
        except ApiError as e:
            await _error(e, scope, receive, send)
            return
        try:
            await self.app(_with_length(scope, len(forwarded)), _replay(forwarded, receive), self._releasing(rid, send))
        finally:  # a downstream error, a cancelled request, a client that went away
            self.tables.release(rid)

    def _admit(self, rid: str, steering: RequestSteering) -> None:
        try:
            self.tables.acquire(rid, steering)
        except TableFull as e:
            raise table_full_error(e) from None
        except QwenscopeError as e:  # more clamped features than a row's slots
            raise ApiError(400, str(e), "steering") from None

    def _releasing(self, rid: str, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.tables.release(rid)  # the response is out: the engine has finished the request

        return wrapped

    async def _authorized(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether the request carries one of vLLM's API keys (``--api-key``, else ``VLLM_API_KEY``; none: open);
        answers the 401 itself otherwise."""
        args = getattr(getattr(scope.get("app"), "state", None), "args", None)
        keys = [k for k in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]) if k]
        scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
        digest = hashlib.sha256(given.encode()).digest()
        if not keys or (
            scheme.lower() == "bearer"
            and any(secrets.compare_digest(digest, hashlib.sha256(k.encode()).digest()) for k in keys)
        ):
            return True
        await _error(
            ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", code="invalid_api_key"),
            scope,
            receive,
            send,
        )
        return False

    def _backend(self, scope: Scope) -> FeatureBackend:
        """The SAEs, the tokenizer and the lazily loaded HF model, from vLLM's arguments (the model, its name)."""
        if self._feature_backend is None:
            args = getattr(getattr(scope.get("app"), "state", None), "args", None)
            if args is None:
                raise QwenscopeError("the feature routes need vLLM's arguments (app.state.args): run inside vllm")
            names = args.served_model_name or [args.model]
            name = names if isinstance(names, str) else names[0]
            self._feature_backend = FeatureBackend(self.saes, args.model, name)
        return self._feature_backend

    async def _feature_app(self, scope: Scope) -> ASGIApp:
        """The feature routes, built at the first feature request."""
        async with self._features_lock:
            if self._features is None:
                self._features = await asyncio.to_thread(feature_app, self._backend(scope))
        return self._features

    async def _units(self, scope: Scope, hookpoints: set[str]) -> Callable[[str], float]:
        """The steering unit of each of ``hookpoints``, measured once each as ``qwenscope serve`` measures it
        (``steering_unit`` on the HF copy of the model, which the first relative request loads)."""
        backend = self._backend(scope)
        for hp in sorted(hookpoints - set(self._unit_cache)):
            self._unit_cache[hp] = await backend.exclusive(functools.partial(_measure_unit, backend, hp))
            logger.info("steering unit at %s: %.4g (relative strengths are fractions of it)", hp, self._unit_cache[hp])
        return self._unit_cache.__getitem__


def _measure_unit(backend: FeatureBackend, hookpoint: str) -> float:
    from qwenscope.steer.strength import steering_unit

    return steering_unit(backend.model, backend.tokenizer, hookpoint)


def _is_json(scope: Scope) -> bool:
    content_type = Headers(scope=scope).get("content-type", "")
    return content_type.split(";")[0].strip().lower() in ("application/json", "")


def _writes_steering(body: dict[str, Any]) -> bool:
    """Whether the client wrote the engine's steering key itself, anywhere in its body: ``vllm_xargs`` on the
    OpenAI routes, ``sampling_params.extra_args`` on a raw route such as ``/inference/v1/generate``. Only the front
    end writes it, after admitting the request, so the engine's table never takes rows the mirror did not."""
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if EXTRA_KEY in value:
                return True
            stack.extend(v for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, dict | list))
    return False


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` in one message, then what the client sends (its disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_length(scope: Scope, length: int) -> Scope:
    """``scope`` with its content-length set to ``length`` (a chunked body becomes a sized one)."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"transfer-encoding")]
    return dict(scope, headers=[*headers, (b"content-length", str(length).encode())])


async def _error(e: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)
    await response(scope, receive, send)
