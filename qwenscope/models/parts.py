"""`load_model_and_saes`: a language model, its tokenizer and the SAEs it is read with, each at its hookpoint.

An SAE *source* is what ``load_sae`` takes: a folder, a file, a hub repo id, or an embedded model's name (its
shipped SAEs). No source means the model's shipped SAEs, which only the embedded models have. Sources and
hookpoints pair up by one rule:

- one source and several hookpoints: that source's SAE at each hookpoint (a folder of hookpoint folders, a
  multi-SAE repo, a Qwen-Scope release, the shipped SAEs);
- as many sources as hookpoints: the n-th source at the n-th hookpoint;
- no hookpoints: each source's own SAE at the hookpoint it records (``no_hookpoints="own"``), or, with
  ``no_hookpoints="shipped"``, every shipped hookpoint of a source that is an embedded model.

Each SAE is checked against the model with ``check_sae_fits``; the result's ``saes`` is keyed by the name that
check resolves, in the order of the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from qwenscope.errors import QwenscopeError
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.sae import EMBEDDED_MODELS, Sae, embedded_saes, load_sae

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NoHookpoints = Literal["own", "shipped"]
"""What no hookpoints means: each SAE's own recorded hookpoint, or every shipped hookpoint of an embedded SAE."""


@dataclass
class ModelAndSaes:
    """What ``load_model_and_saes`` loaded."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    sources: list[str]
    """The source of each SAE, in the order of ``saes`` (the model's name for its shipped SAEs)."""
    saes: dict[str, Sae]
    """Hookpoint name (as ``check_sae_fits`` resolves it) -> the SAE read there, in the order the pairs were given."""

    @property
    def sae_id(self) -> str:
        """The sources, each once and comma-separated: how the SAEs were named (locates their feature stores)."""
        return ",".join(dict.fromkeys(self.sources))

    @property
    def hookpoints(self) -> list[str]:
        """The hookpoint names, in order."""
        return list(self.saes)

    def one(self) -> tuple[str, Sae]:
        """(hookpoint, SAE) for a command that reads one SAE; QwenscopeError if there are several."""
        if len(self.saes) != 1:
            raise QwenscopeError(
                f"this command reads one SAE, got {len(self.saes)} (at {', '.join(self.saes)}); "
                "pass one --sae and at most one --hookpoint"
            )
        return next(iter(self.saes.items()))


def _split(value: str | Sequence[str] | None) -> list[str]:
    """A comma-separated string or a list -> its non-empty, stripped items (None: none)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [item.strip() for item in items if item and item.strip()]


def sae_pairs(
    model: str,
    sae: str | Sequence[str] | None = None,
    hookpoints: str | Sequence[str] | None = None,
    no_hookpoints: NoHookpoints = "own",
) -> list[tuple[str, str | None]]:
    """The (source, hookpoint or None for the SAE's own) pairs to load, by the pairing rule; nothing is loaded."""
    sources, hooks = _split(sae), _split(hookpoints)
    if not sources:
        if model not in EMBEDDED_MODELS:
            raise QwenscopeError(
                f"no SAE ships for {model} (only for {', '.join(EMBEDDED_MODELS)}); "
                "pass --sae (a folder, a file or a hub repo id)"
            )
        sources = [model]
    if hooks and len(sources) == 1:
        return [(sources[0], hook) for hook in hooks]
    if hooks and len(hooks) != len(sources):
        raise QwenscopeError(
            f"{len(sources)} SAE sources but {len(hooks)} hookpoints; pass one source for all hookpoints, "
            "one hookpoint per source, or no hookpoints"
        )
    if hooks:
        return list(zip(sources, hooks))
    shipped = embedded_saes() if no_hookpoints == "shipped" else {}
    none: list[str | None] = [None]
    return [(source, hook) for source in sources for hook in (list(shipped.get(source) or []) or none)]


def load_model_and_saes(
    model: str,
    sae: str | Sequence[str] | None = None,
    hookpoints: str | Sequence[str] | None = None,
    *,
    k: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    no_hookpoints: NoHookpoints = "own",
) -> ModelAndSaes:
    """Load the model, then each SAE at its hookpoint (see the module docstring for how they pair up).

    Args:
        model: what ``load_model`` takes (an embedded name, a folder, a hub id).
        sae: SAE source(s), comma-separated or a list; empty: the model's shipped SAEs.
        hookpoints: comma-separated or a list; empty: see ``no_hookpoints``.
        k: TopK k, for Qwen-Scope files outside a folder named like their release.
        device: where the model and the SAEs go.
        dtype: the model's dtype (``load_model``'s default when None); the SAEs keep ``load_sae``'s.
        no_hookpoints: with no hookpoints, ``"own"``: each SAE's recorded hookpoint; ``"shipped"``: every shipped
            hookpoint of an embedded model's SAEs.
    """
    from qwenscope.models import load as model_load  # looked up at call time: tests replace load_model

    pairs = sae_pairs(model, sae, hookpoints, no_hookpoints)  # bad counts fail before anything loads
    lm, tokenizer = model_load.load_model(model, device=device, dtype=dtype)
    sources: list[str] = []
    saes: dict[str, Sae] = {}
    for source, hook in pairs:
        loaded = load_sae(source, hookpoint=hook, k=k, device=device)
        if hook is None and loaded.cfg.hookpoint is None:
            raise QwenscopeError(
                f"the SAE at {source} does not record its hookpoint; name the hookpoint it reads (e.g. resid_post.3)"
            )
        name = check_sae_fits(loaded, lm, hook).name
        if name in saes:
            raise QwenscopeError(f"two SAEs for hookpoint {name}; give each hookpoint one SAE (run the others apart)")
        sources.append(source)
        saes[name] = loaded
    return ModelAndSaes(lm, tokenizer, sources, saes)
