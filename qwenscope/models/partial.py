"""Partial forwards: skip the decoder layers an earlier forward already ran, and apply the LM head at chosen
positions only. For repeated forwards over the same tokens that differ only from a hookpoint on (evaluation's
clean, SAE-spliced and zero-ablated forwards):

    last = shared_layer(model, hook)                  # layers 0..last give the same output in every variant
    with record_outputs(model, [last]) as outs, logits_at(model, scored):
        clean = model(**batch).logits                 # (1, n_scored, vocab)
    with skip_layers(model, last, outs[last]), splice(model, hook, edit), logits_at(model, scored):
        edited = model(**batch).logits                # layers 0..last return their recorded output at once

The model's own forward still runs everything else (embeddings, masks, rotary, the final norm, the head with any
logit soft-capping), so no architecture is re-implemented. Hooks and patches are gone when a block ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import hooked
from qwenscope.models.hookpoints import Hook, decoder_layers


def shared_layer(model: nn.Module, hook: Hook) -> int | None:
    """The last decoder layer whose output an edit at ``hook`` cannot change (None: no such layer).

    An edit inside layer L (or of its input) changes layers L.. only; an edit of layer L's output leaves layer L's
    own computation alone, so layers 0..L are shared.
    """
    if hook.layer is None:
        return None
    _, layers = decoder_layers(model)
    last = hook.layer if hook.module is layers[hook.layer] and not hook.on_input else hook.layer - 1
    return last if last >= 0 else None


@contextmanager
def record_outputs(model: nn.Module, layers: Iterable[int]) -> Iterator[dict[int, Any]]:
    """Record the raw output (as the layer returned it) of decoder ``layers`` into the yielded dict."""
    _, modules = decoder_layers(model)
    outputs: dict[int, Any] = {}
    with ExitStack() as stack:
        for i in set(layers):

            def record(module: nn.Module, args: tuple, output: Any, i: int = i) -> None:
                outputs[i] = output

            stack.callback(modules[i].register_forward_hook(record).remove)
        yield outputs


@contextmanager
def skip_layers(model: nn.Module, last: int, output: Any) -> Iterator[None]:
    """While the block runs, decoder layers 0..``last`` do not compute: each returns ``output`` at once.

    ``output`` must be what layer ``last`` returned in an earlier forward on the same inputs (``record_outputs``);
    the layers after it then see exactly what they would have. Hooks on the skipped layers themselves still fire;
    the modules inside them do not run, so edits meant to act there must not be in place.
    """
    _, layers = decoder_layers(model)
    if not 0 <= last < len(layers):
        raise QwenscopeError(f"cannot skip layers 0..{last}: the model has {len(layers)} layers")

    def cached(*args: Any, **kwargs: Any) -> Any:
        return output

    saved = [layer.__dict__.get("forward") for layer in layers[: last + 1]]  # an instance patch (accelerate's)
    try:
        for layer in layers[: last + 1]:
            layer.__dict__["forward"] = cached  # Module.__call__ looks up self.forward: this instance attribute
        yield
    finally:
        for layer, old in zip(layers[: last + 1], saved):
            if old is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.__dict__["forward"] = old


@contextmanager
def logits_at(model: nn.Module, positions: Tensor) -> Iterator[None]:
    """While the block runs, the LM head sees only ``positions`` ((batch, seq) bool): the model returns logits of
    shape (1, n_selected, vocab), rows in row-major order of ``positions``. The head costs that many rows, not all."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        raise QwenscopeError(f"{type(model).__name__} has no output embeddings (LM head); pass a causal LM")

    def select(h: Tensor) -> Tensor:
        if h.shape[:-1] != positions.shape:
            raise QwenscopeError(
                f"the LM head got hidden states of shape {tuple(h.shape)}, expected (batch, seq) = "
                f"{tuple(positions.shape)}; call the model without logits_to_keep"
            )
        return h[positions.to(h.device)].unsqueeze(0)  # (1, n, d)

    path = next((name for name, module in model.named_modules() if module is head), "lm_head")
    with hooked(Hook(f"{path}.input", path, head, on_input=True), select):
        yield
