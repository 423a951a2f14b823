"""Read activations at hookpoints, stopping the forward once the last of them has been seen.

    with capture(model, ["resid_post.3", "mlp_out.5"]) as acts:
        model(**batch)          # runs layers 0..5 only; no later layer, no lm_head
    acts["resid_post.3"]        # (batch, seq, d_model)

With ``stop=True`` (the default) the forward is cut short by an internal exception that the context swallows,
so the model call must be the last statement of the block. ``stop=False`` lets the forward (or ``generate``) run
to the end; each hookpoint then holds the activations of the most recent forward call.
Hooks are removed when the block ends, also when it raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.hookpoints import Hook, HookpointNames, resolve_hookpoints


class StopForward(Exception):
    """Raised inside a hook to end a forward early; carries the capture that raised it."""

    def __init__(self, owner: object) -> None:
        super().__init__("forward stopped after the last captured hookpoint")
        self.owner = owner


def first_tensor(value: Any) -> Tensor:
    """The hidden-state tensor of a module output or input: a tensor, or the first item of a tuple."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise QwenscopeError(f"cannot find a tensor in a module output of type {type(value).__name__}")


def replace_first(value: Any, new: Tensor) -> Any:
    """``value`` with its hidden-state tensor swapped for ``new`` (same container type)."""
    if isinstance(value, Tensor):
        return new
    return type(value)([new, *value[1:]]) if isinstance(value, list) else (new, *value[1:])


@contextmanager
def hooked(hook: Hook, fn) -> Iterator[None]:
    """Register ``fn(tensor) -> tensor | None`` on a hook's module input or output; removed in ``finally``.

    ``fn`` sees the hidden-state tensor; if it returns a tensor, that replaces the original.
    """

    if hook.on_input:

        def pre(module: nn.Module, args: tuple, kwargs: dict):
            if args:
                new = fn(first_tensor(args))
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = hook.module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(module: nn.Module, args: tuple, output: Any):
            new = fn(first_tensor(output))
            return None if new is None else replace_first(output, new)

        handle = hook.module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture(
    model: nn.Module, hookpoints: HookpointNames, *, stop: bool = True, detach: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Collect activations at ``hookpoints`` (names, or ``Hook``s resolved once) into the yielded dict, keyed by
    name, while the block runs (see module doc)."""
    hooks = resolve_hookpoints(model, hookpoints)
    acts: dict[str, Tensor] = {}
    seen: set[str] = set()
    token = object()

    def recorder(name: str):
        def record(t: Tensor) -> None:
            acts[name] = t.detach() if detach else t
            seen.add(name)
            if stop and len(seen) == len(hooks):
                seen.clear()
                raise StopForward(token)

        return record

    try:
        with ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hooked(hook, recorder(hook.name)))
            yield acts
    except StopForward as e:
        if e.owner is not token:
            raise


def _as_inputs(inputs: Tensor | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(inputs, Tensor):
        if inputs.dtype not in (torch.long, torch.int32, torch.int64):
            raise QwenscopeError(f"expected token ids (integers), got a {inputs.dtype} tensor; tokenize first")
        return {"input_ids": inputs if inputs.ndim == 2 else inputs.reshape(1, -1)}
    if isinstance(inputs, Mapping):
        return dict(inputs)
    raise QwenscopeError(f"inputs must be token ids or a tokenizer's output dict, got {type(inputs).__name__}")


def get_activations(
    model: nn.Module, inputs: Tensor | Mapping[str, Any], hookpoints: HookpointNames, *, stop: bool = True
) -> dict[str, Tensor]:
    """Activations at ``hookpoints`` for ``inputs`` (token ids or a tokenizer's output), without gradients, keyed
    by hookpoint name. Callers that read the same hookpoints on every batch pass ``Hook``s resolved once
    (``resolve_hookpoints``) rather than names.

    The forward stops after the deepest hookpoint, so no later layer and no lm_head run.
    """
    kwargs = _as_inputs(inputs)
    device = next(model.parameters()).device
    kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[-1] == 0:
        raise QwenscopeError("the input has no tokens; pass at least one token")
    hooks = resolve_hookpoints(model, hookpoints)
    names = [h.name for h in hooks]
    with torch.no_grad(), capture(model, hooks, stop=stop, detach=True) as acts:
        model(**kwargs, use_cache=False)
    missing = [n for n in names if n not in acts]
    if missing:
        raise QwenscopeError(f"hookpoints {missing} did not run during the forward; pick modules the model uses")
    return {n: acts[n] for n in names}
