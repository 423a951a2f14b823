"""`splice`: the one primitive that edits a hookpoint's activations while the model runs.

    with splice(model, "resid_post.3", lambda h: h + 4.0 * direction):
        model.generate(**batch)

Steering, ablation and SAE replacement are all functions passed here. The function receives the hidden-state
tensor (batch, seq, d_model) and returns one of the same shape; returning the input unchanged leaves the model's
output bit-identical. Hooks are removed when the block ends, also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import hooked
from qwenscope.models.hookpoints import Hook, resolve_hookpoint

EditFn = Callable[[Tensor], Tensor]


def _checked(name: str, fn: EditFn) -> Callable[[Tensor], Tensor]:
    def run(h: Tensor) -> Tensor:
        out = fn(h)
        if not isinstance(out, Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise QwenscopeError(
                f"splice function for {name} returned {got}, expected a tensor of shape {tuple(h.shape)}"
            )
        return out if out.dtype == h.dtype else out.to(h.dtype)

    return run


@contextmanager
def splice(
    model: nn.Module, hookpoint: str | Hook | Mapping[str | Hook, EditFn], fn: EditFn | None = None
) -> Iterator[None]:
    """Replace activations at one hookpoint (``splice(model, "resid_post.3", fn)``) or several (a dict); a
    hookpoint is a name or a ``Hook`` resolved once (``resolve_hookpoint``) for repeated forwards."""
    if isinstance(hookpoint, (str, Hook)):
        if fn is None:
            raise QwenscopeError("splice needs a function: splice(model, 'resid_post.3', fn)")
        edits: Mapping[str | Hook, EditFn] = {hookpoint: fn}
    else:
        if fn is not None:
            raise QwenscopeError("pass either a hookpoint and a function, or a dict of them, not both")
        edits = hookpoint
    with ExitStack() as stack:
        for name, edit in edits.items():
            hook = resolve_hookpoint(model, name)
            if not callable(edit):
                raise QwenscopeError(f"splice function for {hook.name} is not callable")
            stack.enter_context(hooked(hook, _checked(hook.name, edit)))
        yield
