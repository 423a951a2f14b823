"""Repetition: how much a generation repeats itself, which SAE features drive it, and whether steering one up does.

    stats = repeat_stats([[5, 6, 7] * 4])                    # RepeatStats(repeat_ratio=0.667, loop_share=1.0, n=1)
    loops = looping_generations(model, tokenizer, prompts)   # the model's own looping greedy outputs
    found = rank_repetition_features(model, sae, loops)      # found.feature_ids: the top features
    check = steering_check(model, tokenizer, sae, found.feature_ids[0], prompts, alpha=0.5, unit=unit)
    check.plain.repeat_ratio, check.steered.repeat_ratio     # steering it up should raise the ratio

Definitions (on token ids, special tokens and everything from the first EOS on stripped):
- repeat ratio ``rep-n`` (Welleck et al. 2019): the share of a generation's n-grams that repeat an earlier n-gram of
  the same generation, ``1 - distinct n-grams / n-grams``; 0 for fewer than n tokens. Default n = 4.
- a generation *loops* when its tail is periodic: for some period ``p <= max_period`` its last
  ``max(repeats * p, min_span)`` tokens satisfy ``t[i] == t[i - p]``, i.e. one p-gram repeated at least ``repeats``
  whole times over at least ``min_span`` tokens (defaults 3, 12 and 32). ``loop_share``: the share that loop.
- repetition features: over looping generations, for each token id that occurs at least twice in a generation's
  completion, the SAE activation at its last occurrence minus that at its first; a feature's score is the mean of
  this difference over all such (generation, token id) pairs. The top scores are the repetition features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from qwenscope import QwenscopeError
from qwenscope.models import check_sae_fits, get_activations, pad_ids
from qwenscope.sae import Sae
from qwenscope.steer import SteerSpec, steer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopRule:
    """When a generation counts as looping: its last ``max(repeats * p, min_span)`` tokens have period p."""

    repeats: int = 3
    """Whole repetitions of the cycle the tail must hold."""
    min_span: int = 12
    """Tokens the periodic tail must cover at least (so ``!!!`` at the end is not a loop)."""
    max_period: int = 32
    """Longest cycle looked for, in tokens."""

    def __post_init__(self) -> None:
        if self.repeats < 2 or self.min_span < 2 or self.max_period < 1:
            raise QwenscopeError(
                f"LoopRule(repeats={self.repeats}, min_span={self.min_span}, max_period={self.max_period}): "
                "a loop needs repeats >= 2, min_span >= 2 and max_period >= 1"
            )


class RepeatStats(NamedTuple):
    """Repetition of a set of generations."""

    repeat_ratio: float
    """Mean over generations of rep-n, the share of n-grams repeating an earlier one."""
    loop_share: float
    """Share of generations whose tail loops (``LoopRule``)."""
    n: int
    """Generations measured."""


def repeat_ratio(tokens: Sequence[int], n: int = 4) -> float:
    """``1 - distinct n-grams / n-grams`` of ``tokens``: the share of n-grams that repeat an earlier one."""
    if n < 1:
        raise QwenscopeError(f"n={n}: the n-gram size must be at least 1")
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def loop_period(tokens: Sequence[int], rule: LoopRule = LoopRule()) -> int:
    """The shortest period p of a looping tail of ``tokens`` (see ``LoopRule``), or 0 when it does not loop."""
    for p in range(1, rule.max_period + 1):
        span = max(rule.repeats * p, rule.min_span)
        if span > len(tokens):
            break  # span grows with p
        tail = list(tokens[-span:])
        if tail[p:] == tail[:-p]:
            return p
    return 0


def repeat_stats(generations: Sequence[Sequence[int]], n: int = 4, rule: LoopRule = LoopRule()) -> RepeatStats:
    """Mean rep-n and the share of looping generations; NaNs for an empty list."""
    if not generations:
        return RepeatStats(float("nan"), float("nan"), 0)
    ratios = [repeat_ratio(g, n) for g in generations]
    loops = [loop_period(g, rule) > 0 for g in generations]
    return RepeatStats(sum(ratios) / len(ratios), sum(loops) / len(loops), len(generations))


def strip_completion(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """``ids`` up to (without) the first stop id (EOS, pad)."""
    out: list[int] = []
    stops = set(stop_ids)
    for t in ids:
        if t in stops:
            break
        out.append(int(t))
    return out


def stop_ids(tokenizer: Any) -> list[int]:
    """The ids that end a completion: EOS (one or several) and pad."""
    eos = tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [int(i) for i in [*ids, tokenizer.pad_token_id] if i is not None]


# ---------------------------------------------------------------- generation
def render_prompts(tokenizer: Any, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt, rendered with the chat template when the tokenizer has one and ``chat`` is set."""
    if isinstance(prompts, str) or not prompts or any(not p.strip() for p in prompts):
        raise QwenscopeError("pass a list of non-empty prompts")
    if chat and getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


