"""The feature routes of the OpenAI-compatible server (``qwenscope.serve.api``): read a text's features, look one up.

    POST /v1/features/encode   {"sae": "l0", "input": "The cat sat", "top_k": 5}
        -> {"object": "list", "sae", "hookpoint", "data": [{"index", "token", "token_id",
            "features": [{"id", "activation", "label"}]}], "usage": {"prompt_tokens"}}
    GET  /v1/features/{sae}/{id}
        -> {"object": "feature", "sae", "hookpoint", "id", "frequency", "density", "count", "mean_act", "max_act",
            "hist", "hist_edges", "promoted", "suppressed", "label", "label_score", "contexts"}

``sae`` is an SAE's id (which may contain '/') or its hookpoint. Encoding is the SAE's ``encode`` of the activations
at its hookpoint (``qwenscope.features.search.token_features``), strongest active features first, run through
``exclusive`` so no request's steering is on the model meanwhile; labels and records come from the SAE's feature
store, when it has one. Errors are ``ApiError``s (an OpenAI error body). The routes need only what
``FeatureServer`` names: serve's ``Server``, or the vLLM front end, which loads its model at the first encode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import Field

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.serve.api import ApiError, Limits, _Strict

if TYPE_CHECKING:
    from fastapi import FastAPI
    from torch import nn

    from qwenscope.features.store import FeatureStore


T = TypeVar("T")


class FeatureServer(Protocol):
    """What the feature routes read: the SAEs, the model (only inside ``exclusive``) and its tokenizer."""

    saes: dict[str, Sae]
    name: str
    limits: Limits

    @property
    def tokenizer(self) -> Any: ...

    @property
    def model(self) -> nn.Module: ...

    def find_sae(self, key: str) -> tuple[Sae, str]: ...

    async def exclusive(self, fn: Callable[[], T]) -> T: ...


class EncodeRequest(_Strict):
    sae: str
    input: str
    top_k: int = Field(default=5, ge=1, le=64)


def add_feature_routes(app: FastAPI, server: FeatureServer, stores: dict[str, FeatureStore | None]) -> None:
    """Register ``POST /v1/features/encode`` and ``GET /v1/features/{sae}/{id}`` (see the module doc) on ``app``;
    ``stores`` maps an SAE id (a key of ``server.saes``) to its feature store (missing or None: it has none)."""
    _check_stores(server, stores)
    labels = {sid: store.labels() for sid, store in stores.items() if store is not None}

    @app.post("/v1/features/encode")
    async def encode(req: EncodeRequest) -> dict[str, Any]:
        from qwenscope.features.search import token_features

        sid, sae, hookpoint = _resolve(server, req.sae)
        ids = list(server.tokenizer(req.input)["input_ids"])
        if not ids:
            raise ApiError(400, "the input is empty; send some text", "input")
        limit = server.limits.max_prompt_tokens
        if len(ids) > limit:
            raise ApiError(
                400, f"the input has {len(ids)} tokens; the limit is {limit}", "input", "context_length_exceeded"
            )
        rows = await server.exclusive(
            lambda: token_features(server.model, server.tokenizer, sae, hookpoint, ids, req.top_k, digits=None)
        )
        names = labels.get(sid, {})
        data = [
            {
                "index": r["pos"],
                "token": r["token"],
                "token_id": r["token_id"],
                "features": [
                    {"id": f["id"], "activation": f["act"], "label": names.get(f["id"])} for f in r["features"]
                ],
            }
            for r in rows
        ]
        return {
            "object": "list",
            "sae": sid,
            "hookpoint": hookpoint,
            "data": data,
            "usage": {"prompt_tokens": len(ids)},
        }

    @app.get("/v1/features/{path:path}")
    async def feature(path: str) -> dict[str, Any]:
        key, _, fid = path.rpartition("/")
        if not key:
            raise ApiError(
                404, f"no route /v1/features/{path}; use /v1/features/{{sae}}/{{feature id}}", code="not_found"
            )
        sid, sae, hookpoint = _resolve(server, key)
        i = _feature_id(fid, sae)
        store = stores.get(sid)
        if store is None:
            build = f"qwenscope stats --model {server.name} --sae {sid}"
            raise ApiError(
                404,
                f"SAE {sid!r} has no feature store; build one with: {build}, then restart the server",
                "sae",
                "feature_store_not_found",
            )
        record = dataclasses.asdict(await asyncio.to_thread(store.feature, i))  # the first one reads the contexts
        return _finite(
            {
                "object": "feature",
                "sae": sid,
                "hookpoint": hookpoint,
                **record,
                "density": record["frequency"],
                "hist_edges": store.hist_edges,
            }
        )


def _check_stores(server: FeatureServer, stores: dict[str, FeatureStore | None]) -> None:
    """Each store belongs to a served SAE and has its width (a QwenscopeError naming the mismatch otherwise)."""
    for sid, store in stores.items():
        if sid not in server.saes:
            raise QwenscopeError(
                f"a feature store is given for {sid!r}, which is not one of the served SAEs: "
                f"{', '.join(server.saes) or 'none'}"
            )
        if store is not None and store.d_sae != server.saes[sid].d_sae:
            raise QwenscopeError(
                f"the feature store at {store.folder} has {store.d_sae} features but SAE {sid!r} has "
                f"{server.saes[sid].d_sae}; pass the store built for this SAE"
            )


def _resolve(server: FeatureServer, key: str) -> tuple[str, Sae, str]:
    """(id, SAE, hookpoint) of the SAE named by its id or hookpoint; an unknown one is a 404 (``find_sae``)."""
    sae, hookpoint = server.find_sae(key)
    sid = key if key in server.saes else next(s for s, candidate in server.saes.items() if candidate is sae)
    return sid, sae, hookpoint


def _feature_id(text: str, sae: Sae) -> int:
    """The feature id in a path segment, checked against the SAE's width (a 400 otherwise)."""
    if not (re.fullmatch(r"-?[0-9]+", text) and 0 <= int(text) < sae.d_sae):
        raise ApiError(
            400,
            f"feature id {text!r} is not a feature of this SAE; it has {sae.d_sae} features, ids 0..{sae.d_sae - 1}",
            "feature_id",
        )
    return int(text)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
