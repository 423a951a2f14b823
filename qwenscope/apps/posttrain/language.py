"""Language features: which SAE features fire on one language and stay quiet on the others (the report's section 6).

    texts = {"en": [...], "es": [...], "it": [...]}                 # any multilingual corpus
    feats = language_features(model, tokenizer, sae, texts, "en", top=2)
    feats.ids                  # the top features of English by monolinguality, best first
    feats.nu[feats.ids]        # their monolinguality
    feats.alpha["es"][feats.ids]   # their mean pre-activation on Spanish: SASFT's threshold for Spanish samples
    feats.save("en.json"); LanguageFeatures.load("en.json")          # or .safetensors

Definitions, over the tokens of each language's texts (position 0 of each text, the attention sink, and special
tokens such as BOS, EOS and pads are left out; texts are cut to ``max_tokens``):

- ``mean_act[j]``: each feature's activation (after ReLU / TopK, what the SAE outputs), averaged over language j's
  tokens;
- ``nu = mean_act[L] - mean over j != L of mean_act[j]`` (each other language weighs the same, whatever its size);
- ``alpha[j]``: each feature's mean PRE-activation (``sae.pre_acts``: no ReLU, no TopK) on language j's tokens.

``texts_by_language`` reads the offline corpora (``fortunes:es``, ``bible:en``, ``dataset-build:ita``, ...).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from qwenscope import QwenscopeError, Sae, check_sae_fits
from qwenscope.features import read_batches, tokenize_texts
from qwenscope.models import Hook
from qwenscope.util import atomic_write

logger = logging.getLogger(__name__)

MAX_TOKENS = 256
"""Texts are cut to this many tokens by default."""


@dataclass
class LanguageFeatures:
    """The monolinguality of every feature of one SAE for language ``lang``, its top features and the thresholds."""

    hookpoint: str
    """Where the SAE reads, e.g. ``resid_post.9``."""
    lang: str
    """The language the features are of (SASFT: the unwanted one)."""
    ids: list[int]
    """The top features of ``lang`` by ``nu``, best first."""
    nu: Tensor
    """float32 (d_sae,): monolinguality of every feature (see the module doc)."""
    alpha: dict[str, Tensor]
    """Per language: float32 (d_sae,), every feature's mean pre-activation on that language's tokens."""
    n_tokens: dict[str, int] = field(default_factory=dict)
    """Per language: the tokens the means are over."""

    def __post_init__(self) -> None:
        check_feature_ids(self.ids, self.d_sae)
        for lang, a in self.alpha.items():
            if a.shape != self.nu.shape:
                raise QwenscopeError(
                    f"alpha[{lang!r}] has shape {tuple(a.shape)} but nu has {tuple(self.nu.shape)}; "
                    "both hold one value per feature of the same SAE"
                )

    @property
    def d_sae(self) -> int:
        return int(self.nu.shape[0])

    @property
    def languages(self) -> list[str]:
        return list(self.alpha)

    def top(self, n: int) -> LanguageFeatures:
        """The same statistics with only the ``n`` best features kept in ``ids``."""
        if n < 1:
            raise QwenscopeError(f"keep at least one feature, got top={n}")
        return LanguageFeatures(self.hookpoint, self.lang, top_ids(self.nu, n), self.nu, self.alpha, self.n_tokens)

    def with_ids(self, ids: Sequence[int]) -> LanguageFeatures:
        """The same statistics with hand-picked feature ids (checked against the width)."""
        return LanguageFeatures(self.hookpoint, self.lang, [int(i) for i in ids], self.nu, self.alpha, self.n_tokens)

    def thresholds(self, lang: str) -> Tensor:
        """float32 (len(ids),): ``alpha[lang]`` of the chosen features."""
        if lang not in self.alpha:
            raise QwenscopeError(
                f"no alpha for language {lang!r}: the features were measured on "
                f"{', '.join(self.alpha)}; add {lang!r} texts to the corpus"
            )
        return self.alpha[lang][self.ids]

    # ---------------------------------------------------------------- io
    def save(self, path: str | Path) -> None:
        """Write JSON (``.json``) or safetensors (any other suffix), atomically."""
        path = Path(path)
        meta = {"hookpoint": self.hookpoint, "lang": self.lang, "ids": self.ids, "n_tokens": self.n_tokens}
        if path.suffix == ".json":
            data = {**meta, "nu": self.nu.tolist(), "alpha": {k: v.tolist() for k, v in self.alpha.items()}}
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))
            return
        from safetensors.torch import save_file

        tensors = {"nu": self.nu.contiguous(), **{f"alpha.{k}": v.contiguous() for k, v in self.alpha.items()}}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> LanguageFeatures:
        path = Path(path)
        if not path.is_file():
            raise QwenscopeError(f"no language features at {path}; build them with language_features(...)")
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            alpha = {k: torch.tensor(v, dtype=torch.float32) for k, v in data["alpha"].items()}
            nu = torch.tensor(data["nu"], dtype=torch.float32)
        else:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                data = json.loads((f.metadata() or {})["meta"])
                nu = f.get_tensor("nu")
                alpha = {k[len("alpha.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("alpha.")}  # noqa: SIM118
        return cls(data["hookpoint"], data["lang"], list(data["ids"]), nu, alpha, dict(data.get("n_tokens", {})))


def check_feature_ids(ids: Sequence[int], d_sae: int) -> None:
    """One clear error for an empty list or a feature id outside ``0 .. d_sae - 1``."""
    if not ids:
        raise QwenscopeError("no feature ids; pick at least one (e.g. the top features of a language)")
    bad = [int(i) for i in ids if not 0 <= int(i) < d_sae]
    if bad:
        raise QwenscopeError(f"feature id {bad[0]} is beyond the SAE's width d_sae={d_sae}; ids run 0..{d_sae - 1}")


def top_ids(nu: Tensor, n: int) -> list[int]:
    """The ``n`` features with the largest ``nu``, best first (ties: lower id first)."""
    return [int(i) for i in torch.sort(-nu, stable=True).indices[:n]]


def check_corpus(texts: Mapping[str, Sequence[str]], lang: str) -> None:
    """One clear error for fewer than two languages, a language without text, or ``lang`` missing."""
    if len(texts) < 2:
        raise QwenscopeError(
            f"monolinguality compares languages: got {len(texts)} ({', '.join(texts) or 'none'}); "
            "pass texts of at least two languages"
        )
    empty = [k for k, v in texts.items() if not any(t.strip() for t in v)]
    if empty:
        raise QwenscopeError(f"no text for language {empty[0]!r}; give every language some texts")
    if lang not in texts:
        raise QwenscopeError(f"no texts for {lang!r}, the language whose features are asked; got {', '.join(texts)}")


def language_sums(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    hook: Hook,
    texts: Sequence[str],
    *,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 8,
) -> tuple[Tensor, Tensor, int]:
    """(sum of activations (d_sae,), sum of pre-activations (d_sae,), tokens) over the kept tokens of ``texts``."""
    ids = tokenize_texts(tokenizer, [t for t in texts if t.strip()], max_tokens)
    act_sum = torch.zeros(sae.d_sae, dtype=torch.float64)
    pre_sum = torch.zeros(sae.d_sae, dtype=torch.float64)
    count = 0
    batches = read_batches(
        model, tokenizer, ids, [hook], skip_first=True, batch_size=batch_size, max_batch_tokens=batch_size * max_tokens
    )
    for batch in batches:
        acts = batch.acts[hook.name]  # (batch, seq, d_in)
        x = acts[batch.keep.to(acts.device)].to(sae.device)  # (tokens, d_in)
        with torch.no_grad():
            act_sum += sae.encode(x).double().sum(0).cpu()
            pre_sum += sae.pre_acts(x).double().sum(0).cpu()
        count += int(batch.keep.sum())
    return act_sum, pre_sum, count


def language_features(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    texts: Mapping[str, Sequence[str]],
    lang: str,
    *,
    hookpoint: str | None = None,
    top: int = 2,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 8,
) -> LanguageFeatures:
    """Monolinguality ``nu`` of every feature for ``lang``, its ``top`` features and ``alpha`` per language."""
    hook = check_sae_fits(sae, model, hookpoint, strict=True)
    check_corpus(texts, lang)
    mean_act: dict[str, Tensor] = {}
    alpha: dict[str, Tensor] = {}
    n_tokens: dict[str, int] = {}
    for name, group in texts.items():
        act_sum, pre_sum, n = language_sums(
            model, tokenizer, sae, hook, group, max_tokens=max_tokens, batch_size=batch_size
        )
        if n == 0:
            raise QwenscopeError(f"the texts of {name!r} have no token past the first; give longer texts")
        mean_act[name], alpha[name], n_tokens[name] = act_sum / n, (pre_sum / n).float(), n
        logger.info("%s: %d tokens", name, n)
    others = torch.stack([mean_act[k] for k in texts if k != lang]).mean(0)
    nu = (mean_act[lang] - others).float()
    return LanguageFeatures(hook.name, lang, top_ids(nu, top), nu, alpha, n_tokens)


def texts_by_language(
    sources: Mapping[str, str], n: int, *, split: str = "train", seed: int = 0, min_chars: int = 20
) -> dict[str, list[str]]:
    """Up to ``n`` texts per language from named offline sources, e.g. ``{"en": "fortunes:en", "es": "bible:es"}``
    (any ``qwenscope.data.sources.iter_texts`` name and split; texts shorter than ``min_chars`` are skipped)."""
    from qwenscope.data import iter_texts

    out = {}
    for lang, source in sources.items():
        texts = (t for t in iter_texts(source, split=split, seed=seed) if len(t) >= min_chars)
        out[lang] = list(itertools.islice(texts, n))
    return out