@torch.no_grad()
def generate_completions(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    spec: SteerSpec | None = None,
) -> list[list[int]]:
    """Greedy completions (ids, cut at the first EOS) of token-id prompts, left-padded in batches; with ``spec``
    steered at every position of every row."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids(tokenizer)[0]
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        ids, mask = pad_ids([list(p) for p in chunk], pad, left=True, mask_dtype=torch.long)
        width = ids.shape[1]
        with steer(model, [spec]) if spec is not None else nullcontext():
            seqs = model.generate(  # type: ignore[operator]
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        stops = stop_ids(tokenizer)
        out += [strip_completion(row[width:].tolist(), stops) for row in seqs]
    return out


class Generation(NamedTuple):
    """A prompt and the model's completion, as token ids."""

    prompt_ids: list[int]
    completion_ids: list[int]


def looping_generations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    chat: bool = True,
    rule: LoopRule = LoopRule(),
) -> list[Generation]:
    """The greedy generations of ``prompts`` that loop (``rule``); logs how many of them did."""
    prompt_ids = render_prompts(tokenizer, prompts, chat)
    completions = generate_completions(
        model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    loops = [Generation(p, c) for p, c in zip(prompt_ids, completions) if loop_period(c, rule)]
    logger.info("%d of %d greedy generations loop", len(loops), len(prompts))
    return loops


# ---------------------------------------------------------------- features
class RepetitionFeatures(NamedTuple):
    """SAE features ranked by activation at a token's last occurrence against its first, in looping generations."""

    feature_ids: list[int]
    """The top features, best first."""
    scores: Tensor
    """(d_sae,) mean over repeated tokens of activation at the last occurrence minus at the first."""
    n_tokens: int
    """(generation, token id) pairs that entered the mean."""
    n_generations: int
    """Generations read."""


def first_last_positions(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(first, last) positions in ``tokens`` (1-D) of every token id that occurs at least twice, by id order."""
    uniq, inverse, counts = torch.unique(tokens, return_inverse=True, return_counts=True)
    pos = torch.arange(len(tokens))
    first = torch.full((len(uniq),), len(tokens), dtype=torch.long).scatter_reduce(0, inverse, pos, "amin")
    last = torch.full((len(uniq),), -1, dtype=torch.long).scatter_reduce(0, inverse, pos, "amax")
    repeated = counts >= 2
    return first[repeated], last[repeated]


@torch.no_grad()
def rank_repetition_features(
    model: nn.Module,
    sae: Sae,
    generations: Sequence[Generation],
    *,
    hookpoint: str | None = None,
    top: int = 10,
) -> RepetitionFeatures:
    """Rank the SAE's features by mean (activation at a completion token's last occurrence - at its first)."""
    hook = check_sae_fits(sae, model, hookpoint)
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    n_tokens = 0
    for gen in generations:
        ids = torch.tensor([*gen.prompt_ids, *gen.completion_ids], dtype=torch.long)[None]
        acts = get_activations(model, ids, [hook])[hook.name][0]  # (seq, d_in)
        start = len(gen.prompt_ids)
        first, last = first_last_positions(ids[0, start:])
        if not len(first):
            continue
        feats = sae.encode(acts[start:].to(sae.device, sae.dtype)).double().cpu()  # (completion, d_sae)
        total += (feats[last] - feats[first]).sum(0)
        n_tokens += len(first)
    if not n_tokens:
        raise QwenscopeError(
            "no token repeats in these generations: pass looping generations (looping_generations) or more prompts"
        )
    scores = (total / n_tokens).float()
    best: list[int] = scores.topk(min(top, sae.d_sae)).indices.tolist()
    logger.info(
        "repetition features over %d repeated tokens of %d generations: %s",
        n_tokens,
        len(generations),
        ", ".join(f"{f} ({scores[f]:.3g})" for f in best[:5]),
    )
    return RepetitionFeatures(best, scores, n_tokens, len(generations))


class SteeringCheck(NamedTuple):
    """Repetition of the same prompts' greedy generations without and with a feature steered up."""

    plain: RepeatStats
    steered: RepeatStats

    @property
    def raised(self) -> bool:
        """Steering raised the repeat ratio."""
        return self.steered.repeat_ratio > self.plain.repeat_ratio


def steering_check(
    model: nn.Module,
    tokenizer: Any,
    sae: Sae,
    feature: int,
    prompts: Sequence[str],
    *,
    alpha: float = 0.5,
    hookpoint: str | None = None,
    unit: float | None = None,
    max_new_tokens: int = 64,
    n: int = 4,
    batch_size: int = 8,
    chat: bool = True,
) -> SteeringCheck:
    """Repeat ratio and loop share of greedy generations of ``prompts`` without and with ``feature`` steered up by
    ``alpha`` (relative to ``unit``, ``steering_unit(...)``, when given; else an absolute strength)."""
    spec = SteerSpec(sae, {feature: alpha}, hookpoint=hookpoint, relative=unit is not None, unit=unit)
    prompt_ids = render_prompts(tokenizer, prompts, chat)
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    plain = repeat_stats(generate_completions(model, tokenizer, prompt_ids, **kw), n)
    steered = repeat_stats(generate_completions(model, tokenizer, prompt_ids, spec=spec, **kw), n)
    logger.info(
        "feature %d at alpha %g: repeat ratio %.3f -> %.3f, loops %.2f -> %.2f",
        feature,
        alpha,
        plain.repeat_ratio,
        steered.repeat_ratio,
        plain.loop_share,
        steered.loop_share,
    )
    return SteeringCheck(plain, steered)
