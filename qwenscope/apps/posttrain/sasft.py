"""SASFT: supervised fine-tuning that keeps the features of an unwanted language quiet (the report's section 6).

    loss = CE + lam * P,   P = mean over R of  sum_{s in S_L} ReLU(f_s(x_t) - alpha_j[s])

- ``L``: the unwanted language (``features.lang``), ``S_L``: its features (``features.ids``);
- ``R``: the response tokens (``labels != -100``, what TRL trains on) of the samples whose language ``j`` (a dataset
  column) is not ``L``; samples in ``L`` are trained by CE only; ``positions="predicting"`` reads one position to
  the left instead, where each response token is chosen;
- ``f_s(x_t)``: the SAE pre-activation (``x @ W_enc[:, s] + b_enc[s]``, no ReLU, no TopK) of the activation at the
  hookpoint, read from the training forward itself (a forward hook; gradients flow into the model, the SAE is frozen);
- ``alpha_j[s]``: feature s's mean pre-activation on language j (``LanguageFeatures.alpha``), so a feature only pays
  for firing more than it does on ordinary text of the sample's own language.

Normalisation: ``P`` is the mean, over the penalised response tokens of the micro-batch, of the sum over ``S_L``; a
micro-batch without such a token adds 0. Under gradient accumulation ``P`` is divided by the accumulation steps
exactly when TRL's CE is normalised by ``num_items_in_batch`` (TRL's own rule for its MoE auxiliary loss).

TRL glue: ``SasftTrainer`` subclasses ``SFTTrainer`` and overrides ``compute_loss`` (TRL's docs: ``compute_loss_func``
is deprecated in favour of this). Everything else is SFTTrainer's: datasets (prompt/completion, messages, text),
``peft_config`` for LoRA, checkpoints and ``train(resume_from_checkpoint=True)``.

    feats = language_features(model, tokenizer, sae, texts, "en").top(2)
    trainer = SasftTrainer(model, sae=sae, sasft=SasftConfig(feats, lam=1e-3), args=SFTConfig(...),
                           train_dataset=data, processing_class=tokenizer)     # data has a "lang" column
    trainer.train()

The language column reaches the loss through a wrapped collator, so ``remove_unused_columns`` is set to False;
packing and padding-free batches are refused (they lose the sample boundaries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trl import SFTTrainer

from qwenscope import QwenscopeError, Sae
from qwenscope.apps.posttrain.language import LanguageFeatures, check_feature_ids, check_sae_at
from qwenscope.models.capture import hooked

logger = logging.getLogger(__name__)

LANG_KEY = "sasft_lang"
"""Batch key of each row's language index (-1: the unwanted language, not penalised)."""
POSITIONS = ("response", "predicting")
"""``SasftConfig.positions``: the response tokens' own positions, or the positions that predict them."""


def check_positions(positions: str, label: str = "positions=") -> None:
    """One line when ``positions`` is not one of ``POSITIONS`` (``label`` names it as the caller's user wrote it)."""
    if positions not in POSITIONS:
        raise QwenscopeError(f"{label}{positions!r}: choose one of {', '.join(POSITIONS)}")


@dataclass
class SasftConfig:
    """What SASFT penalises and how hard."""

    features: LanguageFeatures
    """The unwanted language's features: ``lang`` is L, ``ids`` is S_L, ``alpha`` the per-language thresholds,
    ``hookpoint`` where the SAE reads."""
    lam: float = 1e-3
    """λ, the weight of the feature penalty (the report: 5e-4 to 1e-3); 0 is plain SFT."""
    lang_column: str = "lang"
    """The dataset column naming each sample's language (the same codes as the features' alpha)."""
    positions: str = "response"
    """Where the penalty reads: ``response``, at the response tokens (``labels != -100``); ``predicting``, at the
    positions that predict them (one to the left: the last prompt token pays, the last response token does not),
    the states that choose each response token, including the first."""

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise QwenscopeError(f"lam (λ) must be >= 0, got {self.lam}")
        check_positions(self.positions)
        if not self.lang_column:
            raise QwenscopeError("lang_column is empty; name the dataset column holding each sample's language")


