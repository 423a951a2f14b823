"""A request's ``steering`` field, exactly as ``qwenscope serve`` takes it, turned into steering-table rows.

    steering = parse_steering([{"sae": "resid_post.3", "features": {"12": 8.0}}], saes)
    steering.layers["resid_post.3"].prompt       # RowContent of the prompt tokens (None: not steered)
    steering.salt                                # a key of the prefill-relevant content, for vLLM's cache_salt

Validation is serve's: the pydantic ``Steering`` model, ``find_sae`` and ``SteerSpec`` (ids within the width, finite
strengths, relative strengths scaled by the hookpoint's steering unit). Every refusal is an ``ApiError`` with a 4xx
status and the message serve gives. At one hookpoint a request's entries are applied in order, as ``steer`` does;
the op does all adds first and then one clamp / ablate stage, so for each kind of token (prompt, generated) any adds
followed by at most one clamp or ablate entry are accepted and other orders are refused. Clamp and ablate read each
feature's own activation (``acts="own"``); ``acts="encode"`` is the same thing for ReLU and JumpReLU SAEs and is
refused for TopK and BatchTopK SAEs, whose ``encode`` needs every feature's pre-activation.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.serve.api import ApiError, Steering, find_sae
from qwenscope.steer.steer import SteerSpec, check_unit
from qwenscope.vllm_plugin.table import RowContent, add_only

KINDS = ("prompt", "generated")
_ENTRIES = TypeAdapter(list[Steering])
SALT_PREFIX = "qwenscope-steering-"
"""How every steering salt starts (``RequestSteering.salt``, and the scheduler's hash of it with a client's)."""


@dataclass(frozen=True)
class LayerSteering:
    """A request's steering at one hookpoint: the row content of its prompt tokens and of its generated tokens."""

    prompt: RowContent | None
    generated: RowContent | None


@dataclass(frozen=True)
class RequestSteering:
    """A parsed ``steering`` field."""

    layers: dict[str, LayerSteering]
    """hookpoint -> its rows' content; hookpoints the request does not steer are absent."""
    entries: list[dict[str, Any]]
    """The validated entries as JSON-able dicts (defaults filled in): what travels to the engine."""
    units: dict[str, float] = field(default_factory=dict)
    """hookpoint -> the steering unit its ``relative`` entries were scaled by (travels with them)."""

    @property
    def salt(self) -> str | None:
        """A hash of every row's content (None when nothing is steered): equal steering, equal salt."""
        if not self.layers:
            return None
        h = hashlib.blake2b(digest_size=16)
        for hookpoint in sorted(self.layers):
            layer = self.layers[hookpoint]
            for content in (layer.prompt, layer.generated):
                h.update(f"{hookpoint}:{content.key() if content is not None else '-'};".encode())
        return SALT_PREFIX + h.hexdigest()

    def to_json(self) -> str:
        """The entries (and the units of relative ones) as one JSON text, which ``parse_steering`` reads back."""
        out: Any = {"entries": self.entries, "units": self.units} if self.units else self.entries
        return json.dumps(out, sort_keys=True, separators=(",", ":"))


def parse_steering(
    raw: Any, saes: Mapping[str, Sae], unit: Callable[[str], float] | None = None, dtype: torch.dtype = torch.float32
) -> RequestSteering:
    """Validate ``raw`` (the JSON list, or its JSON text) against ``saes`` (id -> SAE) and build its rows' content;
    ``unit(hookpoint)`` is the hookpoint's steering unit (``relative`` strengths); ``to_json``'s text carries the
    units it used. Raises ``ApiError`` (4xx)."""
    items = _items(raw)
    if isinstance(raw, str) and isinstance(sent := json.loads(raw), dict):  # to_json's {"entries", "units"}
        unit = _known(sent["units"])
    hookpoints = {sid: sae.cfg.hookpoint or sid for sid, sae in saes.items()}
    sids = {id(sae): sid for sid, sae in saes.items()}
    specs: list[tuple[str, SteerSpec, str]] = []
    units: dict[str, float] = {}
    for item in items:
        sae, hookpoint = find_sae(dict(saes), hookpoints, item.sae)
        spec = _spec(item, sae, hookpoint, unit)
        if item.relative and unit is not None:
            units[hookpoint] = float(unit(hookpoint))
        entry = {
            **item.model_dump(mode="json"),
            "sae": sids[id(sae)],
            "unit": units.get(hookpoint) if item.relative else None,
        }
        specs.append((hookpoint, spec, json.dumps(entry, sort_keys=True)))
    layers = {}
    for hookpoint in dict.fromkeys(h for h, _, _ in specs):
        here = [(s, e) for h, s, e in specs if h == hookpoint]
        prompt, generated = (
            _content([x for x in here if x[0].positions in (None, k)], hookpoint, dtype) for k in KINDS
        )
        layers[hookpoint] = LayerSteering(prompt, generated)
    return RequestSteering(layers, [item.model_dump(mode="json") for item in items], units)


def relative_hookpoints(raw: Any, saes: Mapping[str, Sae]) -> set[str]:
    """The hookpoints whose steering unit ``raw``'s relative entries need (validated as ``parse_steering`` does)."""
    hookpoints = {sid: sae.cfg.hookpoint or sid for sid, sae in saes.items()}
    return {find_sae(dict(saes), hookpoints, item.sae)[1] for item in _items(raw) if item.relative}


