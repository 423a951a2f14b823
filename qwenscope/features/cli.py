"""The ``qwenscope stats`` and ``qwenscope search`` commands.

    qwenscope stats --model smollm2-135m --n-tokens 200000            # builds (or reuses) the cached feature store
    qwenscope stats --model smollm2-135m --hookpoint resid_post.3,resid_post.15,resid_post.25 --n-tokens 1000000 \
        --pack                                                        # one pass, packed beside each shipped SAE
    qwenscope search --model smollm2-135m --positive "I love it" --negative "I hate it"
    qwenscope search --model smollm2-135m --positive-file pos.txt --negative-file neg.txt --by mean
    qwenscope search --model smollm2-135m --positive-file pos.txt --negative-file neg.txt --by effect
    qwenscope search --model smollm2-135m --token " Paris"
    qwenscope search --model smollm2-135m --label paris               # needs the store of `qwenscope stats`

Each command is a config dataclass (its field docstrings are the --help) and a run function.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density, density_text
from qwenscope.features.stats import StatsConfig

logger = logging.getLogger(__name__)


@dataclass
class StatsCommand:
    """Which model and SAE, and where the feature store goes."""

    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE: a folder, a file or a hub repo id; empty: the SAE shipped for the embedded model."""
    hookpoint: str | None = None
    """Where the SAE reads, e.g. resid_post.12; several comma-separated (resid_post.3,resid_post.15) share one pass;
    default: the hookpoint the SAE records."""
    k: int | None = None
    """TopK k, only for Qwen-Scope files outside a folder named like their release."""
    out: str = ""
    """Store folder (one subfolder per hookpoint when there are several); empty: the cache
    (~/.cache/qwenscope/features/MODEL/SAE/HOOKPOINT)."""
    rebuild: bool = False
    """Recompute the store even if a matching one is cached (or ships with the SAE)."""
    pack: bool = False
    """Recompute and also write the compact statistics beside the SAE (feature_stats.parquet in its folder;
    qwenscope/assets/saes/MODEL/HOOKPOINT for an embedded model): the file that ships with it, used before any pass."""
    labels: Literal["none", "fallback", "openai"] = "none"
    """Label the features: fallback (from the statistics, no LLM) or openai (an OpenAI-compatible server)."""
    label_url: str = "http://localhost:8000/v1"
    """Base URL of the OpenAI-compatible server for --labels openai (its key: $OPENAI_API_KEY)."""
    label_model: str = ""
    """Model name to request from that server."""
    label_limit: int = 0
    """Label only the most frequent this many features; 0: every feature that fired."""
    show: int = 10
    """Most frequent features to print."""
    device: str = "cpu"
    """Device for the model and the SAE (cpu, cuda, ...)."""
    max_density: float = MAX_DENSITY
    """Features firing on more than this share of tokens are counted and marked as always-on in the summary."""

    def __post_init__(self) -> None:
        check_max_density(self.max_density)
        if self.labels == "openai" and not self.label_model:
            raise QwenscopeError("--labels openai needs --label-model, the model name the server serves")
        if self.show < 0 or self.label_limit < 0:
            raise QwenscopeError("--show and --label-limit cannot be negative")


def run_stats(cmd: StatsCommand, cfg: StatsConfig) -> None:
    from qwenscope.features.store import get_or_build_stores
    from qwenscope.models.load import model_name
    from qwenscope.models.parts import load_model_and_saes

    parts = load_model_and_saes(cmd.model, cmd.sae, cmd.hookpoint, k=cmd.k, device=cmd.device)
    model, tokenizer, saes, hooks = parts.model, parts.tokenizer, list(parts.saes.values()), parts.hookpoints
    folders = None
    if cmd.out:
        folders = [Path(cmd.out)] if len(hooks) == 1 else [Path(cmd.out) / h for h in hooks]
    stores = get_or_build_stores(
        model,
        tokenizer,
        saes,
        model_name(model),
        parts.sources,
        cfg,
        hookpoints=hooks,
        folders=folders,
        rebuild=cmd.rebuild,
        pack=cmd.pack,
    )
    for n, store in enumerate(stores):
        if cmd.labels != "none":
            from qwenscope.features.labels import OpenAILabeller, label_store

            labeller = OpenAILabeller(cmd.label_url, cmd.label_model) if cmd.labels == "openai" else None
            table = store.table()
            alive = table[table["count"] > 0].sort_values("count", ascending=False).index
            label_store(store, labeller, list(alive[: cmd.label_limit or None]))
        print(("\n" if n else "") + "\n".join(summary_lines(store, cmd.show, cmd.max_density)))


