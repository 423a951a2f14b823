"""SaeConfig: the shape and activation of one sparse autoencoder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from qwenscope.errors import QwenscopeError

Activation = Literal["topk", "batchtopk", "jumprelu", "relu"]
ACTIVATIONS: tuple[str, ...] = ("topk", "batchtopk", "jumprelu", "relu")


@dataclass
class SaeConfig:
    """Everything needed to rebuild an `Sae` besides its weights. Saved as ``cfg.json`` beside them."""

    d_in: int
    """Width of the activations the SAE reads (the model's hidden size)."""

    d_sae: int
    """Number of features (the dictionary width)."""

    k: int | None = None
    """Active features per token for ``topk`` and ``batchtopk`` (on average for ``batchtopk``)."""

    activation: Activation = "topk"
    """``topk`` (Qwen-Scope, sparsify), ``batchtopk``, ``jumprelu`` (Gemma Scope) or ``relu``."""

    apply_b_dec_to_input: bool = False
    """Subtract ``b_dec`` from the input before encoding (sparsify and some SAELens SAEs; not Qwen-Scope)."""

    hookpoint: str | None = None
    """Where in the model the SAE reads, e.g. ``resid_post.12`` (output of decoder layer 12)."""

    model: str | None = None
    """Name of the model the SAE was trained on, e.g. ``Qwen/Qwen3-1.7B-Base``."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise QwenscopeError(f"unknown SAE activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise QwenscopeError(f"SAE sizes must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.activation in ("topk", "batchtopk"):
            if self.k is None:
                raise QwenscopeError(f"a {self.activation} SAE needs k (active features per token); pass k=")
            if not 0 < self.k <= self.d_sae:
                raise QwenscopeError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"format", "version"}
        if unknown:
            raise QwenscopeError(f"unknown SAE config keys {sorted(unknown)}; is this a qwenscope cfg.json?")
        return cls(**{key: value for key, value in d.items() if key in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": "qwenscope", **self.to_dict()}, indent=2) + "\n")
