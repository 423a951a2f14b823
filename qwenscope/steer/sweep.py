"""Does steering work? Generate from many prompts at several strengths, score each text, and price the fluency.

    rows = sweep(model, tokenizer, prompts, sae, [1234], alphas=[0, 2, 4, 8], score=lambda text: "dog" in text)
    rows[2].rate, rows[2].perplexity        # share of texts that score, perplexity under the unsteered model

    rows = sweep_choices(model, tokenizer, prompts, sae, [[3904], [17]], alphas=[0, 0.4, 0.8], score=...,
                         relative=True, unit=unit)      # several feature sets in the same batched generations

Generations are greedy and batched (left padding). The fluency cost is the perplexity of the generated tokens under
the *unsteered* model, conditioned on the prompt: how surprising the steered text is to the model left alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.models.scoring import continuation_logprobs
from qwenscope.sae.model import Sae
from qwenscope.steer.steer import steer

logger = logging.getLogger(__name__)


@dataclass
class SweepRow:
    """One strength of a sweep."""

    alpha: float
    rate: float
    """Share of generations the scorer accepts."""
    perplexity: float
    """Perplexity of the generated tokens under the unsteered model."""
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_batch(tokenizer: Any, prompts: Sequence[str], chat: bool = True) -> dict[str, Tensor]:
    """Left-padded token ids of ``prompts``, through the chat template when the tokenizer has one and ``chat``."""
    if not prompts or any(not p.strip() for p in prompts):
        raise QwenscopeError("prompts must be a non-empty list of non-empty texts")
    if chat and getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        kw: dict[str, Any] = {"add_special_tokens": False}
    else:
        texts, kw = list(prompts), {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        return dict(tokenizer(texts, return_tensors="pt", padding=True, **kw))
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    chat: bool = True,
    batch_size: int = 16,
) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
    """Greedy continuations: (prompt batches, generated-id batches), batched and left-padded."""
    batches: list[dict[str, Tensor]] = []
    outs: list[Tensor] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompt_batch(tokenizer, prompts[i : i + batch_size], chat)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        batches.append(batch)
        outs.append(out[:, batch["input_ids"].shape[1] :])
    return batches, outs


def _generated_mask(gen: Tensor, eos_ids: set[int]) -> Tensor:
    """True up to and including the first end-of-sequence token of each row."""
    is_eos = torch.zeros_like(gen, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= gen == e
    after = (is_eos.cumsum(1) - is_eos.long()) > 0
    return ~after


@torch.no_grad()
def continuation_nll_rows(
    model: Any, batch: dict[str, Tensor], gen: Tensor, eos_ids: set[int]
) -> tuple[Tensor, Tensor]:
    """Per row: the negative log-likelihood of ``gen`` given the prompt, summed, and the number of scored tokens."""
    ids = torch.cat([batch["input_ids"], gen], dim=1)
    keep = _generated_mask(gen, eos_ids)
    mask = torch.cat([batch["attention_mask"], keep.long()], dim=1)
    scored = F.pad(keep, (batch["input_ids"].shape[1], 0))  # the generated tokens up to the first end of sequence
    return -continuation_logprobs(model, ids, mask, scored), keep.sum(1).cpu()


def continuation_nll(model: Any, batch: dict[str, Tensor], gen: Tensor, eos_ids: set[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ``gen`` given the prompt, and the number of scored tokens."""
    nll, n = continuation_nll_rows(model, batch, gen, eos_ids)
    return float(nll.sum()), int(n.sum())


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sweep(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sae: Sae,
    features: Sequence[int],
    alphas: Sequence[float],
    score: Callable[[str], bool],
    *,
    max_new_tokens: int = 32,
    chat: bool = True,
    n_examples: int = 3,
    **steer_kwargs: Any,
) -> list[SweepRow]:
    """For each alpha: steer every feature with strength alpha, generate from every prompt, score and price."""
    eos = _eos_ids(model, tokenizer)
    rows = []
    for alpha in tqdm(alphas, desc="steering sweep", unit="alpha"):
        with steer(model, sae, dict.fromkeys(features, float(alpha)), **steer_kwargs):
            batches, outs = generate_batch(model, tokenizer, prompts, max_new_tokens, chat)
        texts = [tokenizer.decode(row, skip_special_tokens=True) for out in outs for row in out]
        nll, n = 0.0, 0
        for batch, out in zip(batches, outs):
            b_nll, b_n = continuation_nll(model, batch, out, eos)
            nll, n = nll + b_nll, n + b_n
        rate = sum(map(score, texts)) / len(texts)
        rows.append(SweepRow(float(alpha), rate, math.exp(nll / max(n, 1)), texts[:n_examples]))
        logger.info("alpha %g: rate %.2f, perplexity %.1f", alpha, rate, rows[-1].perplexity)
    return rows


