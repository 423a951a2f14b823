"""The synthesis loop: up to ``budget`` generations per target, each verified, written as soon as it is, resumable.

    summary = synthesize(model, tokenizer, sae, targets, "offensive language", "synth.jsonl",
                         arms=[Arm("prompt"), Arm("rewrite", 0.4)], budget=8, positives=pos, seeds=seed_texts)
    summary.covered                     # the targets with at least one verified example
    synthesize_plain(model, tokenizer, sae, targets, "offensive language", "plain.jsonl", budget=8)   # the baseline
    run(SynthesizeConfig(...))          # end to end, as ``qwenscope synthesize``: load, inventory, gaps, synthesis

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

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from qwenscope import QwenscopeError, Sae, check_sae_fits
from qwenscope.apps.synthesize.generate import (
    METHODS,
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
    check_judge,
    contrast_inventory,
    judge_inventory,
    label_inventory,
    unreached,
)
from qwenscope.apps.synthesize.verify import verify
from qwenscope.features import MAX_TOKENS, FeatureStore
from qwenscope.util import atomic_write

logger = logging.getLogger(__name__)

STATE_VERSION = 1


# ---------------------------------------------------------------- results
@dataclass
class Summary:
    """What a synthesis run produced (the resumed part included)."""

    out: Path
    targets: list[Target]
    arms: list[str]
    attempts: dict[str, int] = field(default_factory=dict)
    """Target key (``hookpoint#id``; ``plain`` for the baseline) -> generations spent."""
    kept: dict[str, int] = field(default_factory=dict)
    """Target key -> verified examples that fire it."""
    seconds: float = 0.0
    """Time spent generating and verifying, over every resume."""

    @property
    def covered(self) -> list[str]:
        return [t.key for t in self.targets if self.kept.get(t.key, 0) > 0]

    @property
    def examples(self) -> int:
        """Verified examples in the output (plain ``keep_all`` records that fire no target left out)."""
        if not self.out.is_file():
            return 0
        return sum(1 for r in _read_records(self.out) if r.get("target") or r.get("targets"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "arms": self.arms,
            "targets": [t.as_dict() for t in self.targets],
            "covered": self.covered,
            "attempts": self.attempts,
            "kept": self.kept,
            "examples": self.examples,
            "seconds": round(self.seconds, 1),
        }

    def text(self) -> str:
        n, c = len(self.targets), len(self.covered)
        share = f" ({c / n:.0%})" if n else ""
        return (
            f"{n} targets, {c} covered{share}, {self.examples} examples kept from "
            f"{sum(self.attempts.values())} generations ({', '.join(self.arms)}) -> {self.out}"
        )


# ---------------------------------------------------------------- the output and its state
def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """(target key or ``plain``, attempt): what makes a record unique in a run."""
    target = record.get("target")
    key = f"{target['hookpoint']}#{target['id']}" if target else "plain"
    return key, int(record["attempt"])


class Output:
    """The output JSONL and its state file (see the module doc)."""

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".state.json")
        self.settings = json.loads(json.dumps(settings))
        self.batches: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.seconds = 0.0
        self.records: list[dict[str, Any]] = []
        self.done: set[tuple[str, int]] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_data = self.path.is_file() and self.path.stat().st_size > 0
        if self.state_path.is_file() and self.path.is_file():
            self._resume()  # also a run that has verified nothing yet: its spent batches stay spent
        elif has_data:
            raise QwenscopeError(
                f"{self.path} already holds data but no {self.state_path.name}: not a synthesis run "
                "this can resume; pass another --out or delete it"
            )
        else:
            self.path.write_text("")
            self._save()

    def _resume(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise QwenscopeError(
                f"{self.state_path} is damaged ({e}); delete it and {self.path} to start over"
            ) from None
        if state.get("settings") != self.settings:
            old = state.get("settings", {})
            diff = next((k for k in {**old, **self.settings} if old.get(k) != self.settings.get(k)), "version")
            raise QwenscopeError(
                f"{self.path} holds a run with other settings ({diff} differs); pass another --out, "
                "or delete it and its .state.json to start over"
            )
        self.batches, self.attempts = dict(state["batches"]), dict(state["attempts"])
        self.seconds = float(state.get("seconds", 0.0))
        self._load_records()
        logger.info(
            "resuming %s: %d examples, %d generations spent", self.path, len(self.records), sum(self.attempts.values())
        )

    def _load_records(self) -> None:
        """Read the records written so far; a last line cut short by a kill is dropped."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good = 0
        for i, line in enumerate(lines):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise QwenscopeError(f"{self.path}: line {i + 1} is damaged; remove it and run again") from None
                logger.warning("dropping the incomplete last line of %s (killed while writing it)", self.path)
                with self.path.open("r+b") as f:
                    f.truncate(good)
                break
            good += len(line) + 1
            self.records.append(record)
            self.done.add(record_key(record))

    def _save(self) -> None:
        state = {
            "version": STATE_VERSION,
            "settings": self.settings,
            "batches": self.batches,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }
        atomic_write(self.state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record and fsync it; False (nothing written) when it is already there."""
        key = record_key(record)
        if key in self.done:
            return False
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(key)
        return True

    def batch_done(self, key: str, attempts: dict[str, int], seconds: float = 0.0) -> None:
        """Batch ``key`` (an arm) is finished; ``attempts``: the generations it spent per target key."""
        self.seconds += seconds
        self.batches[key] = self.batches.get(key, 0) + 1
        for target, n in attempts.items():
            self.attempts[target] = self.attempts.get(target, 0) + n
        self._save()


# ---------------------------------------------------------------- the schedule
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


# ---------------------------------------------------------------- end to end
Inventory = Literal["contrast", "label", "judge"]


@dataclass
class SynthesizeConfig:
    seed: str
    """The seed corpus: a text file (one text per line), a JSONL (its --text-field) or a corpus spec such as
    fortunes:es."""
    description: str
    """What the synthesised data should contain, e.g. 'offensive / vulgar language'."""
    out: str = "synth.jsonl"
    """Output JSONL, one verified example per line (resumed when it holds a run with the same settings)."""
    positives: str = ""
    """Texts that carry the target (same forms as --seed): the contrast inventory and the prompts' snippets."""
    negatives: str = ""
    """Texts that do not carry it (same forms as --seed), for the contrast inventory."""
    model: str = "smollm2-135m"
    """Generator and reader: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE: a folder, a file, a hub repo id or an embedded model name; default: the model's embedded SAE."""
    hookpoint: str = ""
    """Where the SAE reads, e.g. resid_post.9; default: the hookpoint the SAE records."""
    inventory: Inventory = "contrast"
    """How the relevant features are found: contrast (--positives vs --negatives), label (feature-store labels
    matching --query) or judge (an LLM says yes/no per candidate feature)."""
    features: str = ""
    """Target feature ids, comma-separated: skips the inventory."""
    query: str = ""
    """label/judge: the words searched in the feature store's labels; default: --description."""
    top: int = 20
    """Inventory features kept at most (contrast and label)."""
    min_delta: float = 0.2
    """contrast: keep features with P(fires|positive) - P(fires|negative) at least this."""
    judge_url: str = ""
    """judge: an OpenAI-compatible endpoint (…/v1); --judge-model names the model it serves."""
    judge_model: str = ""
    """judge: with --judge-url the endpoint's model name; without it a local HF model (embedded name, folder or
    hub id) that judges."""
    candidates: int = 50
    """judge: candidate features shown to the judge (from the label search and, with --positives, the contrast)."""
    method: str = "prompt,rewrite"
    """prompt, rewrite (comma-separated; attempts take them in turn), or plain (the untargeted baseline)."""
    steer: float = 0.0
    """Relative strength the target feature is steered up with while generating (0: no steering; ~0.4 typical)."""
    budget: int = 8
    """Generations per target (plain: budget x targets in all)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling probability mass."""
    max_new_tokens: int = 48
    """Tokens generated per candidate."""
    sample_seed: int = 0
    """Base of the sampling seeds (each derived from it, the target and the attempt)."""
    batch_size: int = 8
    """Candidates generated together."""
    chat: bool = True
    """Render prompts with the tokenizer's chat template when it has one."""
    max_texts: int = 2000
    """Texts read at most from each of --seed, --positives and --negatives."""
    max_tokens: int = MAX_TOKENS
    """Texts are cut to this many tokens when read through the SAE."""
    text_field: str = "text"
    """The text field of JSONL inputs."""
    progress: bool = True
    """Show progress bars."""
    json: bool = False
    """Print the summary as JSON."""

    def __post_init__(self) -> None:
        if not self.description.strip():
            raise QwenscopeError("--description is empty; say what the synthesised data should contain")
        methods = self.methods
        if "plain" in methods and len(methods) > 1:
            raise QwenscopeError("--method plain is the untargeted baseline; run it on its own (with another --out)")
        _ = self.arms  # validates --steer against the methods
        if self.budget < 1:
            raise QwenscopeError(f"--budget must be at least 1 generation per target, got {self.budget}")
        if self.top < 1 or self.candidates < 1 or self.max_texts < 1:
            raise QwenscopeError("--top, --candidates and --max-texts must be at least 1")
        if not self.features:
            if self.inventory == "contrast" and not (self.positives and self.negatives):
                raise QwenscopeError("--inventory contrast needs --positives and --negatives (or --inventory label)")
            if self.inventory == "judge" and not self.judge_model:
                raise QwenscopeError(
                    "--inventory judge needs --judge-model: the model an OpenAI-compatible "
                    "--judge-url serves, or a local HF model"
                )
        _ = self.generation  # validates the sampling settings before the model loads

    @property
    def methods(self) -> list[str]:
        methods = [m.strip() for m in self.method.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if not methods or bad:
            raise QwenscopeError(f"--method {self.method!r}: use prompt, rewrite (comma-separated) or plain")
        return list(dict.fromkeys(methods))

    @property
    def arms(self) -> list[Arm]:
        return [Arm(m, self.steer) for m in self.methods]  # type: ignore[arg-type]

    @property
    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            self.temperature, self.top_p, self.max_new_tokens, self.sample_seed, self.batch_size, self.chat
        )


def read_texts(spec: str, text_field: str = "text", limit: int | None = None) -> list[str]:
    """Texts of a file (one per line; JSONL: the ``text_field`` of each record) or a corpus spec (``fortunes:es``,
    ``hf:...``, a folder: ``qwenscope.data.sources.iter_texts``), the first ``limit``."""
    import itertools

    from qwenscope.data import iter_texts

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".jsonl":
        from qwenscope.data import read_text

        texts: Any = (line.strip() for line in read_text(path).splitlines() if line.strip())
    else:
        texts = (t.strip() for t in iter_texts(spec, split="all", text_field=text_field) if t.strip())
    out = list(itertools.islice(texts, limit))
    if not out:
        raise QwenscopeError(f"{spec} holds no texts; pass a file with one text per line, a JSONL or a corpus spec")
    return out


def _inventory(
    cfg: SynthesizeConfig,
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hook: str,
    positives: list[str],
    negatives: list[str],
    judge: Any,
) -> tuple[list[Target], FeatureStore | None]:
    """The inventory and the feature store it read (label and judge; their snippets come from it)."""
    if cfg.features:
        try:
            ids = [int(i) for i in cfg.features.split(",") if i.strip()]
        except ValueError:
            raise QwenscopeError(f"--features {cfg.features!r}: write feature ids, comma-separated") from None
        check_ids(ids, sae)
        return [Target(hook, i, 1.0, "given") for i in ids], None
    if cfg.inventory == "contrast":
        found = contrast_inventory(
            model,
            tokenizer,
            sae,
            hook,
            positives,
            negatives,
            top=cfg.top,
            min_delta=cfg.min_delta,
            max_tokens=cfg.max_tokens,
            progress=cfg.progress,
        )
        return found, None
    store = _store(cfg, model, tokenizer, sae, hook)
    query = cfg.query or cfg.description
    if cfg.inventory == "label":
        return label_inventory(store, query, hook, cfg.top), store
    candidates = [t.id for t in label_inventory(store, query, hook, cfg.candidates)]
    if positives and negatives:
        candidates += [
            t.id
            for t in contrast_inventory(
                model, tokenizer, sae, hook, positives, negatives, top=cfg.candidates, min_delta=cfg.min_delta
            )
        ]
    return judge_inventory(judge, store, cfg.description, candidates, hook, progress=cfg.progress), store


def _store(cfg: SynthesizeConfig, model: Any, tokenizer: Any, sae: Sae, hook: str) -> FeatureStore:
    from qwenscope.features import find_store
    from qwenscope.models import model_name

    store = find_store(model, tokenizer, sae, model_name(model), cfg.sae or cfg.model, hook)
    if store is None:
        raise QwenscopeError(
            f"no feature store for this SAE: --inventory {cfg.inventory} reads its labels and "
            f"contexts; build one with `qwenscope stats --model {cfg.model}`, or use --inventory "
            "contrast"
        )
    return store


def _judge(cfg: SynthesizeConfig) -> Any:
    """The judge, checked before the models load (an unreachable endpoint fails at once)."""
    from qwenscope.features import HFLabeller, OpenAILabeller
    from qwenscope.models import load_model

    if cfg.judge_url:
        labeller = OpenAILabeller(cfg.judge_url, cfg.judge_model)
        check_judge(labeller)
        return labeller
    return HFLabeller(*load_model(cfg.judge_model))


def run(cfg: SynthesizeConfig) -> Summary:
    """End to end: load the model and SAE, read the texts, find the inventory and the seed's gaps, synthesise."""
    from qwenscope import load_model, load_sae

    judge = _judge(cfg) if cfg.inventory == "judge" and not cfg.features else None
    seeds = read_texts(cfg.seed, cfg.text_field, cfg.max_texts)
    positives = read_texts(cfg.positives, cfg.text_field, cfg.max_texts) if cfg.positives else []
    negatives = read_texts(cfg.negatives, cfg.text_field, cfg.max_texts) if cfg.negatives else []
    model, tokenizer = load_model(cfg.model)
    sae = load_sae(cfg.sae or cfg.model, hookpoint=cfg.hookpoint or None)
    hook = check_sae_fits(sae, model, cfg.hookpoint or None).name
    inventory, store = _inventory(cfg, model, tokenizer, sae, hook, positives, negatives, judge)
    targets = unreached(model, tokenizer, sae, hook, inventory, seeds, max_tokens=cfg.max_tokens, progress=cfg.progress)
    logger.info("inventory: %d features; %d never fire on the seed: the targets", len(inventory), len(targets))
    if not targets:
        logger.warning("the seed already activates every inventory feature: nothing to synthesise")
    gen = cfg.generation
    if cfg.methods == ["plain"]:
        return synthesize_plain(
            model,
            tokenizer,
            sae,
            targets,
            cfg.description,
            cfg.out,
            budget=cfg.budget,
            gen=gen,
            model_id=cfg.model,
            max_tokens=cfg.max_tokens,
            progress=cfg.progress,
        )
    return synthesize(
        model,
        tokenizer,
        sae,
        targets,
        cfg.description,
        cfg.out,
        arms=cfg.arms,
        budget=cfg.budget,
        gen=gen,
        positives=positives,
        seeds=seeds,
        store=store,
        model_id=cfg.model,
        max_tokens=cfg.max_tokens,
        progress=cfg.progress,
    )
