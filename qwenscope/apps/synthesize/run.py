"""The synthesis loop: up to ``budget`` generations per target, each verified, written as soon as it is, resumable.

    summary = synthesize(model, tokenizer, sae, targets, "offensive language", "synth.jsonl",
                         arms=[Arm("prompt"), Arm("rewrite", 0.4)], budget=8, positives=pos, seeds=seed_texts)
    summary.covered                     # the targets with at least one verified example
    synthesize_plain(model, tokenizer, sae, targets, "offensive language", "plain.jsonl", budget=8)   # the baseline

Attempt ``a`` of a target uses ``arms[a % len(arms)]``; its sampling seed is derived from (``gen.seed``, the target,
``a``). Unsteered arms batch attempts across targets; a steered arm batches one target's attempts (the steered
feature is the target). The plain baseline spends the same total, ``budget`` x targets generations, from the
description alone (no snippets, no steering) and checks each against every target.

Output: one JSON line per verified example, appended, flushed and fsynced as soon as it is verified. Beside it
``<out>.state.json`` (written atomically) holds the run's settings, the batches finished per arm and the generations
spent per target.
A run started again on the same output continues where it stopped: finished batches are skipped, the batch in
progress is regenerated (the same texts: seeds and batch are the same) and its examples already written are not
written twice. Another run's output (other settings) is refused in one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qwenscope import QwenscopeError, Sae, check_sae_fits
from qwenscope.apps.synthesize.generate import (
    Arm,
    GenerationConfig,
    Steering,
    derive_seed,
    generate_texts,
    rewrite_prompt,
    store_snippets,
    target_prompt,
    text_snippets,
)
from qwenscope.apps.synthesize.inventory import (
    Target,
    check_ids,
)
from qwenscope.apps.synthesize.output import Output, Summary, record_key
from qwenscope.apps.synthesize.verify import verify
from qwenscope.features import MAX_TOKENS, FeatureStore

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Generations made together with one arm: rows of (target, attempt); a steered arm's batch has one target (the
    steered feature), an unsteered one's runs across targets (a full batch costs little more than one row)."""

    arm: Arm
    index: int
    """The batch's place among its arm's batches (what the state counts)."""
    rows: list[tuple[Target | None, int]]

    @property
    def key(self) -> str:
        return self.arm.name

    def spent(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, _ in self.rows:
            key = t.key if t is not None else "plain"
            out[key] = out.get(key, 0) + 1
        return out


def targeted_batches(targets: Sequence[Target], arms: Sequence[Arm], budget: int, size: int) -> list[Batch]:
    """Arm by arm: attempt ``a`` of each target goes to ``arms[a % len(arms)]``, batched ``size`` rows at a time."""
    out = []
    for k, arm in enumerate(arms):
        rows: list[tuple[Target | None, int]] = [(t, a) for t in targets for a in range(budget) if a % len(arms) == k]
        groups = [[r for r in rows if r[0] is t] for t in targets] if arm.steered else [rows]
        index = 0
        for group in groups:
            for j in range(0, len(group), size):
                out.append(Batch(arm, index, group[j : j + size]))
                index += 1
    return out


def plain_batches(total: int, size: int) -> list[Batch]:
    starts = range(0, total, size)
    return [Batch(Arm("plain"), j // size, [(None, a) for a in range(j, min(j + size, total))]) for j in starts]


def _generator(model_id: str, gen: GenerationConfig, sampling_seed: int) -> dict[str, Any]:
    return {
        "model": model_id,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "seed": gen.seed,
        "max_new_tokens": gen.max_new_tokens,
        "chat": gen.chat,
        "sampling_seed": sampling_seed,
    }


def _check(model: Any, sae: Sae, targets: Sequence[Target], budget: int, description: str) -> str:
    if budget < 1:
        raise QwenscopeError(f"--budget must be at least 1 generation per target, got {budget}")
    if not description.strip():
        raise QwenscopeError("--description is empty; say what the synthesised data should contain")
    hook = check_sae_fits(sae, model, targets[0].hookpoint if targets else None).name
    other = [t.key for t in targets if t.hookpoint != hook]
    if other:
        raise QwenscopeError(f"target {other[0]} reads another hookpoint than the SAE given ({hook}); one SAE per run")
    check_ids((t.id for t in targets), sae)
    return hook


def _settings(
    mode: str,
    model_id: str,
    sae: Sae,
    hook: str,
    targets: Sequence[Target],
    arms: Sequence[Arm],
    budget: int,
    description: str,
    gen: GenerationConfig,
    max_tokens: int,
) -> dict[str, Any]:
    from qwenscope.features import sae_fingerprint

    return {
        "mode": mode,
        "description": description,
        "model": model_id,
        "sae": sae_fingerprint(sae),
        "hookpoint": hook,
        "targets": [t.key for t in targets],
        "arms": [a.name for a in arms],
        "budget": budget,
        "generation": gen.as_dict(),
        "max_tokens": max_tokens,
    }


def _loop(out: Output, batches: Sequence[Batch], step: Callable[[Batch], None], progress: bool, desc: str) -> None:
    total = sum(len(b.rows) for b in batches)
    done = sum(len(b.rows) for b in batches if b.index < out.batches.get(b.key, 0))
    with tqdm(total=total, initial=done, desc=desc, unit="gen", disable=not progress) as bar:
        for batch in batches:
            if batch.index < out.batches.get(batch.key, 0):
                continue
            start = time.perf_counter()
            step(batch)
            out.batch_done(batch.key, batch.spent(), time.perf_counter() - start)
            bar.update(len(batch.rows))
            bar.set_postfix(kept=len(out.records))


# ---------------------------------------------------------------- targeted
def synthesize(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    targets: Sequence[Target],
    description: str,
    out: str | Path,
    *,
    arms: Sequence[Arm] = (Arm("prompt"),),
    budget: int = 8,
    gen: GenerationConfig | None = None,
    positives: Sequence[str] = (),
    seeds: Sequence[str] = (),
    store: FeatureStore | None = None,
    model_id: str = "",
    unit: float | None = None,
    n_snippets: int = 3,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> Summary:
    """Generate up to ``budget`` candidates per target with ``arms`` in turn; write each verified one to ``out``.

    Snippets for the prompts come from ``positives`` (where the target fires most), else from ``store``'s top
    contexts; ``seeds`` are the texts rewrites start from. ``unit``: the steering unit (measured when None and an
    arm steers)."""
    gen = gen or GenerationConfig()
    arms = list(arms)
    if not arms or any(a.method == "plain" for a in arms):
        raise QwenscopeError("pass the targeted arms (prompt, rewrite); the plain baseline is synthesize_plain")
    hook = _check(model, sae, targets, budget, description)
    if any(a.method == "rewrite" for a in arms) and not seeds:
        raise QwenscopeError("the rewrite method needs seed texts to rewrite; pass --seed with at least one text")
    if unit is None and any(a.steered for a in arms):
        from qwenscope.steer import steering_unit

        unit = steering_unit(model, tokenizer, hook)
    settings = _settings("targeted", model_id, sae, hook, targets, arms, budget, description, gen, max_tokens)
    output = Output(out, settings)
    shots: dict[str, list[str]] = {}

    def snippets(t: Target) -> list[str]:
        if t.key not in shots:
            found = text_snippets(model, tokenizer, sae, hook, t.id, positives, n=n_snippets, max_tokens=max_tokens)
            shots[t.key] = found or (store_snippets(store, t.id, n_snippets) if store is not None else [])
        return shots[t.key]

    def step(batch: Batch) -> None:
        rows = [(t, a) for t, a in batch.rows if t is not None]
        rewrite = batch.arm.method == "rewrite"
        seed_texts = [
            seeds[derive_seed(gen.seed, t.key, a, "seed-text") % len(seeds)] if rewrite else None for t, a in rows
        ]
        prompts = [
            rewrite_prompt(description, s, snippets(t)) if s is not None else target_prompt(description, snippets(t))
            for (t, _), s in zip(rows, seed_texts)
        ]
        row_seeds = [derive_seed(gen.seed, t.key, a) for t, a in rows]
        first = rows[0][0]
        steering = Steering(sae, first.id, batch.arm.strength, float(unit or 0)) if batch.arm.steered else None
        texts = generate_texts(model, tokenizer, prompts, row_seeds, gen, steering)
        ids = list(dict.fromkeys(t.id for t, _ in rows))
        acts = verify(model, tokenizer, sae, hook, texts, ids, max_tokens=max_tokens)
        made = zip(rows, texts, prompts, seed_texts, row_seeds)
        for i, ((t, a), text, prompt, seed_text, row_seed) in enumerate(made):
            act = acts[i, ids.index(t.id)]
            if act > 0:
                output.write(
                    {
                        "text": text,
                        "target": {"hookpoint": t.hookpoint, "id": t.id},
                        "method": batch.arm.method,
                        "steered": batch.arm.steered,
                        "strength": batch.arm.strength,
                        "activation": round(float(act), 5),
                        "generator": _generator(model_id, gen, row_seed),
                        "seed_text": seed_text,
                        "attempt": a,
                        "prompt": prompt,
                        "description": description,
                    }
                )

    _loop(output, targeted_batches(targets, arms, budget, gen.batch_size), step, progress, "synthesising")
    kept = {t.key: 0 for t in targets}
    for r in output.records:
        key = record_key(r)[0]
        kept[key] = kept.get(key, 0) + 1
    return Summary(output.path, list(targets), [a.name for a in arms], output.attempts, kept, output.seconds)


# ---------------------------------------------------------------- the plain baseline
def synthesize_plain(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    targets: Sequence[Target],
    description: str,
    out: str | Path,
    *,
    budget: int = 8,
    gen: GenerationConfig | None = None,
    model_id: str = "",
    keep_all: bool = False,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> Summary:
    """``budget`` x len(targets) generations from the description alone, each checked against every target; the
    ones that fire some target are written (with the targets they fire). ``keep_all``: write the others too (their
    ``targets`` empty), e.g. to use the untargeted generations themselves as data."""
    gen = gen or GenerationConfig()
    hook = _check(model, sae, targets, budget, description)
    arms = [Arm("plain")]
    settings = _settings("plain", model_id, sae, hook, targets, arms, budget, description, gen, max_tokens)
    output = Output(out, {**settings, "keep_all": keep_all})
    prompt = target_prompt(description)
    ids = [t.id for t in targets]

    def step(batch: Batch) -> None:
        attempts = [a for _, a in batch.rows]
        row_seeds = [derive_seed(gen.seed, "plain", a) for a in attempts]
        texts = generate_texts(model, tokenizer, [prompt] * len(attempts), row_seeds, gen)
        acts = verify(model, tokenizer, sae, hook, texts, ids, max_tokens=max_tokens)
        for a, text, row, row_seed in zip(attempts, texts, acts, row_seeds):
            hits: list[dict[str, Any]] = [
                {"hookpoint": t.hookpoint, "id": t.id, "activation": round(float(v), 5)}
                for t, v in zip(targets, row)
                if v > 0
            ]
            if hits or keep_all:
                output.write(
                    {
                        "text": text,
                        "targets": hits,
                        "method": "plain",
                        "steered": False,
                        "strength": 0.0,
                        "activation": max((h["activation"] for h in hits), default=0.0),
                        "generator": _generator(model_id, gen, row_seed),
                        "seed_text": None,
                        "attempt": a,
                        "prompt": prompt,
                        "description": description,
                    }
                )

    _loop(output, plain_batches(budget * len(targets), gen.batch_size), step, progress, "plain generations")
    kept = {t.key: 0 for t in targets}
    for r in output.records:
        for h in r.get("targets", []):
            key = f"{h['hookpoint']}#{h['id']}"
            kept[key] = kept.get(key, 0) + 1
    return Summary(output.path, list(targets), ["plain"], output.attempts, kept, output.seconds)
