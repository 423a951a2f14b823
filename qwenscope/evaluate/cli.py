"""``qwenscope eval``: load a model and SAEs, run the evaluation suites, write ``eval.json`` and the plots.

Suites (``--suite``, comma-separated): ``core`` (reconstruction, sparsity and what splicing costs, on text from
``qwenscope.data``: any source ``iter_texts`` reads, by default its held-out ``test`` split, so an SAE trained on a
corpus is evaluated on documents it never saw), ``probing`` (k-sparse probing on the sae-probes tasks,
``qwenscope.evaluate.probing``) and ``random`` (each other suite also for a random-weight SAE of the same shape,
``qwenscope.sae.random_like``, under the key ``random``; the core suite evaluates them in the same pass as the
trained SAEs, sharing the clean and zero-ablated forwards).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate.metrics import DENSE_THRESHOLD

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    sae: str
    """SAE source: a folder, a file or a hub repo id; comma-separated for several (one per hookpoint)."""
    dataset: str = ""
    """Evaluation text of the core suite: a named corpus (dataset-build:multi ...), a .txt/.jsonl file or folder,
    hf:NAME."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    hookpoints: str = ""
    """Comma-separated hookpoints, e.g. resid_post.3,resid_post.7; empty: the hookpoint each SAE records."""
    split: str = "auto"
    """test (held out from training), train or all; auto: test for named corpora, all of a file you pass."""
    n_tokens: int = 16_384
    """Tokens to evaluate on (whole sequences, so possibly a few more). Each batch costs one forward plus, per
    hookpoint, two forwards of the layers above it (three with random). Dead-feature counts need many more tokens
    than the losses do."""
    seq_len: int = 256
    """Tokens per sequence: the text is packed into chunks of this length."""
    batch_size: int = 8
    """Sequences per forward."""
    out: str = "eval"
    """Output folder for eval.json and eval.png."""
    skip_first: bool = True
    """Leave the first token of each sequence (the attention sink, huge norm) out of replacement and metrics."""
    dense_threshold: float = DENSE_THRESHOLD
    """A feature firing on more than this fraction of tokens counts as dense."""
    k: int | None = None
    """TopK k, only for Qwen-Scope files outside a folder named like their release."""
    device: str = "cpu"
    """Device for the model and the SAEs (cpu, cuda, cuda:1, ...)."""
    suite: str = "core"
    """Suites, comma-separated: core, probing, absorption, autointerp, random (random: every other suite also for a
    random-weight SAE)."""
    probe_tasks: str = "cpu"
    """Probing tasks of the sae-probes package: cpu (8 tasks, minutes on a CPU), all, or names, comma-separated."""
    probe_train: int = 512
    """Training texts per probing task (half of each class)."""
    probe_test: int = 256
    """Test texts per probing task (half of each class, none of them a training text)."""
    probe_k: str = "1,2,5,20"
    """The k of k-sparse probing, comma-separated."""
    probe_pooling: str = "last"
    """One vector per text: last (the last token, sae-probes' convention) or mean (tokens but the first, SAEBench's)."""
    absorption_words: int = 1500
    """absorption: vocabulary words sampled for the first-letter task (60% train the letter probe, 40% test)."""
    explainer: str = ""
    """autointerp: who explains and scores features: an OpenAI-compatible endpoint (http://.../v1, e.g. qwenscope
    serve), a model name or folder run locally, or empty: the evaluated model itself (offline, and weak)."""
    explainer_model: str = ""
    """autointerp: the model name the endpoint serves (default: --model); the scorer's too if it is an endpoint."""
    scorer: str = ""
    """autointerp: who scores the explanations (the forms of --explainer); empty: the explainer."""
    interp_scoring: str = "auto"
    """autointerp: how the scorer answers: list (ten examples per prompt, a JSON list, delphi's), logprob (one
    example per prompt, p(yes) read from a local model: never unreadable, gives AUROC), auto (logprob if local)."""
    interp_features: int = 20
    """autointerp: features explained and scored per SAE (drawn among those that fire in the text)."""
    interp_examples: int = 50
    """autointerp: activating and as many non-activating examples per feature."""
    seed: int = 0
    """Seed of the task splits, the sampled features and of the random-weight SAEs."""

    def __post_init__(self) -> None:
        if not split_list(self.sae):
            raise QwenscopeError("--sae is empty; pass an SAE folder, file or hub repo id")
        unknown = [x for x in self.suites if x not in SUITES]
        if unknown or not self.suites or self.suites == ["random"]:
            what = f"unknown suite {unknown[0]!r}" if unknown else f"--suite {self.suite!r} runs nothing"
            raise QwenscopeError(f"{what}; choose from {', '.join(SUITES)} (random goes with another suite)")
        for suite in ("core", "autointerp"):
            if suite in self.suites and not self.dataset:
                raise QwenscopeError(f"the {suite} suite evaluates on text: pass --dataset (e.g. dataset-build:multi)")
        if self.absorption_words < 50:
            raise QwenscopeError(f"--absorption-words must be at least 50, got {self.absorption_words}")
        if self.interp_features < 1 or self.interp_examples < 2:
            raise QwenscopeError("--interp-features must be at least 1 and --interp-examples at least 2")
        if self.interp_scoring not in ("auto", "list", "logprob"):
            raise QwenscopeError(f"--interp-scoring is auto, list or logprob, got {self.interp_scoring!r}")
        if self.interp_scoring == "logprob" and (self.scorer or self.explainer).startswith(("http://", "https://")):
            raise QwenscopeError("--interp-scoring logprob needs a local scorer; pass --scorer <model> or use list")
        if self.probe_pooling not in ("last", "mean"):
            raise QwenscopeError(f"--probe-pooling is last or mean, got {self.probe_pooling!r}")
        try:
            ks = [int(k) for k in split_list(self.probe_k)]
        except ValueError:
            ks = []
        if not ks or min(ks) < 1:
            raise QwenscopeError(f"--probe-k takes positive integers, comma-separated, got {self.probe_k!r}")
        if self.probe_train < 2 or self.probe_test < 2:
            raise QwenscopeError("--probe-train and --probe-test must be at least 2 (one text per class)")
        for name in ("n_tokens", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise QwenscopeError(f"--seq-len must be at least 2 (one next-token prediction), got {self.seq_len}")
        if not 0 <= self.dense_threshold <= 1:
            raise QwenscopeError(f"--dense-threshold is a fraction in [0, 1], got {self.dense_threshold}")

    @property
    def suites(self) -> list[str]:
        return split_list(self.suite)


SUITES = ("core", "probing", "absorption", "autointerp", "random")


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# ---------------------------------------------------------------- run
def run_eval(cfg: EvalConfig, texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Run the suites of ``cfg`` (core on ``texts``, default: read from ``cfg.dataset``); write and print the report.

    Returns the results dict (also written to ``{cfg.out}/eval.json``, with the config under ``"config"``).
    """
    from qwenscope.evaluate.report import (
        format_absorption,
        format_autointerp,
        format_probing,
        format_table,
        write_report,
    )
    from qwenscope.models.parts import load_model_and_saes
    from qwenscope.sae.random import random_like

    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoints, k=cfg.k, device=cfg.device)
    model, tokenizer, saes = parts.model, parts.tokenizer, parts.saes
    baseline = "random" in cfg.suites
    chats = None
    if "autointerp" in cfg.suites:  # before any suite runs: an endpoint that does not answer fails at once
        chats = (
            _chat(cfg, cfg.explainer, model, tokenizer),
            _chat(cfg, cfg.scorer, model, tokenizer) if cfg.scorer else None,
        )
    results: dict[str, Any] = {"model": cfg.model, "dataset": cfg.dataset or None, "config": asdict(cfg)}
    if "probing" in cfg.suites:
        from qwenscope.evaluate.probing import Pooling, load_task, resolve_tasks, sparse_probing

        names = resolve_tasks(cfg.probe_tasks)  # before any forward: a bad name fails at once
        tasks = [load_task(n, cfg.probe_train, cfg.probe_test, cfg.seed) for n in names]
        ks = [int(k) for k in split_list(cfg.probe_k)]
        pooling: Pooling = "last" if cfg.probe_pooling == "last" else "mean"
        results["probing"] = sparse_probing(
            model, tokenizer, saes, tasks, ks=ks, pooling=pooling, baseline=baseline, seed=cfg.seed
        )
    if "absorption" in cfg.suites:
        from qwenscope.evaluate.absorption import absorption

        results["absorption"] = absorption(
            model, tokenizer, saes, n_words=cfg.absorption_words, baseline=baseline, seed=cfg.seed
        )
    if chats is not None:
        from qwenscope.evaluate.interp import autointerp_suite

        results["autointerp"] = autointerp_suite(
            model,
            tokenizer,
            saes,
            _texts(cfg) if texts is None else texts,
            chats[0],
            scorer=chats[1],
            by=cfg.interp_scoring,
            n_features=cfg.interp_features,
            n_examples=cfg.interp_examples,
            baseline=baseline,
            seed=cfg.seed,
        )
        results["autointerp"]["explainer"] = cfg.explainer or f"{cfg.model} (the evaluated model, locally)"
        results["autointerp"]["scorer"] = cfg.scorer or results["autointerp"]["explainer"]
    if "core" in cfg.suites:  # the random baselines in the same pass: results["random"]["hookpoints"]
        randoms = {"random": {hp: random_like(sae, seed=cfg.seed) for hp, sae in saes.items()}} if baseline else None
        results.update(_core(cfg, model, tokenizer, saes, texts, randoms))
    paths = write_report(results, cfg.out)
    if "hookpoints" in results:
        print(format_table(results))
    if "probing" in results:
        print(format_probing(results["probing"]))
    if "absorption" in results:
        print(format_absorption(results["absorption"]))
    if "autointerp" in results:
        print(format_autointerp(results["autointerp"]))
    print(f"\nwrote {', '.join(map(str, paths[:-1]))} and {paths[-1]}" if len(paths) > 1 else f"\nwrote {paths[0]}")
    return results


def _texts(cfg: EvalConfig) -> Iterable[str]:
    """The evaluation text of ``cfg.dataset`` (held-out split for a named corpus, all of a file)."""
    from qwenscope.data import iter_texts

    split = cfg.split
    if split == "auto":
        split = "all" if Path(cfg.dataset).expanduser().exists() else "test"
    return iter_texts(cfg.dataset, split=split)


def _chat(cfg: EvalConfig, source: str, model: Any, tokenizer: Any) -> Any:
    """The explainer or scorer named by ``source`` (the --explainer forms); an endpoint is checked at once."""
    from qwenscope.models.chat import HFChat, OpenAIChat

    if source.startswith(("http://", "https://")):
        chat = OpenAIChat(source, cfg.explainer_model or cfg.model, timeout=120.0)
        chat.check("pass a local model (--explainer <name or folder>) or none (the evaluated model)", "explainer")
        return chat
    if source:
        from qwenscope.models.load import load_model

        return HFChat(*load_model(source, device=cfg.device))
    logger.warning(
        "autointerp: the evaluated model explains and scores its own features (pass --explainer for a stronger one)"
    )
    return HFChat(model, tokenizer)


def _core(
    cfg: EvalConfig,
    model: Any,
    tokenizer: Any,
    saes: dict[str, Any],
    texts: Iterable[str] | None,
    baselines: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from qwenscope.data import chunk_tokens
    from qwenscope.evaluate.model_eval import evaluate_saes

    texts = _texts(cfg) if texts is None else texts
    chunks = chunk_tokens(texts, tokenizer, cfg.seq_len)
    results = evaluate_saes(
        model,
        saes,
        chunks,
        batch_size=cfg.batch_size,
        n_tokens=cfg.n_tokens,
        skip_first=cfg.skip_first,
        dense_threshold=cfg.dense_threshold,
        baselines=baselines,
    )
    if results["n_tokens"] < cfg.n_tokens:
        logger.warning("the dataset ran out after %d of %d tokens", results["n_tokens"], cfg.n_tokens)
    return results
