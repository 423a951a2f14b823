"""The model-generic LM-head helpers: the final norm before the lm_head, the lm_head itself, and residual directions
mapped into the space the lm_head multiplies (used by the logit lens and the steering probe)."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.hookpoints import decoder_layers

logger = logging.getLogger(__name__)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied between the last decoder layer and the lm_head (``model.norm`` and kin), if any."""
    path, _ = decoder_layers(model)
    parent = path.rsplit(".", 1)[0]
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        try:
            return model.get_submodule(f"{parent}.{name}")
        except AttributeError:
            continue
    logger.warning("no final norm found next to %s; the logit lens uses the raw decoder directions", path)
    return None


def output_head(model: nn.Module) -> tuple[nn.Module, Tensor]:
    """The lm_head and its (vocab, d) weight; QwenscopeError if the model has none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if head is None or not isinstance(weight, Tensor):
        raise QwenscopeError(f"{type(model).__name__} has no output embeddings (lm_head); use a causal LM")
    return head, weight


def unembed(model: nn.Module, directions: Tensor) -> Tensor:
    """(n, d) residual directions -> the normed directions (n, d) that the lm_head multiplies, as float32."""
    _, weight = output_head(model)
    x = directions.to(device=weight.device, dtype=weight.dtype)
    norm = final_norm(model)
    return (norm(x) if norm is not None else x).float()
