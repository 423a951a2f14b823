"""Generation with and without steering, and the ``qwenscope steer`` command that prints both side by side."""

from __future__ import annotations

import logging
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.steer.steer import MODES, SteerSpec, steer

logger = logging.getLogger(__name__)


def encode_prompt(tokenizer: Any, prompt: str, chat: bool = True) -> dict[str, torch.Tensor]:
    """Token ids of a prompt, rendered with the tokenizer's chat template when it has one and ``chat`` is set."""
    if not prompt.strip():
        raise QwenscopeError("the prompt is empty; pass some text to generate from")
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return dict(tokenizer(text, return_tensors="pt", add_special_tokens=False))
    return dict(tokenizer(prompt, return_tensors="pt"))


@torch.no_grad()
def generate_text(
    model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 40, chat: bool = True, **generate_kwargs: Any
) -> str:
    """Greedy (unless ``do_sample=True`` is passed) continuation of ``prompt``, decoded without special tokens."""
    batch = {k: v.to(model.device) for k, v in encode_prompt(tokenizer, prompt, chat).items()}
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    kwargs.update(generate_kwargs)
    if tokenizer.pad_token_id is None:
        kwargs.setdefault("pad_token_id", tokenizer.eos_token_id)
    out = model.generate(**batch, **kwargs)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def generate_pair(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    sae: Sae | Sequence[SteerSpec],
    features: Mapping[int, float] | Sequence[int] | None = None,
    *,
    max_new_tokens: int = 40,
    chat: bool = True,
    **steer_kwargs: Any,
) -> tuple[str, str]:
    """(unsteered, steered) continuations of ``prompt``; ``steer_kwargs`` go to ``steer`` (mode, positions, ...)."""
    plain = generate_text(model, tokenizer, prompt, max_new_tokens, chat)
    with steer(model, sae, features, **steer_kwargs):
        steered = generate_text(model, tokenizer, prompt, max_new_tokens, chat)
    return plain, steered


def parse_features(spec: str) -> dict[int, float]:
    """``"123:4,55:-2.5"`` -> {123: 4.0, 55: -2.5}; a bare id means strength 1."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fid, _, strength = part.partition(":")
        try:
            out[int(fid)] = float(strength) if strength else 1.0
        except ValueError:
            raise QwenscopeError(f"cannot read feature {part!r}; write id:strength, e.g. 123:4,55:-2") from None
    if not out:
        raise QwenscopeError("--features is empty; write id:strength, e.g. --features 123:4")
    return out


@dataclass
class SteerConfig:
    features: str
    """Features and strengths, id:strength comma-separated, e.g. 123:4,55:-2 (ablate: ids only)."""
    prompt: str
    """The prompt to continue."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str | None = None
    """SAE: a folder, a file, a hub repo id or an embedded model name; default: the model's embedded SAE."""
    hookpoint: str | None = None
    """Where to steer, e.g. resid_post.15; default: the hookpoint the SAE records."""
    mode: str = "add"
    """add | clamp | ablate."""
    relative: bool = False
    """Strengths are fractions of the residual's typical size at the hookpoint (qwenscope.steer.strength; the
    demo steers at 0.5), measured on a few offline documents first."""
    positions: str = "all"
    """all | prompt | generated."""
    max_new_tokens: int = 40
    """Tokens generated per continuation."""
    chat: bool = True
    """Render the prompt with the chat template when the tokenizer has one."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QwenscopeError(f"--mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.positions not in ("all", "prompt", "generated"):
            raise QwenscopeError(f"--positions {self.positions!r} is unknown; use all, prompt or generated")
        if not self.prompt.strip():
            raise QwenscopeError("--prompt is empty; pass some text to generate from")
        parse_features(self.features)  # a typo fails before the model loads
        if self.max_new_tokens < 1:
            raise QwenscopeError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")


def side_by_side(left: str, right: str, titles: tuple[str, str] = ("unsteered", "steered")) -> str:
    """Two texts in wrapped columns that fit the terminal."""
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    cols = [textwrap.wrap(t.replace("\n", " ") or "(empty)", width) for t in (left, right)]
    rows = [f"{titles[0]:<{width}} | {titles[1]}", f"{'-' * width}-+-{'-' * width}"]
    for i in range(max(map(len, cols))):
        a, b = (c[i] if i < len(c) else "" for c in cols)
        rows.append(f"{a:<{width}} | {b}")
    return "\n".join(rows)


def run_steer(cfg: SteerConfig) -> None:
    from qwenscope.models.load import load_model
    from qwenscope.sae.load import load_sae

    model, tokenizer = load_model(cfg.model)
    sae = load_sae(cfg.sae or cfg.model, hookpoint=cfg.hookpoint)
    features = parse_features(cfg.features)
    unit = None
    if cfg.relative:
        from qwenscope.models.hookpoints import check_sae_fits
        from qwenscope.steer.strength import steering_unit

        unit = steering_unit(model, tokenizer, check_sae_fits(sae, model, cfg.hookpoint).name)
    positions = None if cfg.positions == "all" else cfg.positions
    plain, steered = generate_pair(
        model,
        tokenizer,
        cfg.prompt,
        sae,
        features,
        max_new_tokens=cfg.max_new_tokens,
        chat=cfg.chat,
        mode=cfg.mode,
        positions=positions,
        hookpoint=cfg.hookpoint,
        relative=cfg.relative,
        unit=unit,
    )
    what = ", ".join(f"{f}:{s:g}" for f, s in features.items())
    scale = f" (x {unit:.4g}, the residual's typical size)" if unit is not None else ""
    print(f"prompt: {cfg.prompt!r}\nsteering {cfg.mode} {what}{scale}\n")
    print(side_by_side(plain, steered))
