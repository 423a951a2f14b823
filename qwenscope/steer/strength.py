"""What a relative steering strength means: a fraction of the residual stream's typical size at the hookpoint.

    unit = steering_unit(model, tokenizer, "resid_post.15")            # the residual's typical size there
    with steer(model, sae, {3904: 0.5}, relative=True, unit=unit):     # adds a vector of norm 0.5 x unit
        ...

A relative strength ``alpha`` adds ``alpha * unit * d_f / |d_f|``: a vector along the feature's decoder direction
whose norm is ``alpha`` times the *unit*, the median over tokens of ``|h - mean(h)|``, the distance of the residual
``h`` at the hookpoint from its mean (over a fixed sample of the offline corpus; position 0, special tokens and
norm outliers left out, as in training). So ``alpha`` is the size of the push compared with how far the residual
normally moves from token to token: the same for every feature (also one that never fired in a feature store) and
comparable across models. The residual's mean is left out because some models carry a few huge constant dimensions
(gemma3-270m ``resid_post.9``) that say nothing about how much a push moves the model: with the mean removed, a
feature's typical activation when it fires is about the same fraction of the unit on smollm2-135m and gemma3-270m,
which it is not of the uncentred norm (the figures: docs/results/steering-concepts.md).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from qwenscope.data.tokens import norm_outlier_mask, token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.hookpoints import resolve_hookpoint

logger = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.5
"""The relative strength the demo steers with: the best strength (the highest success rate with perplexity <= 10)
for the demo's own concept, sea, in ``experiments/steering_concepts/steer_concepts.py``; the rates and the other
concepts' best strengths are in docs/results/steering-concepts.md."""
UNIT_SOURCE = "dataset-build:multi"
"""The corpus the unit is measured on by default (offline, 37 languages and code)."""
UNIT_TEXTS = 8
"""Documents of ``UNIT_SOURCE`` measured (the first ones, each cut to ``UNIT_CHARS``): ~2k tokens."""
UNIT_CHARS = 800

_cache: weakref.WeakKeyDictionary[nn.Module, dict[str, float]] = weakref.WeakKeyDictionary()


def unit_texts() -> list[str]:
    """The default sample the unit is measured on."""
    from qwenscope.data.sources import iter_texts

    return [t[:UNIT_CHARS] for t in itertools.islice(iter_texts(UNIT_SOURCE, split="all"), UNIT_TEXTS)]


@torch.no_grad()
def steering_unit(model: nn.Module, tokenizer, hookpoint: str, texts: Sequence[str] | None = None) -> float:
    """The median over tokens of ``|h - mean(h)|`` at ``hookpoint``: the norm a relative strength of 1 adds.

    Measured once per model and hookpoint on ``unit_texts()`` (cached for the process) unless ``texts`` is given.
    """
    name = resolve_hookpoint(model, hookpoint).name
    cached = _cache.get(model, {})
    if texts is None and name in cached:
        return cached[name]
    sample = list(texts) if texts is not None else unit_texts()
    if isinstance(texts, str) or not sample or any(not t.strip() for t in sample):
        raise QwenscopeError("steering_unit needs a list of non-empty texts")
    rows = []
    for text in sample:
        batch = tokenizer(text, return_tensors="pt")
        acts = get_activations(model, batch, [name])[name][0].float()  # (seq, d)
        keep = token_mask(batch["input_ids"][0], tokenizer).to(acts.device)
        rows.append(acts[norm_outlier_mask(acts, 10.0, valid=keep)] if keep.any() else acts[keep])
    acts = torch.cat(rows)
    if len(acts) < 2:
        raise QwenscopeError("too few tokens to measure the residual's size; pass longer texts")
    unit = float((acts - acts.mean(0)).norm(dim=-1).median())
    logger.info("steering unit at %s: %.4g (median |h - mean| over %d tokens)", name, unit, len(acts))
    if texts is None:
        _cache.setdefault(model, {})[name] = unit
    return unit
