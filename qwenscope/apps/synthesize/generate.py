"""Candidates aimed at one target feature: a prompt built from the target description and snippets where the feature
fires, or a rewrite of a seed text; either optionally with the feature steered up while the answer is generated.

    shots = text_snippets(model, tokenizer, sae, hook, 1234, positives)      # the tokens around its max activation
    prompt = target_prompt("offensive language", shots)                     # or rewrite_prompt(..., seed_text)
    texts = generate_texts(model, tokenizer, [prompt] * 4, seeds=[11, 12, 13, 14], gen=GenerationConfig(),
                           steering=Steering(sae, 1234, 0.4, unit))

Sampling (temperature, nucleus ``top_p``) draws every row from its own random generator seeded by the caller, so a
row's text depends on its seed and the batch it runs in, not on what ran before: a resumed run regenerates exactly
what an uninterrupted one would. Prompts go through the tokenizer's chat template when it has one
(``qwenscope.steer.generate.encode_prompt``), left-padded in batches. Steering adds the feature's decoder direction at
a relative strength (``qwenscope.steer.strength``) on the generated tokens only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from qwenscope import QwenscopeError, Sae, check_sae_fits, get_activations, steer
from qwenscope.data import special_token_ids
from qwenscope.features import MAX_TOKENS, EncodeConfig, FeatureStore, context_text, encode_texts, tokenize_texts
from qwenscope.steer import prompt_batch

Method = Literal["prompt", "rewrite", "plain"]
METHODS: tuple[str, ...] = ("prompt", "rewrite", "plain")

PROMPT_TEMPLATE = "Write a short text that contains {description}.{examples}\nText:"
"""A targeted prompt (``examples``: the feature's snippets) and, without examples, the plain baseline's prompt."""
REWRITE_TEMPLATE = "Rewrite the text below so that it contains {description}.{examples}\nText: {seed}\nRewritten text:"
EXAMPLES = "\nExamples of such text:\n{lines}"


@dataclass
class GenerationConfig:
    """How candidates are sampled."""

    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling: draw from the fewest tokens holding this much probability."""
    max_new_tokens: int = 48
    """Tokens generated per candidate."""
    seed: int = 0
    """Base of every row's sampling seed (derived from it, the target and the attempt)."""
    batch_size: int = 8
    """Candidates generated together."""
    chat: bool = True
    """Render prompts with the tokenizer's chat template when it has one."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise QwenscopeError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise QwenscopeError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise QwenscopeError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise QwenscopeError(f"--batch-size must be at least 1, got {self.batch_size}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Arm:
    """One way of aiming candidates at a target: the method and the steering strength (0: no steering)."""

    method: Method = "prompt"
    strength: float = 0.0
    """Relative steering strength of the target feature on the generated tokens (``qwenscope.steer.strength``)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QwenscopeError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.method == "plain" and self.strength:
            raise QwenscopeError("the plain baseline has no target to steer; use --steer 0 with --method plain")

    @property
    def steered(self) -> bool:
        return self.strength != 0

    @property
    def name(self) -> str:
        return self.method + (f"+steer{self.strength:g}" if self.steered else "")


@dataclass
class Steering:
    """Steer feature ``id`` of ``sae`` up by ``strength`` x ``unit`` (the residual's typical size)."""

    sae: Sae
    id: int
    strength: float
    unit: float


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across runs and machines)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# ---------------------------------------------------------------- prompts
def _examples(snippets: Sequence[str]) -> str:
    lines = [" ".join(s.split()) for s in snippets if s.strip()]
    return EXAMPLES.format(lines="\n".join(f"- {s}" for s in lines)) if lines else ""


def target_prompt(description: str, snippets: Sequence[str] = (), template: str = PROMPT_TEMPLATE) -> str:
    """The prompt of the "prompt" method; without snippets, the plain baseline's."""
    return template.format(description=description.strip(), examples=_examples(snippets))


