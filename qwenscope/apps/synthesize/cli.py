"""``qwenscope synthesize``: feature-targeted data synthesis end to end, with a progress bar and a summary.

    qwenscope synthesize --seed fortunes:es --positives pos.txt --negatives neg.txt \\
        --description "offensive / vulgar language" --model gemma3-270m --inventory contrast \\
        --out synth.jsonl --budget 8 --method prompt,rewrite --steer 0.4
    qwenscope synthesize ... --method plain --out plain.jsonl          # the untargeted baseline, same budget

Run it again with the same arguments after a kill: it continues where it stopped (``qwenscope.apps.synthesize.output``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qwenscope import QwenscopeError, Sae
from qwenscope.apps.synthesize.generate import (
    METHODS,
    Arm,
    GenerationConfig,
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
from qwenscope.apps.synthesize.output import Summary
from qwenscope.apps.synthesize.run import synthesize, synthesize_plain
from qwenscope.features import MAX_TOKENS, FeatureStore

logger = logging.getLogger(__name__)


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
    """Relative strength the target feature is steered up with while generating (0: no steering)."""
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
    from qwenscope.models import load_model_and_saes

    judge = _judge(cfg) if cfg.inventory == "judge" and not cfg.features else None
    seeds = read_texts(cfg.seed, cfg.text_field, cfg.max_texts)
    positives = read_texts(cfg.positives, cfg.text_field, cfg.max_texts) if cfg.positives else []
    negatives = read_texts(cfg.negatives, cfg.text_field, cfg.max_texts) if cfg.negatives else []
    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint)
    model, tokenizer, (hook, sae) = parts.model, parts.tokenizer, parts.one()
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


def run_synthesize(cfg: SynthesizeConfig) -> None:
    summary = run(cfg)
    if cfg.json:
        print(json.dumps(summary.as_dict()))
        return
    print(summary.text())
    for t in summary.targets:
        spent = summary.attempts.get(t.key)
        of = f" of {spent:>3}" if spent is not None else ""
        print(f"  {t.key:<22} kept {summary.kept.get(t.key, 0):>3}{of}  {t.why}")


__all__ = ["SynthesizeConfig", "run_synthesize"]
