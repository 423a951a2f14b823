"""``qwenscope grpo``: GRPO with one steered negative rollout per group (a repetition feature turned up), in TRL.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qwenscope import QwenscopeError
from qwenscope.data import read_jsonl

logger = logging.getLogger(__name__)


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

    from qwenscope.apps.posttrain.grpo import GrpoSteerConfig, SteeredGRPOTrainer
    from qwenscope.models import load_model

    rows = read_prompts(cfg.prompts)
    reward = resolve_reward(cfg.reward)
    model, tokenizer = load_model(cfg.model)
    sae, steering = None, None
    if cfg.steered:
        from qwenscope.sae import load_sae

        sae = load_sae(cfg.sae or cfg.model, hookpoint=cfg.hookpoint or None)
        steering = GrpoSteerConfig(
            feature=cfg.feature,
            hookpoint=cfg.hookpoint or None,
            alpha=cfg.alpha,
            steered_index=cfg.steered_index,
            old_logprobs=cfg.old_logprobs,
        )
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