def rewrite_prompt(
    description: str, seed_text: str, snippets: Sequence[str] = (), template: str = REWRITE_TEMPLATE
) -> str:
    """The prompt of the "rewrite" method: rewrite ``seed_text`` so that it carries the target."""
    seed = " ".join(seed_text.split())
    return template.format(description=description.strip(), examples=_examples(snippets), seed=seed)


@torch.no_grad()
def text_snippets(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hookpoint: str | None,
    feature: int,
    texts: Sequence[str],
    *,
    n: int = 3,
    window: int = 8,
    max_tokens: int = MAX_TOKENS,
) -> list[str]:
    """The tokens around the feature's max activation (``window`` each side) in the ``n`` texts where it fires most."""
    if not texts or n < 1:
        return []
    hook = check_sae_fits(sae, model, hookpoint).name
    pooled = encode_texts(model, tokenizer, texts, [sae], [hook], EncodeConfig(max_tokens=max_tokens))[0]
    col = pooled.pooled[:, feature].toarray().ravel()
    best = [int(i) for i in sorted(range(len(texts)), key=lambda i: (-col[i], i))[:n] if col[i] > 0]
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)  # as encode_texts leaves them out
    device = next(model.parameters()).device
    out = []
    for i in best:
        ids = torch.tensor(tokenize_texts(tokenizer, [texts[i]], max_tokens)[0])
        acts = get_activations(model, ids[None].to(device), [hook])[hook][0]
        z = sae.encode(acts.to(sae.device))[:, feature].float().cpu()
        z[torch.isin(ids, special)] = float("-inf")
        top = int(z.argmax())
        piece = tokenizer.decode(ids[max(0, top - window) : top + window + 1], skip_special_tokens=True)
        out.append(" ".join(piece.split()))
    return [s for s in out if s]


def store_snippets(store: FeatureStore, feature: int, n: int = 3) -> list[str]:
    """The feature's top contexts in a feature store (for inventories without example texts)."""
    return [" ".join(context_text(c, mark=False).split()) for c in store.contexts(feature)[:n]]


# ---------------------------------------------------------------- sampling
NUCLEUS_TOP = 1024
"""The nucleus is looked for among this many most likely tokens first (a full sort only when they hold too little)."""


class RowSampler(LogitsProcessor):
    """Temperature and nucleus sampling with one random generator per row; returns 0 at the drawn token and -inf
    elsewhere, so greedy decoding picks it."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logits = scores.float().cpu()
        if self.temperature == 0:
            drawn = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            drawn = torch.stack([self._draw(p, g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(drawn)), drawn.to(scores.device)] = 0
        return out

    def _draw(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        """One token id from ``probs`` restricted to its nucleus: the fewest most likely tokens reaching ``top_p``."""
        if self.top_p >= 1:
            return torch.multinomial(probs, 1, generator=generator)[0]
        top, order = probs.topk(min(NUCLEUS_TOP, len(probs)))  # most likely first
        if float(top.sum()) < self.top_p:  # a flat distribution: the nucleus reaches further
            top, order = probs.sort(descending=True)
        top = top.masked_fill((top.cumsum(0) - top) >= self.top_p, 0)
        return order[torch.multinomial(top, 1, generator=generator)[0]]


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    gen: GenerationConfig,
    steering: Steering | None = None,
) -> list[str]:
    """One sampled continuation per prompt (row ``i`` drawn with ``seeds[i]``), decoded without special tokens."""
    if len(seeds) != len(prompts):
        raise QwenscopeError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
    batch = {k: v.to(model.device) for k, v in prompt_batch(tokenizer, prompts, gen.chat).items()}
    sampler = RowSampler(seeds, gen.temperature, gen.top_p)
    context = (
        steer(
            model,
            steering.sae,
            {steering.id: steering.strength},
            relative=True,
            unit=steering.unit,
            positions="generated",
        )
        if steering is not None
        else nullcontext()
    )
    with context:
        out = model.generate(
            **batch,
            max_new_tokens=gen.max_new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([sampler]),
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
