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

Several hookpoints: ``SasftConfig(features=[feats_9, feats_14])`` with ``sae=[sae_9, sae_14]`` (in the same order)
adds each hookpoint's term, ``P = P_9 + P_14``, over the same tokens (meant for a model that routes the language
around one layer's features; docs/results/sasft.md has how two layers did on gemma3-270m).

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
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trl import SFTTrainer

from qwenscope import QwenscopeError, Sae, check_sae_fits
from qwenscope.apps.posttrain.language import LanguageFeatures, check_feature_ids
from qwenscope.models import hooked

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

    features: LanguageFeatures | Sequence[LanguageFeatures]
    """The unwanted language's features: ``lang`` is L, ``ids`` is S_L, ``alpha`` the per-language thresholds,
    ``hookpoint`` where the SAE reads. A list: one set per hookpoint, all of the same language; the penalty is the
    sum of theirs."""
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
        sets = self.feature_sets
        if not sets:
            raise QwenscopeError("features is an empty list; pass the language features of at least one hookpoint")
        langs = sorted({f.lang for f in sets})
        if len(langs) > 1:
            raise QwenscopeError(
                f"the feature sets are of different languages ({', '.join(langs)}); SASFT keeps one "
                "unwanted language quiet: pass features of one language"
            )
        hookpoints = [f.hookpoint for f in sets]
        twice = sorted({h for h in hookpoints if hookpoints.count(h) > 1})
        if twice:
            raise QwenscopeError(
                f"two feature sets at {twice[0]}; merge their ids into one set per hookpoint "
                "(LanguageFeatures.with_ids)"
            )

    @property
    def feature_sets(self) -> list[LanguageFeatures]:
        """``features`` as a list: one set per hookpoint."""
        return [self.features] if isinstance(self.features, LanguageFeatures) else list(self.features)

    @property
    def lang(self) -> str:
        """L, the unwanted language."""
        return self.feature_sets[0].lang


# ---------------------------------------------------------------- the penalty
def feature_pre_acts(sae: Sae, x: Tensor, ids: Tensor) -> Tensor:
    """``sae.pre_acts(x)[..., ids]`` computed on the chosen columns only: (..., len(ids)), differentiable in x.

    Always in float32: the SAE may be held in float16 (the shipped files are), and residual streams such as gemma3's
    hold values beyond float16's range (65504), which would become inf and make the penalty infinite.
    """
    x = x.float()
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec.float()
    return x @ sae.W_enc[:, ids].float() + sae.b_enc[ids].float()


def feature_excess(acts: Tensor, sae: Sae, ids: Tensor, alpha: Tensor, mask: Tensor) -> Tensor:
    """``ReLU(f_s(x_t) - alpha[s])`` at the penalised tokens, float32 (tokens, n), in the mask's row-major order.

    acts (batch, seq, d_in) at the hookpoint; ids (n,) the features; alpha (batch, n) each row's thresholds; mask
    (batch, seq) bool, the penalised response tokens.
    """
    rows, cols = mask.nonzero(as_tuple=True)
    # in float32 whatever the trainer's autocast (see feature_pre_acts)
    with torch.autocast(device_type=acts.device.type, enabled=False):
        f = feature_pre_acts(sae, acts[rows, cols].float(), ids)  # (tokens, n)
        return F.relu(f - alpha[rows].float())


def sasft_penalty(acts: Tensor, sae: Sae, ids: Tensor, alpha: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(P, share of penalised tokens where some feature exceeds its threshold); arguments as ``feature_excess``.
    P is 0 (still attached to the graph) when the mask is empty."""
    if not mask.any():
        return acts.sum() * 0.0, acts.new_zeros(())
    excess = feature_excess(acts, sae, ids, alpha, mask)
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
            raise QwenscopeError(
                f"sample language {unknown[0]!r} has no alpha in the language features; measure "
                f"the features on texts of {unknown[0]!r} too (have: {have})"
            )
        batch[LANG_KEY] = torch.tensor([self.index[str(e[self.column])] for e in examples], dtype=torch.long)
        return batch


def check_data(dataset: Any, cfg: SasftConfig) -> list[str]:
    """The languages of the penalised samples (sorted); one clear error if there is none or one lacks alpha."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise QwenscopeError(
            "SASFT needs a datasets.Dataset (with column_names) to check the languages up front; "
            "materialise an IterableDataset with Dataset.from_list or from_generator"
        )
    if cfg.lang_column not in columns:
        raise QwenscopeError(
            f"the training data has no {cfg.lang_column!r} column (has: {', '.join(columns)}); "
            "add each sample's language or pass lang_column="
        )
    unwanted = cfg.lang
    langs = sorted({str(v) for v in dataset[cfg.lang_column]} - {unwanted})
    if not langs:
        raise QwenscopeError(
            f"no sample in a language other than {unwanted!r}: SASFT penalises {unwanted!r} features "
            f"on the other languages' samples; add samples whose {cfg.lang_column} is not "
            f"{unwanted!r}"
        )
    for feats in cfg.feature_sets:
        for lang in langs:
            feats.thresholds(lang)  # raises when alpha lacks it
    return langs


