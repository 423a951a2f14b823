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
``acts`` says how clamp and ablate read ``a_f``: ``"encode"`` (default) from ``sae.encode(h)``, where a TopK SAE
keeps only the k largest of all features; ``"own"`` from the feature's own pre-activation (ReLU, and JumpReLU's
threshold, without the TopK competition: ``Sae.own_acts``), which needs only the named features' encoder rows and is
what the vLLM plugin computes. The two are the same for ReLU and JumpReLU SAEs.
Relative strengths (``relative=True``, see ``qwenscope.steer.strength``): strength ``s`` of feature ``f`` stands for
``s * unit / |d_f|``, so the added vector's norm is ``s`` times ``unit``, the residual's typical size at the hookpoint.
Strength 0 in ``add`` mode, or clamping a feature to the value it already has, leaves the logits bit-identical.

``positions``: None (all), ``"prompt"``, ``"generated"``, an int, a list of ints or a slice, counted from the first
token of the sequence also while ``generate`` feeds one token at a time (read from the KV cache length).
Built on ``splice``: hooks are removed when the block ends, also on an exception or a KeyboardInterrupt.

Per-row steering: each row of a batch can get its own intervention, or none.

    with steer(model, sae, {1234: 8.0}, rows=[0, 2]):      # rows 0 and 2 only (or a bool mask of the batch)
        ...
    with steer_rows(model, [SteerSpec(sae, {1234: 8.0}), None, [SteerSpec(sae, [7], mode="ablate"), spec2]]):
        model.generate(**batch)                              # row i gets per_row[i]; None = untouched

Rows a spec does not name are left exactly as they are (bit-identical to the same batch without steering); a steered
row gets the edit it gets when steered alone (greedy tokens equal generating it alone wherever the model's own batched
forward does). Only the named rows are encoded by the SAE. Rows count the batch the model's forward sees, checked at
every forward: a spec that names row 5 in a batch of 3, or a mask of another length, is refused with a
``QwenscopeError``. ``generate`` with ``num_return_sequences=n`` or ``num_beams=n`` repeats each prompt n times in
place (prompt i is rows i*n..i*n+n-1); ``steer_rows(..., repeat=n)`` spreads each entry over its prompt's n rows.
With left padding (batched generation), positions count from the first token of the padded sequence, the same for
every row: ``"prompt"`` is every position before generation starts (padding included, which attention masks out
anyway) and ``"generated"`` every position after; an int position p is padded position p, so in a row with k pads its
first real token is position k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.models.splice import splice
from qwenscope.sae.model import Sae

