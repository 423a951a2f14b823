"""A fitted feature-rule classifier: the rule plus what it reads with (model, SAEs), saved as one small JSON.

    clf = fit(model, tokenizer, "smollm2-135m", saes, discovery.texts, discovery.labels, k=5)
    clf.save("toxic.json")
    clf = Classifier.load("toxic.json")
    model, tokenizer, saes = clf.load_parts()             # checks they are the ones it was fit with
    preds, scores = clf.predict(model, tokenizer, saes, ["..."])

The JSON (``FORMAT`` 1)::

    {"format": "qwenscope-classifier", "version": 1, "model": "smollm2-135m", "model_fingerprint": "…",
     "sae": "smollm2-135m", "saes": {"resid_post.15": "<sae fingerprint>"}, "max_tokens": 256,
     "rule": {"rule": "any", "features": [{"hookpoint", "id", "delta", "p_pos", "p_neg"}], "top1": {...}},
     "meta": {"data", "n_pos", "n_neg", "k", "choose", "positive_name"}}

Reading with another model or SAE would give silently wrong predictions, so ``check_parts`` refuses it in one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import QwenscopeError, Sae
from qwenscope.apps.classify.pooled import MAX_TOKENS, Pooled, pool_texts
from qwenscope.apps.classify.rule import FeatureRule, fit_rule
from qwenscope.features import check_labels, sae_fingerprint
from qwenscope.models import load_model_and_saes, model_fingerprint
from qwenscope.util import atomic_write

FORMAT = "qwenscope-classifier"
VERSION = 1


@dataclass
class Classifier:
    """The feature rule and the model and SAEs it reads with."""

    model: str
    """What ``load_model`` loads: an embedded name, a folder or a hub id."""
    sae: str
    """What ``load_sae`` loads the SAEs from (with each hookpoint)."""
    saes: dict[str, str]
    """hookpoint -> the fingerprint of the SAE read there."""
    rule: FeatureRule
    model_fingerprint: str = ""
    max_tokens: int = MAX_TOKENS
    meta: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- files
    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "sae": self.sae,
            "saes": self.saes,
            "max_tokens": self.max_tokens,
            "rule": self.rule.as_dict(),
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(self.as_dict(), indent=1) + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        path = Path(path)
        if not path.is_file():
            raise QwenscopeError(f"no classifier at {path}; fit one with `qwenscope classify fit --out {path}`")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QwenscopeError(
                f"{path} is not a classifier file ({e}); fit one with `qwenscope classify fit`"
            ) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise QwenscopeError(
                f'{path} is not a qwenscope classifier (no "format": "{FORMAT}"); fit one with `qwenscope classify fit`'
            )
        if d.get("version") != VERSION:
            raise QwenscopeError(
                f"{path} has classifier format version {d.get('version')}; this qwenscope reads "
                f"version {VERSION}: refit it"
            )
        try:
            return cls(
                d["model"],
                d["sae"],
                dict(d["saes"]),
                FeatureRule.from_dict(d["rule"]),
                d.get("model_fingerprint", ""),
                int(d.get("max_tokens", MAX_TOKENS)),
                dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise QwenscopeError(f"{path} is a damaged classifier file (bad or missing {e}); refit it") from None

    # ---------------------------------------------------------------- model and SAEs
    def load_parts(self, model: str | None = None, sae: str | None = None) -> tuple[Any, Any, dict[str, Sae]]:
        """Load the model and SAEs (by default the ones recorded) and check they are the ones the rule was fit with."""
        parts = load_model_and_saes(model or self.model, sae or self.sae, self.rule.hookpoints)
        self.check_parts(parts.model, parts.saes)
        return parts.model, parts.tokenizer, parts.saes

    def check_parts(self, model: Any, saes: dict[str, Sae]) -> None:
        """One clear line when ``model`` or ``saes`` are not those the classifier was fit with."""
        if self.model_fingerprint and model_fingerprint(model) != self.model_fingerprint:
            raise QwenscopeError(
                f"this classifier was fit with the model {self.model}, not the one given; load "
                f"{self.model} (or refit the classifier on this model)"
            )
        for hook in self.rule.hookpoints:
            if hook not in saes:
                raise QwenscopeError(f"the classifier reads {hook}; pass the SAE for it")
            if sae_fingerprint(saes[hook]) != self.saes.get(hook):
                raise QwenscopeError(
                    f"the SAE given at {hook} is not the one this classifier was fit with "
                    f"({self.sae}); pass --sae {self.sae} or refit the classifier"
                )

    # ---------------------------------------------------------------- predictions
    def pool(
        self,
        model: Any,
        tokenizer: Any,
        saes: dict[str, Sae],
        texts: Sequence[str],
        progress: bool = False,
        cache: bool = True,
    ) -> dict[str, Pooled]:
        hooks = self.rule.hookpoints
        pooled = pool_texts(
            model,
            tokenizer,
            texts,
            [saes[h] for h in hooks],
            hooks,
            max_tokens=self.max_tokens,
            progress=progress,
            cache=cache,
        )
        return dict(zip(hooks, pooled))

    def predict(
        self, model: Any, tokenizer: Any, saes: dict[str, Sae], texts: Sequence[str], progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(predictions 0/1, scores = how many kept features fire) for ``texts``."""
        self.check_parts(model, saes)
        fires = {h: p.fires for h, p in self.pool(model, tokenizer, saes, texts, progress).items()}
        scores = self.rule.score(fires)
        return (scores > 0).astype(np.int64), scores


def fit(
    model: Any,
    tokenizer: Any,
    model_id: str,
    sae_id: str,
    saes: dict[str, Sae],
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    k: int = 5,
    choose: str = "top1-diff",
    max_tokens: int = MAX_TOKENS,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Classifier, dict[str, Pooled]]:
    """Fit the rule on discovery ``texts``/``labels`` with the SAEs at their hookpoints (``saes``: hookpoint -> SAE).
    Returns the classifier and the pooled features of the discovery texts."""
    y = check_labels(labels, len(texts))
    hooks = list(saes)
    pooled = dict(
        zip(
            hooks,
            pool_texts(
                model, tokenizer, texts, [saes[h] for h in hooks], hooks, max_tokens=max_tokens, progress=progress
            ),
        )
    )
    rule = fit_rule({h: p.fires for h, p in pooled.items()}, y, k=k, choose=choose)
    info = {"n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "k": k, "choose": choose, **(meta or {})}
    clf = Classifier(
        model_id,
        sae_id,
        {h: sae_fingerprint(saes[h]) for h in rule.hookpoints},
        rule,
        model_fingerprint(model),
        max_tokens,
        info,
    )
    return clf, pooled