def summary_lines(store, show: int, max_density: float = MAX_DENSITY) -> list[str]:
    """Where the store is, how many features are alive and always-on, and the most frequent ones with their density
    (always-on ones marked)."""
    from qwenscope.features.labels import fallback_label

    table, meta = store.table(), store.meta
    alive = int((table["count"] > 0).sum())
    dense = int((table["frequency"] > max_density).sum())
    lines = [
        f"feature store  {store.folder}",
        f"model {meta.get('model')}, sae {meta.get('sae')} at {meta.get('hookpoint')}, "
        f"{meta.get('n_tokens', 0):,} tokens of {meta.get('dataset')}",
        f"alive {alive:,} / {store.d_sae:,} features ({alive / store.d_sae:.1%}) fired at least once; "
        f"always-on (density > {density_text(max_density)} of tokens): {dense}",
    ]
    if not show:
        return lines
    lines.append(f"\n{'feature':>7} {'density':>8} {'mean':>8} {'max':>8}  label (or what it fires on)")
    for i in table.sort_values("count", ascending=False, kind="stable").index[:show]:
        info = store.feature(int(i))
        mark = "  [always-on]" if info.frequency > max_density else ""
        lines.append(
            f"{info.id:>7} {density_text(info.frequency):>8} {info.mean_act:>8.2f} {info.max_act:>8.2f}  "
            f"{info.label or fallback_label(info)}{mark}"
        )
    return lines


