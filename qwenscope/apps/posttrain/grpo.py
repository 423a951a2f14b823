"""GRPO with steered negatives: in each group of G rollouts one is generated with a repetition feature steered up, so
every group holds a clear low-reward example (Qwen-Scope report, section 6). TRL-native: a ``GRPOTrainer`` subclass.

    from trl import GRPOConfig
    trainer = SteeredGRPOTrainer(model, reward_funcs=[my_reward], args=GRPOConfig(num_generations=4, ...),
                                 train_dataset=prompts, sae=sae, steering=GrpoSteerConfig(feature=1234, alpha=0.5))
    trainer.train()                                       # resume: trainer.train(resume_from_checkpoint=True)

Rewards are TRL's: plain callables ``fn(completions, **kw) -> list[float]`` (nothing here is about repetition).

The hook: TRL's sampler already repeats each prompt G times in consecutive rows, and ``_generate_single_turn``
generates the whole generation batch in ONE ``generate`` call. We wrap that call in ``steer_rows`` with the spec on
the rows whose place in their group is ``steered_index`` (global row ``process_index * local_rows + i``, as TRL
slices its gathered rewards), and ``None`` on the others, so plain rows are bit-identical to an unsteered batch.
The steered rollout is then scored and trained on like any other, with one difference (``old_logprobs="steered"``,
the default): it was sampled from the steered model, not from the policy, so its "old" log-probabilities (TRL's
``old_per_token_logps``, the denominator of PPO's ratio) are those of the steered forward. Its tokens then carry
the importance weight ``pi_theta / pi_steered``, and PPO's clip zeroes the push on tokens the policy already finds
far less likely than the steered model did: the negative pushes down only what the policy itself would still
produce. ``old_logprobs="plain"`` trains it with ratio 1, as if the policy had sampled it (the first version).
Written against trl 1.16.0, whose ``_generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
has_tool_images)`` and ``_calculate_rewards(inputs, prompts, completions, completion_ids_list)`` we wrap (calling the
original, copying nothing); a different trl version logs a warning. vLLM and continuous batching generate outside
this process's modules, so steering is refused there. Only training rollouts are steered; evaluation stays plain.

Logged with TRL's metrics each step: ``reward`` (TRL's, all rollouts) and ours: ``reward/plain``,
``reward/steered``, ``repeat_ratio/plain``, ``repeat_ratio/steered``, ``loop_share/plain``, ``loop_share/steered``
(rep-n and looping as in ``repetition.py``; without steering only the ``/plain`` ones, over all rollouts);
with ``old_logprobs="steered"`` also ``steered/logp_gap`` (mean log pi_steered - log pi_theta over the steered
rollouts' tokens: how far off-policy the negative is) and ``steered/below_clip`` (the share of those tokens whose
ratio starts below 1 - epsilon, so a negative advantage gives them no gradient), on training steps.
"""

from __future__ import annotations

import logging
import math
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import trl
from torch import nn
from trl import GRPOTrainer

from qwenscope import QwenscopeError
from qwenscope.apps.posttrain.repetition import loop_period, repeat_ratio, stop_ids, strip_completion
from qwenscope.models import check_sae_fits
from qwenscope.sae import Sae
from qwenscope.steer import SteerSpec, steer_rows

logger = logging.getLogger(__name__)

TRL_VERSION = "1.16.0"
"""The trl version the generation hook was written and tested against."""


