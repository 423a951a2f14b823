"""The post-training commands, SASFT and GRPO (TRL underneath).

``qwenscope sasft``: fine-tune with the SASFT loss (TRL's SFTTrainer underneath).

    qwenscope sasft --model gemma3-270m --sae gemma3-270m --hookpoint resid_post.9 --data sft.jsonl \\
        --lang-column lang --unwanted en --lam 1e-3 --top 2 --steps 200 --out runs/sasft [--lora]

Data: a JSONL (or JSON list) file of samples in any format SFTTrainer reads (``prompt``/``completion``,
``messages``, or ``text``) plus a column naming each sample's language. Samples in ``--unwanted`` are trained by CE
only; the others also pay the feature penalty.

Language features (the unwanted language's top features and every language's thresholds alpha): ``--features
FILE`` (written by an earlier run or ``LanguageFeatures.save``), else measured on ``--corpus`` (``en=fortunes:en,
es=bible:es``: any text source per language), else on the data's own responses grouped by language (then the data
must hold some responses in the unwanted language). They are saved as ``OUT/language_features.json``.

Several hookpoints: ``--hookpoint resid_post.9,resid_post.14`` penalises the top features of each (one SAE per
hookpoint: ``--sae`` names one source holding them all, such as the model's shipped SAEs or a folder of hookpoint
folders, or one per hookpoint, comma-separated; ``--features`` likewise one file per hookpoint). The features are
then saved as ``OUT/language_features.<hookpoint>.json``.

Checkpoints go to ``OUT/checkpoint-N`` every ``--save-steps``; run the same command again after a kill and training
resumes from the last one (TRL's ``resume_from_checkpoint``). The final model (or LoRA adapter) is saved in
``OUT/final``, the run's summary in ``OUT/sasft.json``.

``qwenscope grpo``: GRPO with one steered negative rollout per group (a repetition feature turned up), in TRL.

    qwenscope grpo --model smollm2-135m --hookpoint resid_post.15 --feature 1234 --alpha 0.5 \\
        --prompts math.jsonl --steps 100 --group 4 --out runs/steered
    qwenscope grpo --model smollm2-135m --prompts math.jsonl --steps 100 --group 4 --out runs/plain --no-steered
    qwenscope grpo ... --out runs/steered          # again after a kill: resumes from the last checkpoint in --out

Prompts: a .txt file (one prompt per line) or JSONL with a ``prompt`` column; other JSONL columns reach the reward as
keyword lists, as in TRL (the default reward ``answer`` reads ``answer``). ``--out`` gets TRL's ``checkpoint-N``
folders every ``--save-steps`` steps (a rerun resumes from the last one, as ``train(resume_from_checkpoint=...)``),
the final model, ``grpo.json`` (this command's settings and the steering unit) and ``log.jsonl`` (TRL's log
history: ``reward``, ``reward/plain``, ``reward/steered``, ``repeat_ratio/plain``, ``repeat_ratio/steered``, ...).

Importing this module is cheap (no trl): the ``qwenscope`` command builds its parser from ``command()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qwenscope import QwenscopeError
from qwenscope.data import read_jsonl
from qwenscope.util import require

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- sasft
@dataclass
class SasftCommand:
    data: str = ""
    """The SFT data: a JSONL/JSON file of prompt/completion, messages or text samples with a language column."""
    out: str = ""
    """Output folder: checkpoints, the language features, the final model and sasft.json."""
    model: str = "gemma3-270m"
    """Model: an embedded name (gemma3-270m, smollm2-135m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE: a folder, a file or a hub repo id (comma-separated: one per hookpoint); default the model's shipped SAE
    at --hookpoint."""
    hookpoint: str = ""
    """Where the SAE reads, e.g. resid_post.9; comma-separated to penalise features at several (resid_post.9,
    resid_post.14); default the SAE's own."""
    lang_column: str = "lang"
    """The data column naming each sample's language (ISO codes such as en, es, it)."""
    unwanted: str = "en"
    """The language whose features are kept quiet on the other languages' samples."""
    lam: float = 1e-3
    """λ, the weight of the feature penalty (the report: 5e-4 to 1e-3; 0 is plain SFT)."""
    top: int = 2
    """How many of the unwanted language's features to penalise (by monolinguality; the report: 2)."""
    positions: str = "response"
    """Where the penalty reads: response (the response tokens) or predicting (the positions that predict them, the
    last prompt token included)."""
    feature_ids: str = ""
    """Hand-picked feature ids instead of the top ones, comma-separated: 812,4051 (one hookpoint only)."""
    features: str = ""
    """Language features file from an earlier run (JSON or safetensors; comma-separated: one per hookpoint);
    default: measure them."""
    corpus: str = ""
    """Texts to measure the features on, per language: en=fortunes:en,es=bible:es; default the data's responses."""
    corpus_texts: int = 300
    """Texts per language read from --corpus."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 4
    """Samples per device batch."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    lr: float = 2e-5
    """Learning rate (LoRA usually wants ~1e-4)."""
    max_length: int = 512
    """Samples are cut to this many tokens."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of the full model."""
    lora_r: int = 16
    """LoRA rank."""
    save_steps: int = 50
    """Checkpoint every this many steps."""
    seed: int = 0
    """Seed of the data order and initialisation."""

    def __post_init__(self) -> None:
        if not self.data:
            raise QwenscopeError("sasft needs --data (a JSONL file of samples with a language column)")
        if not self.out:
            raise QwenscopeError("sasft needs --out DIR (checkpoints and the final model go there)")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_steps < 1:
            raise QwenscopeError("--steps, --batch-size, --grad-accum and --save-steps must be at least 1")
        if self.top < 1:
            raise QwenscopeError(f"--top must be at least 1, got {self.top}")
        from qwenscope.apps.posttrain.sasft import check_positions  # trl: imported when the command runs anyway

        check_positions(self.positions, "--positions ")  # before the model loads
        if not re.fullmatch(r"\s*(\d+\s*(,\s*\d+\s*)*)?", self.feature_ids):
            raise QwenscopeError(f"--feature-ids wants comma-separated ids such as 812,4051, got {self.feature_ids!r}")
        n = len(self.hookpoints)
        if n > 1 and self.ids:
            raise QwenscopeError(
                "--feature-ids picks the features of one hookpoint; with several, use --top or "
                "--features (one file per hookpoint)"
            )
        saes, files = _split(self.sae), self.feature_files
        if len(saes) > 1 and len(saes) != n:
            raise QwenscopeError(
                f"--sae names {len(saes)} SAEs for {n} hookpoint(s); give one per --hookpoint, in "
                "the same order, or one source holding them all"
            )
        if files and len(files) != n:
            raise QwenscopeError(
                f"--features names {len(files)} file(s) for {n} hookpoint(s); give one per "
                "--hookpoint, in the same order"
            )

    @property
    def ids(self) -> list[int]:
        """The hand-picked feature ids (empty: the top ones)."""
        return [int(v) for v in self.feature_ids.split(",") if v.strip()]

    @property
    def hookpoints(self) -> list[str]:
        """The hookpoints asked for ([""]: the SAE's own)."""
        return _split(self.hookpoint) or [""]

    @property
    def feature_files(self) -> list[str]:
        """The --features files, one per hookpoint (none: measure the features)."""
        return _split(self.features)


def _split(value: str) -> list[str]:
    """A comma-separated option's values (none for an empty one)."""
    return [v.strip() for v in value.split(",") if v.strip()]


# ---------------------------------------------------------------- data
def read_rows(path: str) -> list[dict[str, Any]]:
    """The samples of a JSONL file (or a JSON list)."""
    file = Path(path)
    if not file.is_file():
        raise QwenscopeError(f"no data file {path}; pass a JSONL file of samples")
    if _first_char(file) == "[":
        try:
            rows = json.loads(file.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise QwenscopeError(f"{path} is not a JSON list: {e}") from None
    else:
        rows = read_jsonl(file)  # one line per bad record
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise QwenscopeError(f"{path} holds no samples; each line must be a JSON object")
    return rows


def _first_char(file: Path) -> str:
    """The file's first character that is not white space ("" for none)."""
    with file.open(encoding="utf-8-sig") as handle:
        while (char := handle.read(1)) and char.isspace():
            pass
    return char


def response_text(row: dict[str, Any]) -> str:
    """What the sample trains the model to say: its completion, assistant messages or text."""
    for key in ("completion", "messages", "text"):
        value = row.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
            return "\n".join(str(m.get("content", "")) for m in turns)
    raise QwenscopeError("a sample has none of completion, messages or text; SFTTrainer needs one of them")


def corpus_texts(cfg: SasftCommand, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Texts per language to measure the features on (see the module doc)."""
    if cfg.corpus:
        from qwenscope.apps.posttrain.language import texts_by_language

        pairs = [p.split("=", 1) for p in cfg.corpus.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise QwenscopeError(f"--corpus wants lang=source pairs (en=fortunes:en,es=bible:es), got {cfg.corpus!r}")
        return texts_by_language({k.strip(): v.strip() for k, v in pairs}, cfg.corpus_texts, seed=cfg.seed)
    texts: dict[str, list[str]] = {}
    for row in rows:
        if cfg.lang_column in row:
            texts.setdefault(str(row[cfg.lang_column]), []).append(response_text(row))
    return texts


# ---------------------------------------------------------------- run
def language_features_for(cfg: SasftCommand, model, tokenizer, saes: list, rows: list[dict[str, Any]]) -> list:
    """The penalised features at each hookpoint (one set per SAE): loaded from --features or measured."""
    from qwenscope.apps.posttrain.language import LanguageFeatures, language_features

    if cfg.features:
        sets = [LanguageFeatures.load(f) for f in cfg.feature_files]
        for feats in sets:
            if feats.lang != cfg.unwanted:
                raise QwenscopeError(
                    f"--features holds the features of {feats.lang!r}, not of --unwanted {cfg.unwanted!r}"
                )
    else:
        texts = corpus_texts(cfg, rows)
        if cfg.unwanted not in texts:
            raise QwenscopeError(
                f"no {cfg.unwanted!r} texts to find its features in: the data has no "
                f"{cfg.unwanted!r} sample; pass --corpus {cfg.unwanted}=SOURCE,... "
                "or --features FILE"
            )
        sets = [
            language_features(model, tokenizer, sae, texts, cfg.unwanted, hookpoint=hookpoint or None)
            for sae, hookpoint in zip(saes, cfg.hookpoints)
        ]
    return [feats.with_ids(cfg.ids) if cfg.ids else feats.top(cfg.top) for feats in sets]


def build_trainer(cfg: SasftCommand) -> Any:
    """Everything up to ``train()``: data, model, SAE, features (saved in OUT) and the SasftTrainer."""
    import torch
    from datasets import Dataset

    require("trl", "posttrain", "qwenscope sasft")
    from trl import SFTConfig

    from qwenscope.apps.posttrain.sasft import SasftConfig, SasftTrainer, check_data
    from qwenscope.models import load_model_and_saes, sae_pairs

    sae_pairs(cfg.model, cfg.sae, cfg.hookpoint)  # no SAE for the model: say so before the data is read
    rows = read_rows(cfg.data)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint, device=device, dtype=torch.float32)
    model, tokenizer, saes = parts.model, parts.tokenizer, list(parts.saes.values())
    data = Dataset.from_list(rows)
    sets = language_features_for(cfg, model, tokenizer, saes, rows)
    sasft = SasftConfig(sets, lam=cfg.lam, lang_column=cfg.lang_column, positions=cfg.positions)
    check_data(data, sasft)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for feats in sets:
        feats.save(out / ("language_features.json" if len(sets) == 1 else f"language_features.{feats.hookpoint}.json"))
    args = SFTConfig(
        output_dir=str(out),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        max_length=cfg.max_length,
        save_steps=cfg.save_steps,
        logging_steps=max(1, min(10, cfg.steps // 10)),
        seed=cfg.seed,
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    return SasftTrainer(
        model, args, sae=saes, sasft=sasft, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )


def run_sasft(cfg: SasftCommand) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    trainer = build_trainer(cfg)
    out = Path(cfg.out)
    last = get_last_checkpoint(str(out))
    if last:
        logger.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out / "final"))
    sets = [{"lang": f.lang, "hookpoint": f.hookpoint, "ids": f.ids} for f in trainer.sasft.feature_sets]
    summary = {
        "config": asdict(cfg),
        "features": sets,
        "resumed_from": last,
        "train": result.metrics,
        "log": [e for e in trainer.state.log_history if "loss" in e],
    }
    (out / "sasft.json").write_text(json.dumps(summary, indent=1))
    print(f"trained {trainer.state.global_step} steps; model in {out / 'final'}, summary in {out / 'sasft.json'}")


# ---------------------------------------------------------------- grpo
@dataclass
class GrpoCommand:
    prompts: str
    """Training prompts: a .txt file (one per line) or JSONL with a "prompt" column (other columns reach the reward)."""
    out: str
    """Output folder: TRL checkpoints (a rerun resumes from the last one), the final model, grpo.json, log.jsonl."""
    feature: int = -1
    """The repetition feature to steer up in one rollout per group (required unless --no-steered)."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE source: a folder, a file or a hub repo id; default the embedded model's shipped SAE."""
    hookpoint: str = ""
    """Where the SAE reads and the steering adds, e.g. resid_post.15; default the SAE's own."""
    alpha: float = 0.5
    """Steering strength of the negative rollout, a fraction of the residual's typical size (steering_unit)."""
    steps: int = 100
    """Optimizer steps (TRL max_steps); each generates a fresh batch of groups."""
    group: int = 4
    """Rollouts per prompt (TRL num_generations, G); one of them is steered."""
    prompts_per_step: int = 2
    """Prompts (groups) per step: the batch is group x prompts-per-step rollouts."""
    max_new_tokens: int = 64
    """Tokens per rollout (TRL max_completion_length)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    learning_rate: float = 1e-6
    """AdamW learning rate (TRL's default; LoRA usually wants ~1e-5 to 1e-4)."""
    beta: float = 0.0
    """KL coefficient against the initial model (TRL's default 0: no reference model)."""
    reward: str = "answer"
    """answer (1 when the completion's last number, or text, matches the prompt's "answer"), or module:function
    or file.py:function, a TRL reward fn(completions, **kw) -> list[float]."""
    steered_index: int = 0
    """Which rollout of each group is steered (0..group-1)."""
    steered: bool = True
    """One steered negative per group; --no-steered: plain GRPO (the baseline; the same metrics are logged)."""
    old_logprobs: Literal["steered", "plain"] = "steered"
    """The steered rollout's old log-probabilities in PPO's ratio: the steered model's (off-policy data, clipped) or
    the policy's own (ratio 1)."""
    lora: bool = False
    """Train LoRA adapters (peft, all linear layers) instead of all weights."""
    lora_rank: int = 16
    """LoRA rank."""
    save_steps: int = 10
    """Write a checkpoint every this many steps (the last 2 are kept)."""
    seed: int = 0
    """Seed of sampling, shuffling and initialisation."""

    def __post_init__(self) -> None:
        if self.group < 2:
            need = "steered negatives need one plain rollout beside the steered one; " if self.steered else ""
            raise QwenscopeError(
                f"--group {self.group}: GRPO compares rollouts within a group; {need}use --group 2 or more"
            )
        if self.steered and self.feature < 0:
            raise QwenscopeError("--feature is required with steered negatives (or pass --no-steered for plain GRPO)")
        if not Path(self.prompts).is_file():
            raise QwenscopeError(f"--prompts {self.prompts}: no such file; pass a .txt (one per line) or .jsonl file")
        for name in ("steps", "prompts_per_step", "max_new_tokens", "save_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        resolve_reward(self.reward)  # a typo fails before the model loads


def command() -> tuple[tuple[type, ...], Callable[..., object]]:
    """(config classes, run function) for the ``qwenscope`` command table."""
    return (GrpoCommand,), run_grpo


def read_prompts(path: str) -> list[dict[str, Any]]:
    """Rows with a ``prompt`` (and any other columns) from a .txt or .jsonl file."""
    if not path.endswith(".jsonl"):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        rows: list[dict[str, Any]] = [{"prompt": line.strip()} for line in lines if line.strip()]
    else:
        rows = read_jsonl(Path(path))
        for i, row in enumerate(rows, 1):
            if not str(row.get("prompt", "")).strip():
                raise QwenscopeError(f'{path}: record {i} has no "prompt"; write {{"prompt": "...", ...}} per line')
    if not rows:
        raise QwenscopeError(f"{path} holds no prompts")
    return rows


def resolve_reward(spec: str) -> Callable[..., list[float]]:
    """``answer``, ``module:function`` or ``file.py:function`` -> the reward callable."""
    if spec == "answer":
        from qwenscope.apps.posttrain.grpo import answer_reward

        return answer_reward
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise QwenscopeError(f"--reward {spec!r}: use answer, module:function or file.py:function")
    try:
        if where.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            if loader_spec is None or loader_spec.loader is None or not Path(where).is_file():
                raise QwenscopeError(f"--reward {spec!r}: no such file {where}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise QwenscopeError(f"--reward {spec!r}: cannot import {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise QwenscopeError(f"--reward {spec!r}: {where} has no function {name}")
    return fn


def _dataset(rows: list[dict[str, Any]], tokenizer: Any):
    """TRL's prompt dataset: conversational prompts when the tokenizer has a chat template."""
    from datasets import Dataset

    chat = bool(getattr(tokenizer, "chat_template", None))
    records = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}] if chat else r["prompt"]} for r in rows]
    return Dataset.from_list(records)


def grpo_args(cfg: GrpoCommand, **overrides: Any):
    """TRL's GRPOConfig for this command (overrides: any GRPOConfig field)."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {
        "output_dir": cfg.out,
        "num_generations": cfg.group,
        "per_device_train_batch_size": cfg.group * cfg.prompts_per_step,
        "max_completion_length": cfg.max_new_tokens,
        "max_steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "beta": cfg.beta,
        "temperature": cfg.temperature,
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,
        "seed": cfg.seed,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": cuda,
        "use_cpu": not cuda,
        "disable_tqdm": True,
    }
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def run_grpo(cfg: GrpoCommand, **overrides: Any) -> Any:
    """Train, resuming from the last checkpoint in ``cfg.out``; returns the trainer (``overrides`` go to GRPOConfig)."""
    from transformers.trainer_utils import get_last_checkpoint

    require("trl", "posttrain", "qwenscope grpo")
    from qwenscope.apps.posttrain.grpo import GrpoSteerConfig, SteeredGRPOTrainer
    from qwenscope.models import load_model, load_model_and_saes

    rows = read_prompts(cfg.prompts)
    reward = resolve_reward(cfg.reward)
    sae, steering = None, None
    if cfg.steered:
        parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint)
        model, tokenizer, (_, sae) = parts.model, parts.tokenizer, parts.one()
        steering = GrpoSteerConfig(
            feature=cfg.feature,
            hookpoint=cfg.hookpoint or None,
            alpha=cfg.alpha,
            steered_index=cfg.steered_index,
            old_logprobs=cfg.old_logprobs,
        )
    else:
        model, tokenizer = load_model(cfg.model)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = SteeredGRPOTrainer(
        model,
        reward_funcs=[reward],
        args=grpo_args(cfg, **overrides),
        train_dataset=_dataset(rows, tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config,
        sae=sae,
        steering=steering,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpo.json").write_text(json.dumps({"command": asdict(cfg), "unit": trainer.unit}, indent=2) + "\n")
    last = get_last_checkpoint(str(out)) if any(out.glob("checkpoint-*")) else None
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    with open(out / "log.jsonl", "w", encoding="utf-8") as f:  # the history, restored on resume
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    _summary(trainer.state.log_history)
    return trainer


def _summary(history: list[dict[str, Any]]) -> None:
    steps = [h for h in history if "repeat_ratio/plain" in h]
    if not steps:
        return
    first, last = steps[0], steps[-1]
    for key in ("reward/plain", "repeat_ratio/plain", "repeat_ratio/steered", "reward/steered"):
        if key in last:
            logger.info("%-22s step %d: %.3f   step %d: %.3f", key, first["step"], first[key], last["step"], last[key])
