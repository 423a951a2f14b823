"""Residual directions as an SAE, so that every steering method is a direction the same ``steer`` API moves along.

    dim = diff_in_means(model, tokenizer, positive, negative, "resid_post.15")   # qwenscope.features
    sae = direction_sae(dim[None], "resid_post.15", model="smollm2-135m")       # one feature: the direction
    with steer(model, sae, {0: 0.5}, relative=True, unit=unit): ...             # add it, as a feature would be
    sae.save("dim-sea/")                                                         # qwenscope steer --sae dim-sea/

Feature ``i`` of the SAE is the direction ``v_i`` (its decoder row, as given, not normalised), read back by
projection: ``a_i(h) = relu(h . v_i / |v_i|^2)``, the coefficient of ``v_i`` in ``h`` when positive. So ``add`` with
strength ``s`` adds ``s v_i`` (strength 1 adds the vector itself: the CAA convention), ``clamp`` sets that
coefficient to ``s`` and ``ablate`` removes the positive part of the projection. A ReLU SAE of the project's format:
it saves, loads, serves and steers like any other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError
from qwenscope.sae.config import SaeConfig
from qwenscope.sae.model import Sae


def direction_sae(directions: Tensor, hookpoint: str, *, model: str | None = None) -> Sae:
    """An SAE (float32, CPU) whose features are the rows of ``directions`` (n, d_in) (the module doc)."""
    if not isinstance(directions, Tensor) or directions.ndim != 2 or directions.shape[0] < 1:
        shape = tuple(directions.shape) if isinstance(directions, Tensor) else type(directions).__name__
        raise QwenscopeError(f"directions must be a (n, d_in) tensor with n >= 1, got {shape}")
    v = directions.detach().float().cpu()
    norms = v.norm(dim=1)
    if not torch.isfinite(v).all() or (norms == 0).any():
        raise QwenscopeError("a direction is zero or not finite; pass non-zero, finite vectors")
    sae = Sae(SaeConfig(d_in=v.shape[1], d_sae=v.shape[0], activation="relu", hookpoint=hookpoint, model=model))
    with torch.no_grad():
        sae.W_dec.copy_(v)
        sae.W_enc.copy_((v / norms[:, None] ** 2).T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()
