"""Hookpoint names a user can guess, resolved to real HF modules across Llama, Gemma 3, Qwen3(-MoE) and Qwen3.5.

| name           | what it is                                         | hook                        |
|----------------|----------------------------------------------------|-----------------------------|
| resid_post.L   | output of decoder layer L (what Qwen-Scope reads)  | forward hook on layers[L]   |
| resid_pre.L    | input of decoder layer L                           | pre-hook on layers[L]       |
| attn_out.L     | what attention adds to the residual in layer L     | forward hook on the module  |
| mlp_out.L      | what the MLP / MoE block adds to the residual      | forward hook on the module  |
| a module path  | e.g. ``model.layers.3.mlp.down_proj``; ``.input`` suffix for the module's input |    |
| a glob         | ``resid_post.*``, ``mlp_out.1[0-5]`` over the names above                         |    |

``resid_post.L`` equals ``hidden_states[L + 1]`` of ``output_hidden_states=True`` for every layer but the last,
whose hidden state has the final norm applied; ``resid_post.{last}`` is the raw layer output.
Gemma 3 normalises sublayer outputs before adding them (``post_attention_layernorm``, ``post_feedforward_layernorm``):
its ``attn_out`` / ``mlp_out`` are those norms' outputs, so resid_pre + attn_out + mlp_out == resid_post everywhere.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from qwenscope.errors import QwenscopeError

if TYPE_CHECKING:
    from qwenscope.sae.model import Sae

logger = logging.getLogger(__name__)

KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
_LAYER_PATHS = (
    "model.layers",  # Llama, Gemma 3 text, Qwen3, Qwen3-MoE, Qwen3.5 text
    "model.language_model.layers",  # Qwen3.5 / Gemma 3 vision-language classes
    "language_model.model.layers",
    "model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
)
_ATTN_NAMES = ("post_attention_layernorm@sandwich", "self_attn", "linear_attn", "attention", "attn")
_MLP_NAMES = ("post_feedforward_layernorm", "mlp", "block_sparse_moe", "feed_forward")


@dataclass(frozen=True)
class Hook:
    """A resolved hookpoint."""

    name: str
    """The name the user gave (or a glob's expansion)."""
    module_path: str
    """Path of the hooked module in ``model.named_modules()``."""
    module: nn.Module
    """The hooked module."""
    on_input: bool = False
    """Hook the module's input (a pre-hook) rather than its output."""
    layer: int | None = None
    """Decoder layer index, when the hookpoint sits in one."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and ModuleList of the model's decoder layers."""
    for path in _LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise QwenscopeError(
        f"cannot find the decoder layers of {type(model).__name__}; use raw module paths "
        "(see model.named_modules()) as hookpoints"
    )


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream (the text model's hidden size for vision-language classes)."""
    config: Any = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _sublayer(layer: nn.Module, names: tuple[str, ...]) -> str | None:
    sandwich = hasattr(layer, "pre_feedforward_layernorm")  # Gemma 2/3: norms after attention and MLP
    for name in names:
        name, _, cond = name.partition("@")
        if cond == "sandwich" and not sandwich:
            continue
        if name == "post_feedforward_layernorm" and not sandwich:
            continue
        if isinstance(getattr(layer, name, None), nn.Module):
            return name
    return None


def _canonical(model: nn.Module, kind: str, index: int) -> Hook:
    path, layers = decoder_layers(model)
    n = len(layers)
    if not 0 <= index < n:
        raise QwenscopeError(
            f"layer {index} is out of range for {type(model).__name__}: it has {n} layers (0..{n - 1})"
        )
    name, layer = f"{kind}.{index}", layers[index]
    if kind in ("resid_post", "resid_pre"):
        return Hook(name, f"{path}.{index}", layer, on_input=kind == "resid_pre", layer=index)
    sub = _sublayer(layer, _ATTN_NAMES if kind == "attn_out" else _MLP_NAMES)
    if sub is None:
        raise QwenscopeError(f"{name}: layer {index} of {type(model).__name__} has no recognised {kind[:-4]} module")
    return Hook(name, f"{path}.{index}.{sub}", getattr(layer, sub), layer=index)


def canonical_names(model: nn.Module) -> list[str]:
    """All ``kind.L`` names of the model, layer by layer."""
    _, layers = decoder_layers(model)
    return [f"{kind}.{i}" for i in range(len(layers)) for kind in KINDS]


def _layer_of(model: nn.Module, module_path: str) -> int | None:
    try:
        path, _ = decoder_layers(model)
    except QwenscopeError:
        return None
    m = re.match(re.escape(path) + r"\.(\d+)(\.|$)", module_path)
    return int(m[1]) if m else None


def resolve_hookpoint(model: nn.Module, name: str | Hook) -> Hook:
    """One hookpoint name -> the module to hook, or one clear error with suggestions.

    A ``Hook`` already resolved for this model is returned as it is: callers that hook the same place on every
    forward resolve it once and pass the ``Hook``.
    """
    if isinstance(name, Hook):
        return _own_hook(model, name)
    if m := re.fullmatch(r"(resid_post|resid_pre|attn_out|mlp_out)\.(-?\d+)", name):
        return _canonical(model, m[1], int(m[2]))
    modules = dict(model.named_modules())
    base, on_input = (name[: -len(".input")], True) if name.endswith(".input") else (name, False)
    base = base[: -len(".output")] if base.endswith(".output") else base
    if base in modules and base != "":
        return Hook(name, base, modules[base], on_input=on_input, layer=_layer_of(model, base))
    raise QwenscopeError(_unknown_message(model, name, modules))


def _own_hook(model: nn.Module, hook: Hook) -> Hook:
    try:
        mine = model.get_submodule(hook.module_path) is hook.module
    except AttributeError:
        mine = False
    if not mine:
        raise QwenscopeError(
            f"hookpoint {hook.name} was resolved for another model; pass its name or resolve it for this model"
        )
    return hook


def _unknown_message(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> str:
    try:
        n = len(decoder_layers(model)[1])
        valid = f"resid_post.L, resid_pre.L, attn_out.L, mlp_out.L for L in 0..{n - 1}"
        candidates = canonical_names(model)
    except QwenscopeError:
        valid, candidates = "a module path", []
    close = difflib.get_close_matches(name, candidates + list(modules), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown hookpoint {name!r} for {type(model).__name__}; {hint}valid: {valid}, or a module path"


HookpointNames = str | Hook | Sequence[str | Hook]
"""Hookpoints as callers pass them: a comma-separated string, a ``Hook``, or a list of names and ``Hook``s."""


def resolve_hookpoints(model: nn.Module, names: HookpointNames) -> list[Hook]:
    """Names (comma-separated string or list, globs allowed; resolved ``Hook``s pass through) -> hooks, in order,
    without duplicates."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    elif isinstance(names, Hook):
        names = [names]
    if not names:
        raise QwenscopeError("no hookpoints given; pass e.g. 'resid_post.3'")
    hooks: dict[str, Hook] = {}
    for name in names:
        if isinstance(name, Hook):
            hooks.setdefault(name.name, _own_hook(model, name))
        elif any(c in name for c in "*?["):
            matched = fnmatch.filter(canonical_names(model), name)
            if not matched:
                raise QwenscopeError(f"hookpoint pattern {name!r} matches nothing; names look like resid_post.3")
            for m in matched:
                hooks.setdefault(m, resolve_hookpoint(model, m))
        else:
            hooks.setdefault(name, resolve_hookpoint(model, name))
    return list(hooks.values())


def check_sae_fits(sae: Sae, model: nn.Module, hookpoint: str | None = None, strict: bool = False) -> Hook:
    """The hook an SAE attaches to, after checking it fits the model: one clear error if it cannot.

    An SAE attached at another hookpoint than the one it records is logged as a warning, or, with ``strict``, refused
    (training and steering at one layer with the SAE of another is a mistake, not an experiment)."""
    hookpoint = hookpoint or sae.cfg.hookpoint
    if hookpoint is None:
        raise QwenscopeError("the SAE does not record its hookpoint; pass hookpoint= (e.g. 'resid_post.12')")
    hook = resolve_hookpoint(model, hookpoint)
    canonical = re.fullmatch(r"(resid_post|resid_pre|attn_out|mlp_out)\.\d+", hookpoint)
    width = hidden_size(model)
    if canonical and sae.d_in != width:
        trained = f" (trained for {sae.cfg.model})" if sae.cfg.model else ""
        raise QwenscopeError(
            f"SAE width d_in={sae.d_in} does not match {type(model).__name__}'s hidden size {width} at "
            f"{hookpoint}: this SAE{trained} belongs to another model"
        )
    if sae.cfg.hookpoint and hook.name != sae.cfg.hookpoint:
        if strict:
            raise QwenscopeError(
                f"the SAE was trained at {sae.cfg.hookpoint}, not at {hook.name}: it belongs to another layer; "
                f"load the SAE of {hook.name} or use hookpoint {sae.cfg.hookpoint!r}"
            )
        logger.warning("SAE trained on %s is attached at %s", sae.cfg.hookpoint, hookpoint)
    name = getattr(model.config, "name_or_path", "") or ""
    if sae.cfg.model and name and sae.cfg.model.split("/")[-1].lower() not in name.lower():
        logger.warning("SAE trained on %s is attached to %s", sae.cfg.model, name)
    return hook