# ---------------------------------------------------------------- the penalty
def feature_pre_acts(sae: Sae, x: Tensor, ids: Tensor) -> Tensor:
    """``sae.pre_acts(x)[..., ids]`` computed on the chosen columns only: (..., len(ids)), differentiable in x.

    Always in float32: the SAE may be held in float16 (the shipped files are), and residual streams such as gemma3's
    hold values beyond float16's range (65504), which became inf and made the penalty infinite in the first GPU run.
    """
    x = x.float()
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec.float()
    return x @ sae.W_enc[:, ids].float() + sae.b_enc[ids].float()


def sasft_penalty(acts: Tensor, sae: Sae, ids: Tensor, alpha: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(P, share of penalised tokens where some feature exceeds its threshold).

    acts (batch, seq, d_in) at the hookpoint; ids (n,) the features; alpha (batch, n) each row's thresholds; mask
    (batch, seq) bool, the penalised response tokens. P is 0 (still attached to the graph) when the mask is empty.
    """
    rows, cols = mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return acts.sum() * 0.0, acts.new_zeros(())
    # in float32 whatever the trainer's autocast (see feature_pre_acts)
    with torch.autocast(device_type=acts.device.type, enabled=False):
        f = feature_pre_acts(sae, acts[rows, cols].float(), ids)  # (tokens, n)
        excess = F.relu(f - alpha[rows].float())  # (tokens, n)
        return excess.sum(-1).mean(), (excess > 0).any(-1).float().mean().detach()


# ---------------------------------------------------------------- data
@dataclass
class LanguageCollator:
    """Wraps a collator: adds ``LANG_KEY``, each row's language index (-1 for the unwanted language)."""

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    column: str
    index: Mapping[str, int]
    """Language -> row of the alpha table; the unwanted language -> -1."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(examples)
        if not examples or self.column not in examples[0]:
            return batch  # e.g. an eval set without the column: CE only
        unknown = sorted({str(e[self.column]) for e in examples} - set(self.index))
        if unknown:
            have = ", ".join(self.index)
            raise QwenscopeError(f"sample language {unknown[0]!r} has no alpha in the language features; measure "
                                 f"the features on texts of {unknown[0]!r} too (have: {have})")  # fmt: skip
        batch[LANG_KEY] = torch.tensor([self.index[str(e[self.column])] for e in examples], dtype=torch.long)
        return batch


def check_data(dataset: Any, cfg: SasftConfig) -> list[str]:
    """The languages of the penalised samples (sorted); one clear error if there is none or one lacks alpha."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise QwenscopeError("SASFT needs a datasets.Dataset (with column_names) to check the languages up front; "
                             "materialise an IterableDataset with Dataset.from_list or from_generator")  # fmt: skip
    if cfg.lang_column not in columns:
        raise QwenscopeError(f"the training data has no {cfg.lang_column!r} column (has: {', '.join(columns)}); "
                             "add each sample's language or pass lang_column=")  # fmt: skip
    unwanted = cfg.features.lang
    langs = sorted({str(v) for v in dataset[cfg.lang_column]} - {unwanted})
    if not langs:
        raise QwenscopeError(f"no sample in a language other than {unwanted!r}: SASFT penalises {unwanted!r} features "
                             f"on the other languages' samples; add samples whose {cfg.lang_column} is not "
                             f"{unwanted!r}")  # fmt: skip
    for lang in langs:
        cfg.features.thresholds(lang)  # raises when alpha lacks it
    return langs