# ---------------------------------------------------------------- the trainer
def _base_model(model: Any) -> nn.Module:
    """The transformers model inside a peft wrapper (peft's ``get_base_model``), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SasftTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss adds λ times the SASFT penalty (module doc). Extra keyword arguments: ``sae`` (the
    SAE at ``sasft.features.hookpoint``; with several feature sets, one SAE per set in the same order) and ``sasft``
    (SasftConfig); the rest is SFTTrainer's."""

    def __init__(
        self,
        model: Any,
        args: Any = None,
        *,
        sae: Sae | Sequence[Sae],
        sasft: SasftConfig,
        train_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        langs = check_data(train_dataset, sasft)
        if args is not None and (getattr(args, "packing", False) or getattr(args, "padding_free", False)):
            raise QwenscopeError("SASFT needs each sample's rows apart: set packing=False and padding_free=False")
        sets = sasft.feature_sets
        saes = [sae] if isinstance(sae, Sae) else list(sae)
        if len(saes) != len(sets):
            raise QwenscopeError(
                f"{len(sets)} feature set(s) ({', '.join(f.hookpoint for f in sets)}) but "
                f"{len(saes)} SAE(s); pass one SAE per feature set, in the same order"
            )
        for feats, one in zip(sets, saes):
            check_feature_ids(feats.ids, one.d_sae)
            if feats.d_sae != one.d_sae:
                raise QwenscopeError(
                    f"the language features at {feats.hookpoint} were measured with an SAE of width "
                    f"{feats.d_sae}, this one has {one.d_sae}: pass the SAE the features come "
                    "from"
                )
            if isinstance(model, nn.Module):  # checked before SFTTrainer prepares the data (a model name: after)
                check_sae_fits(one, _base_model(model), feats.hookpoint, strict=True)
        super().__init__(model, args, train_dataset=train_dataset, **kwargs)
        self.args.remove_unused_columns = False  # the language column must reach the collator
        base = _base_model(self.model)
        # resolved on the model as trained (peft wraps it)
        self.hooks = [check_sae_fits(one, base, feats.hookpoint, strict=True) for feats, one in zip(sets, saes)]
        device = next(base.parameters()).device
        self.saes = [one.to(device).requires_grad_(False) for one in saes]
        self.sasft = sasft
        self.feature_ids = [torch.tensor(f.ids, dtype=torch.long, device=device) for f in sets]
        # rows of the threshold tables: the training data's languages, then any other measured one (eval sets)
        measured = set.intersection(*(set(f.alpha) for f in sets))
        table_langs = langs + sorted(measured - set(langs) - {sasft.lang})
        self.alpha_tables = [torch.stack([f.thresholds(lang) for lang in table_langs]).to(device) for f in sets]
        index = {lang: i for i, lang in enumerate(table_langs)} | {sasft.lang: -1}
        self.data_collator = LanguageCollator(self.data_collator, sasft.lang_column, index)
        self._sasft_logs: dict[str, list[float]] = {"sasft_penalty": [], "sasft_active": []}
        if len(sets) > 1:
            self._sasft_logs |= {f"sasft_penalty/{h.name}": [] for h in self.hooks}
        where = ", ".join(f"{h.name} ({len(f.ids)})" for h, f in zip(self.hooks, sets))
        logger.info(
            "SASFT: λ=%g, features of %r at %s, penalised languages %s", sasft.lam, sasft.lang, where, ", ".join(langs)
        )

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        lang = inputs.pop(LANG_KEY, None)
        if lang is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        kept: dict[str, Tensor] = {}

        def keeper(name: str) -> Callable[[Tensor], None]:
            def keep(t: Tensor) -> None:
                kept.setdefault(name, t)  # the first forward is the one with gradients

            return keep

        with ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hooked(hook, keeper(hook.name)))
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = out if return_outputs else (out, None)
        penalties, active = self.penalties([kept[h.name] for h in self.hooks], inputs["labels"], lang)
        penalty = sum(penalties[1:], penalties[0])
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = loss + self.sasft.lam * penalty / steps
        self._sasft_logs["sasft_penalty"].append(float(penalty.detach()))
        self._sasft_logs["sasft_active"].append(float(active))
        if len(self.hooks) > 1:
            for hook, p in zip(self.hooks, penalties):
                self._sasft_logs[f"sasft_penalty/{hook.name}"].append(float(p.detach()))
        return (loss, outputs) if return_outputs else loss

    def penalties(self, acts: Sequence[Tensor], labels: Tensor, lang: Tensor) -> tuple[list[Tensor], Tensor]:
        """(P of each hookpoint, share of penalised tokens where some feature of some hookpoint exceeds its
        threshold) for one batch; ``acts`` in the order of the feature sets."""
        first = acts[0]
        lang = lang.to(first.device)
        trained = labels.to(first.device) != -100
        if self.sasft.positions == "predicting":  # position t predicts token t + 1
            trained = F.pad(trained[:, 1:], (0, 1), value=False)
        mask = trained & (lang >= 0)[:, None]
        if not mask.any():
            zero = first.new_zeros(())
            return [a.sum() * 0.0 for a in acts], zero
        excess = [
            feature_excess(a, sae, ids, table[lang.clamp_min(0)], mask)  # rows of L are masked out
            for a, sae, ids, table in zip(acts, self.saes, self.feature_ids, self.alpha_tables)
        ]
        active = (torch.cat(excess, -1) > 0).any(-1).float().mean().detach()
        return [e.sum(-1).mean() for e in excess], active

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._sasft_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
                values.clear()
        super().log(logs, start_time)