def _shift(h: Tensor, delta: Tensor) -> Tensor:
    return h + delta.to(h.device, h.dtype)


@torch.no_grad()
def sweep_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sae: Sae,
    choices: Sequence[Sequence[int]],
    alphas: Sequence[float],
    score: Callable[[str], bool],
    *,
    max_new_tokens: int = 32,
    chat: bool = True,
    n_examples: int = 3,
    relative: bool = False,
    unit: float | None = None,
    hookpoint: str | None = None,
    batch_size: int = 64,
) -> list[list[SweepRow]]:
    """``sweep`` (add mode, every position) for several feature sets at once: ``rows[i][j]`` is choice ``i`` at
    ``alphas[j]``. Each alpha is one set of batched generations over every (choice, prompt) pair, each row carrying
    its own steering vector; alpha 0 is generated once and shared. Strengths are ``relative`` as in ``steer``."""
    from functools import partial

    from qwenscope.models.hookpoints import check_sae_fits
    from qwenscope.models.splice import splice
    from qwenscope.steer.steer import SteerSpec

    hook = check_sae_fits(sae, model, hookpoint).name
    specs = [SteerSpec(sae, dict.fromkeys(c, 1.0), relative=relative, unit=unit) for c in choices]
    w_dec = sae.W_dec.detach().float()
    vectors = torch.stack([s.values.to(w_dec.device) @ w_dec[s.ids.to(w_dec.device)] for s in specs])  # (choices, d)
    eos = _eos_ids(model, tokenizer)
    rows: list[list[SweepRow]] = [[] for _ in choices]
    for alpha in tqdm(alphas, desc="steering sweep", unit="alpha"):
        pairs = [(c, p) for c in range(1 if alpha == 0 else len(choices)) for p in range(len(prompts))]
        texts: dict[tuple[int, int], str] = {}
        nll, count = torch.zeros(len(choices)), torch.zeros(len(choices))
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            delta = float(alpha) * vectors[[c for c, _ in chunk]][:, None, :]  # (b, 1, d)
            with splice(model, hook, partial(_shift, delta=delta)):
                batches, outs = generate_batch(
                    model, tokenizer, [prompts[p] for _, p in chunk], max_new_tokens, chat, batch_size=len(chunk)
                )
            b_nll, b_n = continuation_nll_rows(model, batches[0], outs[0], eos)
            for i, (c, p) in enumerate(chunk):
                texts[c, p] = tokenizer.decode(outs[0][i], skip_special_tokens=True)
                nll[c], count[c] = nll[c] + b_nll[i], count[c] + b_n[i]
        for c in range(len(choices)):
            k = c if alpha != 0 else 0
            done = [texts[k, p] for p in range(len(prompts))]
            ppl = math.exp(float(nll[k] / count[k].clamp_min(1)))
            rows[c].append(SweepRow(float(alpha), sum(map(score, done)) / len(done), ppl, done[:n_examples]))
        logger.info("alpha %g: rates %s", alpha, [round(r[-1].rate, 2) for r in rows])
    return rows
