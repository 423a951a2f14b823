"""`steer`: turn SAE features up, pin them, or remove them while the model runs, without touching its weights.

    with steer(model, sae, {1234: 8.0}):                    # add 8 x the feature's decoder row at every position
        model.generate(**batch)
    with steer(model, sae, {1234: 0.5}, relative=True, unit=steering_unit(model, tokenizer, "resid_post.15")):
        ...                                                  # a push of 0.5 x the residual's typical size
    with steer(model, sae, {1234: 0.0}, mode="clamp", positions="generated"):           # keep it off in the answer
        ...
    with steer(model, [SteerSpec(sae3, {7: 4.0}), SteerSpec(sae15, [12], mode="ablate")]):   # several layers
        ...

Modes, with ``a_f`` the SAE's activation of feature ``f`` at the position and ``d_f`` its decoder row:
    add     h + s * d_f
    clamp   h + (s - a_f) * d_f      the feature reads exactly s, everything the SAE misses is kept
    ablate  h - a_f * d_f            (strengths are ignored; pass a list of ids)
Relative strengths (``relative=True``, see ``qwenscope.steer.strength``): strength ``s`` of feature ``f`` stands for
``s * unit / |d_f|``, so the added vector's norm is ``s`` times ``unit``, the residual's typical size at the hookpoint.
Strength 0 in ``add`` mode, or clamping a feature to the value it already has, leaves the logits bit-identical.

``positions``: None (all), ``"prompt"``, ``"generated"``, an int, a list of ints or a slice, counted from the first
token of the sequence also while ``generate`` feeds one token at a time (read from the KV cache length).
Built on ``splice``: hooks are removed when the block ends, also on an exception or a KeyboardInterrupt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.models.splice import splice
from qwenscope.sae.model import Sae

MODES = ("add", "clamp", "ablate")
Positions = None | str | int | slice | Sequence[int]


@dataclass
class SteerSpec:
    """One SAE's share of a steering intervention."""

    sae: Sae
    features: Mapping[int, float] | Sequence[int]
    """{feature id: strength}, or a list of ids (strength 1.0 each; ``ablate`` needs no strength)."""
    mode: str = "add"
    """add | clamp | ablate."""
    hookpoint: str | None = None
    """Where to steer; default: the hookpoint the SAE was trained on."""
    positions: Positions = None
    """None (all), "prompt", "generated", an int, a list of ints or a slice of absolute positions."""
    relative: bool = False
    """Strengths are fractions of the residual's typical size at the hookpoint (needs ``unit``)."""
    unit: float | None = None
    """The residual's typical size, ``steering_unit(model, tokenizer, hookpoint)``; used when ``relative``."""
    ids: Tensor = field(init=False, repr=False)
    values: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QwenscopeError(f"unknown steering mode {self.mode!r}; use one of {', '.join(MODES)}")
        items = list(self.features.items()) if isinstance(self.features, Mapping) else [(f, 1.0) for f in self.features]
        if not items:
            raise QwenscopeError("no features to steer: pass {feature_id: strength}")
        d_sae = self.sae.d_sae
        for f, s in items:
            if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < d_sae:
                raise QwenscopeError(f"feature id {f!r} is outside this SAE (it has {d_sae} features: 0..{d_sae - 1})")
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise QwenscopeError(f"strength of feature {f} is {s!r}; pass a finite number")
        self.ids = torch.tensor([f for f, _ in items], dtype=torch.long)
        self.values = torch.tensor([float(s) for _, s in items], dtype=torch.float32)
        if self.relative:
            self.values = self.values * relative_scale(self.sae, self.ids, self.unit)
        _check_positions(self.positions)


def relative_scale(sae: Sae, ids: Tensor, unit: float | None) -> Tensor:
    """(n,) factors that turn relative strengths of features ``ids`` into absolute ones: ``unit / |d_f|``."""
    if unit is None:
        raise QwenscopeError(
            "relative strengths need the residual's typical size: pass unit=steering_unit(model, tokenizer, hookpoint)"
        )
    if not (isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0):
        raise QwenscopeError(f"unit is {unit!r}; pass the positive number steering_unit(...) returns")
    norms = sae.W_dec.detach()[ids.to(sae.W_dec.device)].float().norm(dim=-1).cpu()
    return float(unit) / norms.clamp_min(1e-12)


def _check_positions(positions: Positions) -> None:
    if positions is None or isinstance(positions, slice):
        return
    if isinstance(positions, str):
        if positions not in ("prompt", "generated"):
            raise QwenscopeError(f"positions={positions!r}: use 'prompt', 'generated', an int, a list or a slice")
        return
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in items):
        raise QwenscopeError(f"positions={positions!r}: pass non-negative token positions")