# ---------------------------------------------------------------- search
@dataclass
class SearchConfig:
    """Find features: contrastively (--positive/--negative), by a promoted token (--token), or by label (--label)."""

    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE: a folder, a file or a hub repo id; empty: the SAE shipped for the embedded model."""
    hookpoint: str | None = None
    """Where the SAE reads, e.g. resid_post.12; default: the hookpoint the SAE records."""
    k: int | None = None
    """TopK k, only for Qwen-Scope files outside a folder named like their release."""
    positive: str = ""
    """A text the features should fire on (contrastive mode); more in --positive-file."""
    negative: str = ""
    """A text they should not fire on; more in --negative-file."""
    positive_file: str = ""
    """A file of positive texts, one per line."""
    negative_file: str = ""
    """A file of negative texts, one per line."""
    by: Literal["rate", "mean", "effect", "diffmeans"] = "rate"
    """Rank contrastive hits by the difference of firing rates, of mean activations, or by effect: the first
    --candidates by rate, re-ranked by how much steering each makes the positive texts more likely than the negative
    ones (the features to steer with). diffmeans: no SAE feature but the residual's difference in means (positive -
    negative), saved with --out as a one-feature SAE to steer with, and the SAE features closest to it."""
    out: str = ""
    """--by diffmeans: the folder the direction is saved in (then: qwenscope steer --sae FOLDER --features 0:0.5
    --relative)."""
    candidates: int = 16
    """--by effect: contrastive candidates the steering probe tries."""
    alphas: str = "0.75"
    """--by effect: relative strengths probed, comma-separated (fractions of the residual's typical size; the score
    is the mean over them)."""
    token: str = ""
    """Token mode: features whose decoder direction most promotes this token (e.g. ' Paris')."""
    label: str = ""
    """Label mode: features whose label, promoted tokens or top contexts match this query."""
    store: str = ""
    """Feature store folder for --label; empty: the cached store of `qwenscope stats`."""
    top: int = 20
    """Features to print."""
    json: bool = False
    """Print JSON instead of a table."""
    device: str = "cpu"
    """Device for the model and the SAE (cpu, cuda, ...)."""

    def __post_init__(self) -> None:
        contrast = any((self.positive, self.negative, self.positive_file, self.negative_file))
        if sum((contrast, bool(self.token), bool(self.label.strip()))) != 1:
            raise QwenscopeError("pick one mode: --positive/--negative (or their -file options), --token or --label")
        if self.top < 1:
            raise QwenscopeError(f"--top must be at least 1, got {self.top}")
        if self.candidates < 1:
            raise QwenscopeError(f"--candidates must be at least 1, got {self.candidates}")
        if self.by == "diffmeans" and not (contrast and self.out):
            raise QwenscopeError("--by diffmeans needs --positive/--negative texts and --out FOLDER to save it in")
        self.alpha_list()

    def alpha_list(self) -> list[float]:
        """--alphas as numbers."""
        try:
            alphas = [float(a) for a in self.alphas.split(",") if a.strip()]
        except ValueError:
            alphas = []
        if not alphas or not all(math.isfinite(a) for a in alphas):
            raise QwenscopeError(f"--alphas {self.alphas!r}: pass comma-separated numbers, e.g. 0.5,0.75")
        return alphas

    def texts(self, side: str) -> list[str]:
        """The positive or negative texts: the flag's text, then the file's non-empty lines."""
        texts = [getattr(self, side)] if getattr(self, side).strip() else []
        path = getattr(self, f"{side}_file")
        if path:
            if not Path(path).is_file():
                raise QwenscopeError(f"--{side}-file {path} does not exist; pass a file with one text per line")
            texts += [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise QwenscopeError(f"no {side} texts; pass --{side} TEXT or --{side}-file FILE")
        return texts


def run_search(cfg: SearchConfig) -> None:
    if cfg.label.strip():
        rows = _search_label(cfg)
    else:
        from qwenscope.features.search import by_token, contrastive, effect_ranked
        from qwenscope.models.parts import load_model_and_saes

        parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint, k=cfg.k, device=cfg.device)
        model, tokenizer, (hook, sae) = parts.model, parts.tokenizer, parts.one()
        if cfg.token:
            found = by_token(model, tokenizer, sae, cfg.token, cfg.top)
            rows = [{"feature": f, "logit": round(v, 4)} for f, v in found]
        elif cfg.by == "diffmeans":
            rows = _search_diffmeans(cfg, model, tokenizer, sae, hook)
        elif cfg.by == "effect":
            ranked = effect_ranked(
                model,
                tokenizer,
                sae,
                cfg.texts("positive"),
                cfg.texts("negative"),
                cfg.top,
                cfg.candidates,
                cfg.alpha_list(),
                hookpoint=hook,
            )
            rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(h).items()} for h in ranked]
        else:
            hits = contrastive(
                model, tokenizer, sae, cfg.texts("positive"), cfg.texts("negative"), cfg.top, cfg.by, hook
            )
            rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(h).items()} for h in hits]
    if cfg.json:
        print(json.dumps(rows))
        return
    _print_rows(rows)


def _search_diffmeans(cfg: SearchConfig, model: Any, tokenizer: Any, sae: Any, hook: str) -> list[dict[str, Any]]:
    """Save the difference-in-means direction at ``hook`` as a one-feature SAE; rows: the SAE features whose decoder
    rows are closest to it (cosine)."""
    import torch

    from qwenscope.features.directions import diff_in_means
    from qwenscope.models.load import model_name
    from qwenscope.sae.directions import direction_sae

    dim = diff_in_means(model, tokenizer, cfg.texts("positive"), cfg.texts("negative"), hook)
    direction_sae(dim[None], hook, model=model_name(model)).save(cfg.out)
    print(
        f"saved the direction (norm {float(dim.norm()):.4g}) to {cfg.out}; steer with: qwenscope steer "
        f"--model {cfg.model} --sae {cfg.out} --features 0:0.5 --relative",
        file=sys.stderr,
    )
    w = sae.W_dec.detach().float().cpu()
    cos = (w @ dim) / (w.norm(dim=1) * dim.norm()).clamp_min(1e-12)
    top = torch.topk(cos, min(cfg.top, len(cos)))
    return [{"feature": int(i), "cosine": round(float(c), 4)} for c, i in zip(top.values, top.indices)]


def _search_label(cfg: SearchConfig) -> list[dict[str, Any]]:
    import re

    from qwenscope.features.search import by_label
    from qwenscope.features.store import FeatureStore, feature_store_dir

    if cfg.store:
        folder = Path(cfg.store)
    else:  # the folder run_stats uses: model_name(model) is the last part of the name, without loading the model
        from qwenscope.sae.load import load_sae

        hook = cfg.hookpoint or load_sae(cfg.sae or cfg.model, k=cfg.k).cfg.hookpoint
        folder = feature_store_dir(re.split(r"[/\\]", cfg.model.rstrip("/\\"))[-1], cfg.sae or cfg.model, hook)
    store = FeatureStore.open(folder)
    rows = []
    for i in by_label(store, cfg.label, cfg.top):
        info = store.feature(i)
        rows.append(
            {
                "feature": i,
                "label": info.label,
                "frequency": round(info.frequency, 6),
                "promotes": [t for t, _ in info.promoted[:5]],
            }
        )
    return rows


def _print_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no matching feature")
        return
    keys = list(rows[0])
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[j]) for c in cells)) for j, k in enumerate(keys)]
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