@dataclass
class GrpoSteerConfig:
    """Which feature the steered negative rollout turns up, where, and how hard."""

    feature: int
    """The repetition feature's id in the SAE (see ``rank_repetition_features``)."""
    hookpoint: str | None = None
    """Where to steer, e.g. resid_post.15; default: the hookpoint the SAE records."""
    alpha: float = 0.5
    """Steering strength: a fraction of the residual's typical size (``steering_unit``) when ``relative``."""
    relative: bool = True
    """``alpha`` is relative to ``steering_unit(model, tokenizer, hookpoint)``, measured once on the initial model."""
    unit: float | None = None
    """The residual's typical size, when known (skips measuring it); used when ``relative``."""
    steered_index: int = 0
    """Which rollout of each group of G is steered (0..G-1; negative counts from the end)."""
    positions: Literal["all", "generated"] = "all"
    """Steer every position of the steered rollout, or only its generated tokens."""
    old_logprobs: Literal["steered", "plain"] = "steered"
    """The steered rollout's old log-probabilities (PPO's ratio denominator): the steered forward's (it is off-policy
    data, weighted by pi_theta / pi_steered and bounded by the clip), or the policy's own (ratio 1)."""
    enabled: bool = True
    """False: plain GRPO (the same trainer and metrics, nothing steered) - the baseline."""
    n: int = 4
    """n of the logged rep-n repeat ratio."""

    def __post_init__(self) -> None:
        if isinstance(self.feature, bool) or not isinstance(self.feature, int) or self.feature < 0:
            raise QwenscopeError(f"feature={self.feature!r}: pass a feature id (a non-negative int)")
        if not math.isfinite(self.alpha):
            raise QwenscopeError(f"alpha={self.alpha!r}: pass a finite steering strength")
        if self.positions not in ("all", "generated"):
            raise QwenscopeError(f"positions={self.positions!r}: use all or generated")
        if self.old_logprobs not in ("steered", "plain"):
            raise QwenscopeError(f"old_logprobs={self.old_logprobs!r}: use steered or plain")
        if self.n < 1:
            raise QwenscopeError(f"n={self.n}: the n-gram size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_steering(cfg: GrpoSteerConfig, sae: Sae, model: nn.Module, num_generations: int) -> str:
    """The hookpoint name the steering attaches to, after one clear error for each bad input."""
    if cfg.enabled and num_generations < 2:
        raise QwenscopeError(
            f"steered negatives need groups of at least 2 rollouts (num_generations={num_generations}): "
            "raise num_generations (--group) or turn steering off (--no-steered)"
        )
    if not -num_generations <= cfg.steered_index < num_generations:
        raise QwenscopeError(
            f"steered_index={cfg.steered_index} is outside a group of {num_generations} rollouts "
            f"(0..{num_generations - 1})"
        )
    if cfg.feature >= sae.d_sae:
        raise QwenscopeError(
            f"feature {cfg.feature} is outside this SAE (it has {sae.d_sae} features: 0..{sae.d_sae - 1})"
        )
    return check_sae_fits(sae, model, cfg.hookpoint, strict=True).name


def steered_rows(n_rows: int, num_generations: int, steered_index: int, offset: int = 0) -> list[int]:
    """Local rows (0..n_rows-1) whose global row ``offset + i`` is rollout ``steered_index`` of its group."""
    place = steered_index % num_generations
    return [i for i in range(n_rows) if (offset + i) % num_generations == place]


def _base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (its forward is what ``generate`` calls)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SteeredGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose training rollouts have one steered negative per group; all other arguments are TRL's."""

    def __init__(
        self, *args: Any, sae: Sae | None = None, steering: GrpoSteerConfig | None = None, **kwargs: Any
    ) -> None:
        if trl.__version__ != TRL_VERSION:
            logger.warning(
                "SteeredGRPOTrainer was written against trl %s; this is trl %s", TRL_VERSION, trl.__version__
            )
        if steering is not None and steering.enabled and sae is None:
            raise QwenscopeError("steered negatives need the SAE of the repetition feature: pass sae=")
        super().__init__(*args, **kwargs)
        self.steering = steering
        self.spec: SteerSpec | None = None
        self.unit: float | None = None
        if steering is not None and steering.enabled and sae is not None:
            if self.use_vllm or self.use_transformers_continuous_batching:
                raise QwenscopeError(
                    "steered negatives need generation inside this process (hooks on the model's modules): "
                    "set use_vllm=False and use_transformers_continuous_batching=False"
                )
            self.spec, self.unit = self._build_spec(steering, sae)

    def _build_spec(self, steering: GrpoSteerConfig, sae: Sae) -> tuple[SteerSpec, float | None]:
        model = _base_model(self.accelerator.unwrap_model(self.model))
        hookpoint = check_steering(steering, sae, model, int(self.num_generations or 0))
        sae = sae.to(next(model.parameters()).device).requires_grad_(False)
        unit = steering.unit
        if steering.relative and unit is None:
            from qwenscope.steer import steering_unit

            unit = steering_unit(model, self.processing_class, hookpoint)
        spec = SteerSpec(
            sae,
            {steering.feature: steering.alpha},
            hookpoint=hookpoint,
            positions=None if steering.positions == "all" else "generated",
            relative=steering.relative,
            unit=unit,
        )
        return spec, unit

    def _training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    def _global_steered(self, n_rows: int, num_generations: int, offset: int = 0) -> list[int]:
        """The rows steered now: training rollouts only, with steering on."""
        if self.spec is None or self.steering is None or not self._training():
            return []
        return steered_rows(n_rows, num_generations, self.steering.steered_index, offset)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        rows = self._global_steered(len(prompt_ids), num_generations, self.accelerator.process_index * len(prompt_ids))
        per_row = [self.spec if i in rows else None for i in range(len(prompt_ids))]
        model = _base_model(self.accelerator.unwrap_model(self.model))
        with steer_rows(model, per_row) if rows else nullcontext():
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        self._log_repetition(completion_ids, set(rows))
        return completion_ids, logprobs

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        steering = self.steering
        if self.spec is None or steering is None or steering.old_logprobs != "steered" or not self._training():
            return output
        n = len(output["completion_ids"])
        rows = self._global_steered(n, self.num_generations, self.accelerator.process_index * n)
        gap = torch.zeros(0, device=output["completion_ids"].device)
        if rows:  # a process may hold no steered row; every process still joins the metrics' gather below
            output["old_per_token_logps"], gap = self._behaviour_logps(output, rows)
        below = (-gap < math.log1p(-self.epsilon_low)).double()
        mean_gap, mean_below = self._gathered_means(torch.stack([gap.double(), below], dim=1))
        self._metrics["train"]["steered/logp_gap"].append(mean_gap)
        self._metrics["train"]["steered/below_clip"].append(mean_below)
        return output

    @torch.no_grad()
    def _behaviour_logps(self, output: dict[str, Any], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(old log-probabilities of the rollouts as sampled, log pi_steered - log pi_theta on the steered rows'
        tokens): the policy's for plain rows (TRL's, or a no-grad forward as TRL's own), the steered model's for the
        steered ``rows`` (a second forward of those rows, steered)."""
        assert self.spec is not None and self.steering is not None
        prompt, completion = output["prompt_ids"], output["completion_ids"]
        ids = torch.cat([prompt, completion], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        old = output.get("old_per_token_logps")  # TRL's own, when generation and optimisation steps are misaligned
        if old is None:
            chunk = self.args.per_device_train_batch_size
            old, _, _ = self._get_per_token_logps_and_entropies(self.model, ids, mask, completion.size(1), chunk)
        old = old.clone()
        spec = self.spec
        if self.steering.positions == "generated":  # the whole sequence is one forward here
            spec = replace(spec, positions=slice(prompt.size(1), None))
        index = torch.tensor(rows, device=ids.device)
        model = _base_model(self.accelerator.unwrap_model(self.model))
        with steer_rows(model, [spec] * len(rows)):  # the batch is the steered rows only, in one forward
            steered, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids[index], mask[index], completion.size(1), len(rows)
            )
        gap = (steered - old[index])[output["completion_mask"][index].bool()]
        old[index] = steered
        return old, gap

    def _gathered_means(self, values: torch.Tensor) -> list[float]:
        """Per-column means of ``values`` (n, k) over every process's rows, in one gather (NaN where none has rows)."""
        count = torch.full((1,), float(len(values)), dtype=torch.float64, device=values.device)
        sums = torch.cat([values.double().sum(0), count])
        sums = self.accelerator.gather(sums[None]).sum(0)
        return [float(x / sums[-1]) if sums[-1] > 0 else float("nan") for x in sums[:-1]]

    def _log_repetition(self, completion_ids: list[list[int]], rows: set[int]) -> None:
        """Mean rep-n and loop share of the plain and the steered rollouts, over all processes."""
        stops = stop_ids(self.processing_class)
        n = self.steering.n if self.steering is not None else 4
        sums = torch.zeros(2, 3, dtype=torch.float64)  # (plain, steered) x (rep-n sum, loops, count)
        for i, ids in enumerate(completion_ids):
            ids = strip_completion(ids, stops)
            sums[int(i in rows)] += torch.tensor([repeat_ratio(ids, n), loop_period(ids) > 0, 1.0])
        sums = self.accelerator.gather(sums[None].to(self.accelerator.device)).sum(0).cpu()
        mode = "train" if self._training() else "eval"
        for k, name in enumerate(("plain", "steered")):
            if sums[k, 2] > 0:
                self._metrics[mode][f"repeat_ratio/{name}"].append(float(sums[k, 0] / sums[k, 2]))
                self._metrics[mode][f"loop_share/{name}"].append(float(sums[k, 1] / sums[k, 2]))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)[None]).nansum(dim=1)
        steered = torch.zeros(len(rewards), dtype=torch.bool)
        steered[self._global_steered(len(rewards), self.num_generations)] = True
        mode = "train" if self._training() else "eval"
        for name, mask in (("plain", ~steered), ("steered", steered)):
            if mask.any():
                self._metrics[mode][f"reward/{name}"].append(torch.nanmean(rewards[mask.to(rewards.device)]).item())
        return rewards_per_func


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a TRL completion: a string, or (conversational) a list of messages whose last one is the answer."""
    return completion if isinstance(completion, str) else str(completion[-1]["content"])


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_reward(completions: list, answer: list[str | int | float], **kwargs: Any) -> list[float]:
    """A task reward, as TRL calls it (the dataset's ``answer`` column arrives as ``answer``): 1.0 when the LAST number
    of the completion equals a numeric answer (as GSM8K graders read "... = 42. The answer is 42"; a cut-off
    completion usually ends elsewhere), or, for a text answer, the completion contains it (case ignored); else 0.0.
    Nothing in it is about repetition."""
    out = []
    for completion, expected in zip(completions, answer, strict=True):
        text, want = completion_text(completion), str(expected).strip()
        if _NUMBER.fullmatch(want):
            found = _NUMBER.findall(text.replace(",", ""))
            out.append(float(bool(found) and float(found[-1]) == float(want)))
        else:
            out.append(float(want.lower() in text.lower()))
    return out