# ---------------------------------------------------------------- the trainer
def _base_model(model: Any) -> nn.Module:
    """The transformers model inside a peft wrapper (peft's ``get_base_model``), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SasftTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss adds λ times the SASFT penalty (module doc). Extra keyword arguments: ``sae`` (the
    SAE at ``sasft.features.hookpoint``) and ``sasft`` (SasftConfig); the rest is SFTTrainer's."""

    def __init__(self, model: Any, args: Any = None, *, sae: Sae, sasft: SasftConfig, train_dataset: Any = None,
                 **kwargs: Any) -> None:  # fmt: skip
        langs = check_data(train_dataset, sasft)
        if args is not None and (getattr(args, "packing", False) or getattr(args, "padding_free", False)):
            raise QwenscopeError("SASFT needs each sample's rows apart: set packing=False and padding_free=False")
        feats = sasft.features
        check_feature_ids(feats.ids, sae.d_sae)
        if feats.d_sae != sae.d_sae:
            raise QwenscopeError(f"the language features were measured with an SAE of width {feats.d_sae}, this one "
                                 f"has {sae.d_sae}: pass the SAE the features come from")  # fmt: skip
        if isinstance(model, nn.Module):  # checked before SFTTrainer prepares the data (a model name: after)
            check_sae_at(sae, _base_model(model), feats.hookpoint)
        super().__init__(model, args, train_dataset=train_dataset, **kwargs)
        self.args.remove_unused_columns = False  # the language column must reach the collator
        base = _base_model(self.model)
        self.hook = check_sae_at(sae, base, feats.hookpoint)  # resolved on the model as trained (peft wraps it)
        device = next(base.parameters()).device
        self.sae = sae.to(device).requires_grad_(False)
        self.sasft = sasft
        self.feature_ids = torch.tensor(feats.ids, dtype=torch.long, device=device)
        # rows of the threshold table: the training data's languages, then any other measured one (eval sets)
        table_langs = langs + sorted(set(feats.alpha) - set(langs) - {feats.lang})
        self.alpha_table = torch.stack([feats.thresholds(lang) for lang in table_langs]).to(device)  # (langs, n)
        index = {lang: i for i, lang in enumerate(table_langs)} | {feats.lang: -1}
        self.data_collator = LanguageCollator(self.data_collator, sasft.lang_column, index)
        self._sasft_logs: dict[str, list[float]] = {"sasft_penalty": [], "sasft_active": []}
        logger.info("SASFT: λ=%g, %d features of %r at %s, penalised languages %s", sasft.lam, len(feats.ids),
                    feats.lang, self.hook.name, ", ".join(langs))  # fmt: skip

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:  # fmt: skip
        lang = inputs.pop(LANG_KEY, None)
        if lang is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        kept: dict[str, Tensor] = {}

        def keep(t: Tensor) -> None:
            kept.setdefault("acts", t)  # the first forward is the one with gradients

        with hooked(self.hook, keep):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = out if return_outputs else (out, None)
        penalty, active = self.penalty(kept["acts"], inputs["labels"], lang)
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = loss + self.sasft.lam * penalty / steps
        self._sasft_logs["sasft_penalty"].append(float(penalty.detach()))
        self._sasft_logs["sasft_active"].append(float(active))
        return (loss, outputs) if return_outputs else loss

    def penalty(self, acts: Tensor, labels: Tensor, lang: Tensor) -> tuple[Tensor, Tensor]:
        """P and the active share for one batch (see ``sasft_penalty``)."""
        lang = lang.to(acts.device)
        trained = labels.to(acts.device) != -100
        if self.sasft.positions == "predicting":  # position t predicts token t + 1
            trained = F.pad(trained[:, 1:], (0, 1), value=False)
        mask = trained & (lang >= 0)[:, None]
        alpha = self.alpha_table[lang.clamp_min(0)]  # (batch, n); rows of L are masked out
        return sasft_penalty(acts, self.sae, self.feature_ids, alpha, mask)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._sasft_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
                values.clear()
        super().log(logs, start_time)