MODES = ("add", "clamp", "ablate")
ACTS = ("encode", "own")
Positions = None | str | int | slice | Sequence[int]
Rows = None | int | Sequence[int] | Sequence[bool] | Tensor
_EXPANDED = (
    "; generate with num_return_sequences or num_beams = n repeats each prompt n times, so rows count the expanded"
    " batch (steer_rows(..., repeat=n))"
)


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
    rows: Rows = None
    """None (every row), row indices, or a bool mask of the batch: the rows edited; the others are left untouched."""
    acts: str = "encode"
    """How clamp and ablate read a feature's activation: "encode" (``sae.encode``, TopK included) or "own" (the
    feature's own pre-activation through ReLU / threshold, ``Sae.own_acts``)."""
    ids: Tensor = field(init=False, repr=False)
    values: Tensor = field(init=False, repr=False)
    row_ids: Tensor | None = field(init=False, repr=False)
    """The sorted row indices ``rows`` names, or None for every row."""
    mask_len: int | None = field(init=False, repr=False)
    """The batch size a bool mask fixes, or None."""
    _max_row: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QwenscopeError(f"unknown steering mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.acts not in ACTS:
            raise QwenscopeError(f"acts={self.acts!r}: use one of {', '.join(ACTS)}")
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
        self.row_ids, self.mask_len = _parse_rows(self.rows)
        self._max_row = int(self.row_ids.max()) if self.row_ids is not None and self.row_ids.numel() else -1

    def check_batch(self, batch: int) -> None:
        """Refuse a batch of ``batch`` rows that ``rows`` does not fit."""
        if self.mask_len is not None and self.mask_len != batch:
            raise QwenscopeError(
                f"the rows mask of a SteerSpec has {self.mask_len} entries but the batch has {batch} rows{_EXPANDED}"
            )
        if self._max_row >= batch:
            raise QwenscopeError(
                f"a SteerSpec names row {self._max_row} but the batch has {batch} rows (0..{batch - 1}){_EXPANDED}"
            )


def _parse_rows(rows: Rows) -> tuple[Tensor | None, int | None]:
    """(sorted row indices, the batch size a bool mask fixes) of ``rows``; (None, None) for every row."""
    if rows is None:
        return None, None
    if isinstance(rows, Tensor):
        if rows.dim() != 1:
            raise QwenscopeError(f"rows is a tensor of shape {tuple(rows.shape)}: pass a 1-D bool mask or row indices")
        items = rows.tolist()
    elif isinstance(rows, int) and not isinstance(rows, bool):
        items = [rows]
    elif isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise QwenscopeError(f"rows={rows!r}: pass row indices or a bool mask of the batch")
    else:
        items = list(rows)
    if items and all(isinstance(r, bool) for r in items):
        return torch.tensor([i for i, r in enumerate(items) if r], dtype=torch.long), len(items)
    for r in items:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise QwenscopeError(f"rows holds {r!r}: pass row indices (non-negative ints) or a bool mask of the batch")
    return torch.tensor(sorted(set(items)), dtype=torch.long), None


def relative_scale(sae: Sae, ids: Tensor, unit: float | None) -> Tensor:
    """(n,) factors that turn relative strengths of features ``ids`` into absolute ones: ``unit / |d_f|``."""
    scale = check_unit(unit)
    norms = sae.W_dec.detach()[ids.to(sae.W_dec.device)].float().norm(dim=-1).cpu()
    return scale / norms.clamp_min(1e-12)


def check_unit(unit: float | None) -> float:
    """``unit`` as a float, or a refusal of a steering unit that relative strengths cannot be scaled by (missing, not
    a positive finite number)."""
    if unit is None:
        raise QwenscopeError(
            "relative strengths need the residual's typical size: pass unit=steering_unit(model, tokenizer, hookpoint)"
        )
    if not (isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0):
        raise QwenscopeError(f"unit is {unit!r}; pass the positive number steering_unit(...) returns")
    return float(unit)


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
    dec = sae.W_dec.detach()[spec.ids.to(sae.W_dec.device)]  # (n, d_in)
    values = spec.values.to(dec.device, dec.dtype)
    added = values @ dec  # the whole ``add`` intervention, computed once
    row_ids: dict[torch.device, Tensor] = {}  # spec.row_ids on each device it met

    def edit_rows(h: Tensor) -> Tensor:
        if spec.mode == "add":
            delta = added.to(h.dtype).expand_as(h)
        else:
            with torch.no_grad():
                if spec.acts == "own":
                    acts = sae.own_acts(h, spec.ids)  # (b, s, n)
                else:
                    acts = sae.encode(h.to(sae.dtype))[..., spec.ids.to(h.device)]  # (b, s, n)
            coef = values - acts if spec.mode == "clamp" else -acts
            delta = (coef @ dec).to(h.dtype)
        mask = _position_mask(spec.positions, clock, h.shape[1], h.device)
        if mask is not None:
            delta = torch.where(mask[None, :, None], delta, torch.zeros((), dtype=h.dtype, device=h.device))
        return h + delta

    def edit(h: Tensor) -> Tensor:
        if spec.row_ids is None:
            return edit_rows(h)
        spec.check_batch(h.shape[0])
        if h.device not in row_ids:
            row_ids[h.device] = spec.row_ids.to(h.device)
        ids = row_ids[h.device]
        if not ids.numel():
            return h
        # only the named rows are encoded and edited; the others are copied through untouched
        return h.index_copy(0, ids, edit_rows(h.index_select(0, ids)))

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
    rows: Rows = None,
    acts: str = "encode",
) -> Iterator[None]:
    """Steer ``model`` inside the block; see the module docstring. Several specs may share a hookpoint."""
    if isinstance(sae, Sae):
        specs = _specs(
            sae,
            features,
            mode=mode,
            positions=positions,
            hookpoint=hookpoint,
            relative=relative,
            unit=unit,
            rows=rows,
            acts=acts,
        )
    else:
        if rows is not None:
            raise QwenscopeError("with a list of SteerSpecs, give each its rows: SteerSpec(sae, features, rows=[0])")
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


@contextmanager
def steer_rows(
    model: nn.Module, per_row: Sequence[Sequence[SteerSpec] | SteerSpec | None], *, repeat: int = 1
) -> Iterator[None]:
    """Row ``i`` of the batch gets ``per_row[i]`` inside the block: a SteerSpec, a list of them (applied in order),
    or None (untouched, bit-identical to the same batch unsteered). The batch must have ``len(per_row) * repeat``
    rows; ``repeat=n`` gives each entry n consecutive rows (``generate`` with num_return_sequences or num_beams = n).
    A spec object shared by several rows is applied once to all of them."""
    specs = _row_specs(per_row, repeat)
    with steer(model, specs) if specs else nullcontext():
        yield


def _row_specs(per_row: Sequence[Sequence[SteerSpec] | SteerSpec | None], repeat: int) -> list[SteerSpec]:
    """One row-limited copy of each spec per (place in its row's list, spec), ordered by that place, so each row
    sees its own specs in its own order."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise QwenscopeError(f"repeat={repeat!r}: pass a positive int (the rows each entry of per_row covers)")
    if isinstance(per_row, (SteerSpec, str)) or not isinstance(per_row, Sequence) or not per_row:
        raise QwenscopeError("steer_rows needs one entry per row: a SteerSpec, a list of them, or None")
    batch = len(per_row) * repeat
    groups: dict[tuple[int, int], tuple[SteerSpec, list[bool]]] = {}
    for i, entry in enumerate(per_row):
        entry_specs = [] if entry is None else [entry] if isinstance(entry, SteerSpec) else list(entry)
        for place, spec in enumerate(entry_specs):
            if not isinstance(spec, SteerSpec):
                raise QwenscopeError(
                    f"row {i} of steer_rows holds a {type(spec).__name__}; pass a SteerSpec, a list of them, or None"
                )
            if spec.rows is not None:
                raise QwenscopeError(f"row {i} of steer_rows holds a SteerSpec with rows set; steer_rows sets them")
            _, mask = groups.setdefault((place, id(spec)), (spec, [False] * batch))
            mask[i * repeat : (i + 1) * repeat] = [True] * repeat
    ordered = sorted(groups.items(), key=lambda item: item[0][0])  # stable: by place, then first appearance
    return [replace(spec, rows=mask) for _, (spec, mask) in ordered]