class _Clock:
    """Absolute position of the first token of the current forward, read from the KV cache; and the prompt length."""

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_len = 0

    def before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.24 names it ``cache``
        self.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if self.offset == 0:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
            embeds = kwargs.get("inputs_embeds")
            ref = ids if ids is not None else embeds
            self.prompt_len = int(ref.shape[1]) if ref is not None else 0


def _position_mask(positions: Positions, clock: _Clock, seq: int, device: torch.device) -> Tensor | None:
    """(seq,) bool mask of steered positions in this forward, or None for all of them."""
    if positions is None:
        return None
    absolute = torch.arange(clock.offset, clock.offset + seq, device=device)
    if positions == "prompt":
        return absolute < clock.prompt_len
    if positions == "generated":
        return absolute >= clock.prompt_len
    if isinstance(positions, slice):
        picked = torch.arange(clock.offset + seq)[positions].to(device)
    else:
        picked = torch.tensor([positions] if isinstance(positions, int) else list(positions), device=device)
    return torch.isin(absolute, picked)


def _edit_fn(spec: SteerSpec, clock: _Clock):
    sae = spec.sae
    rows = sae.W_dec.detach()[spec.ids.to(sae.W_dec.device)]  # (n, d_in)
    values = spec.values.to(rows.device, rows.dtype)
    added = values @ rows  # the whole ``add`` intervention, computed once

    def edit(h: Tensor) -> Tensor:
        if spec.mode == "add":
            delta = added.to(h.dtype).expand_as(h)
        else:
            with torch.no_grad():
                acts = sae.encode(h.to(sae.dtype))[..., spec.ids.to(h.device)]  # (b, s, n)
            coef = values - acts if spec.mode == "clamp" else -acts
            delta = (coef @ rows).to(h.dtype)
        mask = _position_mask(spec.positions, clock, h.shape[1], h.device)
        if mask is not None:
            delta = torch.where(mask[None, :, None], delta, torch.zeros((), dtype=h.dtype, device=h.device))
        return h + delta

    return edit


def _specs(sae: Sae | Sequence[SteerSpec], features: Any, **kwargs: Any) -> list[SteerSpec]:
    if isinstance(sae, Sae):
        if features is None:
            raise QwenscopeError("steer needs features: steer(model, sae, {feature_id: strength})")
        return [SteerSpec(sae, features, **kwargs)]
    specs = list(sae)
    if features is not None or not specs or not all(isinstance(s, SteerSpec) for s in specs):
        raise QwenscopeError("pass steer(model, sae, {feature_id: strength}) or steer(model, [SteerSpec, ...])")
    return specs


def _hookpoint(spec: SteerSpec, model: nn.Module) -> str:
    trained = spec.sae.cfg.hookpoint
    if spec.hookpoint and trained and spec.hookpoint != trained:
        raise QwenscopeError(
            f"this SAE was trained on {trained}, not {spec.hookpoint}: load the SAE of that layer, "
            f"or steer at {trained}"
        )
    return check_sae_fits(spec.sae, model, spec.hookpoint).name


@contextmanager
def steer(
    model: nn.Module,
    sae: Sae | Sequence[SteerSpec],
    features: Mapping[int, float] | Sequence[int] | None = None,
    *,
    mode: str = "add",
    positions: Positions = None,
    hookpoint: str | None = None,
    relative: bool = False,
    unit: float | None = None,
) -> Iterator[None]:
    """Steer ``model`` inside the block; see the module docstring. Several specs may share a hookpoint."""
    if isinstance(sae, Sae):
        specs = _specs(sae, features, mode=mode, positions=positions, hookpoint=hookpoint, relative=relative,
                       unit=unit)  # fmt: skip
    else:
        specs = _specs(sae, features)
    clock = _Clock()
    by_hook: dict[str, list] = {}
    for spec in specs:
        by_hook.setdefault(_hookpoint(spec, model), []).append(_edit_fn(spec, clock))

    def chain(fns):
        def run(h: Tensor) -> Tensor:
            for fn in fns:
                h = fn(h)
            return h

        return run

    with ExitStack() as stack:
        handle = model.register_forward_pre_hook(clock.before_forward, with_kwargs=True)
        stack.callback(handle.remove)
        stack.enter_context(splice(model, {name: chain(fns) for name, fns in by_hook.items()}))
        yield