def _known(units: dict[str, float]) -> Callable[[str], float]:
    def unit(hookpoint: str) -> float:
        if hookpoint not in units:
            raise ApiError(400, f"relative strengths need {hookpoint}'s steering unit, which was not sent", "steering")
        return float(units[hookpoint])

    return unit


def _items(raw: Any) -> list[Steering]:
    """The entries of ``raw``: a JSON list, its text, or ``to_json``'s ``{"entries", "units"}`` text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"steering is not valid JSON: {e}", "steering") from None
        if isinstance(raw, dict) and set(raw) == {"entries", "units"}:
            raw = raw["entries"]
    try:
        return _ENTRIES.validate_python(raw if raw is not None else [])
    except ValidationError as e:
        raise ApiError(400, _message(e), "steering") from None


def _message(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p))  # not union tags
    return f"steering{'.' + loc if loc else ''}: {first['msg']}"


def _spec(item: Steering, sae: Sae, hookpoint: str, unit: Callable[[str], float] | None) -> SteerSpec:
    if item.mode != "add" and item.acts == "encode" and sae.cfg.activation in ("topk", "batchtopk"):
        raise ApiError(
            400,
            f"{item.mode} on the {sae.cfg.activation} SAE {item.sae!r} with acts='encode' needs all of its features; "
            'the vLLM engine reads each feature\'s own activation: pass "acts": "own" (qwenscope serve takes it too)',
            "steering",
        )
    if item.relative and unit is None:
        raise ApiError(400, f"relative strengths need {hookpoint}'s steering unit, unknown to this server", "steering")
    relative = item.relative and not sae.W_dec.is_meta  # on meta, no decoder norms to scale by: only the unit's check
    try:
        if item.relative and not relative and unit is not None:
            check_unit(unit(hookpoint))
        return SteerSpec(
            sae,
            item.features,
            mode=item.mode,
            positions=None if item.positions == "all" else item.positions,
            relative=relative,
            unit=unit(hookpoint) if relative and unit is not None else None,
            acts="own",
        )
    except QwenscopeError as e:
        raise ApiError(400, str(e), "steering") from None


@torch.no_grad()
def _content(specs: list[tuple[SteerSpec, str]], hookpoint: str, dtype: torch.dtype) -> RowContent | None:
    """The row of one kind of token from its specs (each with its entry's JSON text), in order: adds, then at most one
    clamp / ablate. SAEs on the ``meta`` device give a row of shapes only, keyed by the entries (``described``)."""
    if not specs:
        return None
    sae = specs[0][0].sae
    meta = sae.W_dec.is_meta
    add = torch.zeros(sae.d_in, dtype=dtype, device="meta" if meta else "cpu")
    stage: SteerSpec | None = None
    for spec, _ in specs:
        if stage is not None:
            raise ApiError(
                400,
                f"at {hookpoint} a {spec.mode} entry follows a {stage.mode} entry; the engine applies adds first, "
                "then one clamp or ablate: put the adds first and merge the clamped / ablated features into one entry",
                "steering",
            )
        sae, ids = spec.sae, spec.ids
        if spec.mode == "add":
            values = spec.values.to(sae.W_dec.device, sae.W_dec.dtype)
            add += (values @ sae.W_dec[ids]).to(add.device, dtype)
        else:
            stage = spec
    content = add_only(add) if stage is None else _stage(stage, add, dtype)
    if not meta:
        return content
    described = "\0".join([hookpoint, *(e for _, e in specs)])
    return replace(content, described="entries-" + hashlib.blake2b(described.encode(), digest_size=16).hexdigest())


def _stage(spec: SteerSpec, add: torch.Tensor, dtype: torch.dtype) -> RowContent:
    """The clamp / ablate slots of ``spec``: one per feature, only these features' encoder and decoder rows."""
    sae, ids = spec.sae, spec.ids.to(spec.sae.W_enc.device)
    enc = sae.W_enc[:, ids].T  # (m, d)
    bias = sae.b_enc[ids]
    if sae.cfg.apply_b_dec_to_input:  # (h - b_dec) . w + b  ==  h . w + (b - b_dec . w)
        bias = bias - sae.b_dec @ sae.W_enc[:, ids]
    threshold = sae.threshold[ids] if sae.threshold is not None else torch.zeros_like(bias)
    target = spec.values if spec.mode == "clamp" else torch.zeros_like(spec.values)
    enc, bias, threshold, dec, target = (
        t.detach().to(add.device, dtype).contiguous() for t in (enc, bias, threshold, sae.W_dec[ids], target)
    )
    return RowContent(add, enc, bias, threshold, dec, target)


class ParseCache:
    """``parse_steering`` by the steering's JSON text, the last ``size`` results kept: a client that sends the same
    steering again (every request of a stream, say) costs a dict lookup instead of building rows. Refusals are not
    kept. ``unit`` must be the same function at every call (a server's measured units)."""

    def __init__(self, saes: Mapping[str, Sae], size: int = 1024) -> None:
        self.saes, self.size = saes, size
        self._done: OrderedDict[str, RequestSteering] = OrderedDict()

    def __call__(self, raw: Any, unit: Callable[[str], float] | None = None) -> RequestSteering:
        key = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, separators=(",", ":"))
        if (hit := self._done.get(key)) is not None:
            self._done.move_to_end(key)
            return hit
        out = parse_steering(raw, self.saes, unit)
        self._done[key] = out
        if len(self._done) > self.size:
            self._done.popitem(last=False)
        return out
