"""``qwenscope demo``: the main job. Read a model through its SAE, find a feature, steer with it, write a report.

    qwenscope demo                                                     # smollm2-135m and its shipped SAE
    qwenscope demo --model Qwen/Qwen3-1.7B-Base --sae Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50 --layer 14

1. loads the model and the SAE (the embedded one by default) and its feature store (statistics over a corpus,
   computed once and cached);
2. shows the strongest features of a few prompts, each with what it means (its top contexts and logit lens);
3. finds the features of a concept contrastively (texts about the sea vs other texts) and re-ranks the first 16 by
   what steering each does (``qwenscope.features.search.rank_by_effect``);
4. steers a generation with the best of them (a fraction of the residual's typical size, ``qwenscope.steer.strength``)
   and prints both side by side;
5. writes ``OUT/report.html`` (with a dashboard page for every feature shown) that opens offline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenscope import demo_texts
from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density, density_text
from qwenscope.steer.strength import DEFAULT_STRENGTH

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str | None = None
    """SAE: a folder, a file, a hub repo id (e.g. a Qwen-Scope release); default: the model's embedded SAE."""
    layer: int | None = None
    """Layer of a multi-layer SAE release (Qwen-Scope repos hold one SAE per layer); default: the middle layer."""
    hookpoint: str | None = None
    """Where the SAE reads, e.g. resid_post.14; default: the hookpoint the SAE records."""
    out: str = "qwenscope-demo"
    """Folder of the HTML report."""
    n_tokens: int = 100_000
    """Tokens of the feature-store pass when the SAE ships without packed statistics (``qwenscope stats --pack``; the
    shipped SAEs come with statistics from 1M tokens of mix:default); computed once per SAE and cached."""
    max_density: float = MAX_DENSITY
    """Leave out features that fire on more than this share of the store's tokens (always-on features say nothing
    about a prompt); 1 keeps them all."""
    strength: float = DEFAULT_STRENGTH
    """Steering strength, a fraction of the residual's typical size at the hookpoint (qwenscope.steer.strength)."""
    max_new_tokens: int = 40
    """Tokens generated for the steering comparison."""

    def __post_init__(self) -> None:
        if self.n_tokens < 1000:
            raise QwenscopeError(f"--n-tokens must be at least 1000, got {self.n_tokens}")
        if self.max_new_tokens < 1:
            raise QwenscopeError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        check_max_density(self.max_density)


def _load(cfg: DemoConfig):
    from qwenscope.models.hookpoints import check_sae_fits, decoder_layers
    from qwenscope.models.load import load_model
    from qwenscope.sae.load import embedded_saes, load_sae

    if cfg.sae is None and cfg.model not in embedded_saes():
        raise QwenscopeError(f"no SAE ships for {cfg.model}; pass --sae (a folder, a file or a hub repo id)")
    model, tokenizer = load_model(cfg.model)
    source = cfg.sae or cfg.model
    layer = cfg.layer
    if layer is None and cfg.sae is not None and cfg.hookpoint is None and not Path(cfg.sae).exists():
        layer = len(decoder_layers(model)[1]) // 2  # a hub release with one SAE per layer: take the middle one
    sae = load_sae(source, layer=layer, hookpoint=cfg.hookpoint)
    hook = check_sae_fits(sae, model, cfg.hookpoint).name
    return model, tokenizer, sae, source, hook


def meaning(info: Any) -> str:
    """What a feature means, in one line: its label if it has one, else its top contexts and logit lens."""
    from qwenscope.features.labels import fallback_label

    return info.label or fallback_label(info)


def prompt_features(
    model, tokenizer, sae, hook: str, prompt: str, top: int = 5, dense: Collection[int] = ()
) -> list[tuple[int, float, str]]:
    """The ``top`` features of a prompt by peak activation (position 0 left out), with the token where each peaks;
    the ``dense`` ones (always-on: ``qwenscope.features.density``) left out."""
    from qwenscope.features.search import token_features
    from qwenscope.features.text import piece_at

    best: dict[int, tuple[float, str]] = {}
    rows = token_features(model, tokenizer, sae, hook, prompt, 8 + len(dense))
    pieces = [row["token"] for row in rows]
    for row in rows[1:]:
        for f in row["features"]:
            if f["id"] not in dense and f["act"] > best.get(f["id"], (0.0, ""))[0]:
                best[f["id"]] = (f["act"], piece_at(pieces, row["pos"]))
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top]
    return [(fid, act, token) for fid, (act, token) in ranked]


def pick_concept_feature(hits: list[Any], effects: list[Any] | None = None) -> Any:
    """The hit to steer with: the best by steering effect (``effects``, from ``rank_by_effect``, best first) among
    those that fire on the positive texts; without effects, the strongest hit that stays (almost) silent on the
    negative texts."""
    fired = [h for h in hits if h.rate_pos > 0]
    if not fired:
        raise QwenscopeError("no feature fires on the positive texts: is the SAE trained for this model and layer?")
    by_id = {h.feature: h for h in fired}
    for effect in effects or []:
        if effect.feature in by_id:
            return by_id[effect.feature]
    quiet = [h for h in fired if h.rate_neg <= 0.02]
    if not quiet:
        logger.warning("no feature stays silent on the negative texts; steering the largest rate difference")
    return max(quiet or fired, key=lambda h: h.rate_diff)


def _density(store: Any, fid: int) -> str:
    return density_text(float(store.frequencies()[fid]))


def run_demo(cfg: DemoConfig) -> None:
    from qwenscope.demo_report import write_report
    from qwenscope.features.dashboard import cached_store, write_dashboard
    from qwenscope.features.density import dense_features
    from qwenscope.features.search import contrastive, rank_by_effect
    from qwenscope.steer.generate import generate_pair, side_by_side
    from qwenscope.steer.strength import steering_unit

    t0 = time.perf_counter()
    print(f"== 1. model {cfg.model}, SAE {cfg.sae or 'shipped with it'}")
    model, tokenizer, sae, source, hook = _load(cfg)
    print(f"   {type(model).__name__}, SAE at {hook}: d_sae {sae.d_sae}, k {sae.cfg.k}")
    store = cached_store(model, tokenizer, sae, source, hook, cfg.n_tokens)
    alive = float((store.table()["count"] > 0).mean())
    dense = dense_features(store, cfg.max_density)
    print(
        f"   feature store: {store.meta.get('n_tokens', 0):,} tokens of {store.meta.get('dataset')}, "
        f"{alive:.1%} of features fire ({store.folder})"
    )
    print(
        f"   {len(dense)} always-on features fire on more than {density_text(cfg.max_density)} of tokens: left out "
        "below (--max-density)"
    )

    print("\n== 2. the strongest features of a few prompts (density: the share of tokens a feature fires on)")
    read = []
    for prompt in demo_texts.PROMPTS:
        rows = prompt_features(model, tokenizer, sae, hook, prompt, dense=dense)
        read.append((prompt, rows))
        print(f"\n   {prompt!r}")
        for fid, act, token in rows:
            print(
                f"   #{fid:<6} {act:7.1f} at {token!r:<12} density {_density(store, fid):>7}  "
                f"{meaning(store.feature(fid))}"
            )

    print(f"\n== 3. contrastive search: texts about {demo_texts.CONCEPT} vs other texts")
    hits = contrastive(model, tokenizer, sae, demo_texts.POSITIVE, demo_texts.NEGATIVE, top=40, by="rate")
    t_probe = time.perf_counter()
    unit = steering_unit(model, tokenizer, hook)
    candidates = [h for h in hits if h.rate_pos > 0 and h.feature not in dense][:16] or hits[:16]
    effects = rank_by_effect(
        model, tokenizer, sae, candidates, demo_texts.POSITIVE, demo_texts.NEGATIVE, hookpoint=hook, unit=unit
    )
    chosen = pick_concept_feature(hits, effects)
    print(
        f"   steering probe ({time.perf_counter() - t_probe:.0f} s): adding #{effects[0].feature} makes the positive "
        f"texts {effects[0].score:.2f} nats/token more likely against the negative ones, the most of the first "
        f"{len(effects)} hits"
    )
    listed = [h for h in hits if h.feature not in dense][:5]
    for h in listed + ([chosen] if chosen not in listed else []):
        mark = "  <- chosen (largest steering effect)" if h is chosen else ""
        mark += "  (always-on)" if h.feature in dense else ""
        print(
            f"   #{h.feature:<6} fires on {h.rate_pos:.0%} vs {h.rate_neg:.0%} of tokens, density "
            f"{_density(store, h.feature)}: {meaning(store.feature(h.feature))}{mark}"
        )

    print(
        f"\n== 4. steering #{chosen.feature} at {cfg.strength:g} x the residual's typical size ({unit:.1f}) on "
        f"{demo_texts.STEER_PROMPT!r}"
    )
    plain, steered = generate_pair(
        model,
        tokenizer,
        demo_texts.STEER_PROMPT,
        sae,
        {chosen.feature: cfg.strength},
        max_new_tokens=cfg.max_new_tokens,
        relative=True,
        unit=unit,
        hookpoint=hook,
    )
    print(side_by_side(plain, steered))

    out = Path(cfg.out)
    table = [h for h in hits if h.feature not in dense][:10]
    shown = sorted({f for _, rows in read for f, _, _ in rows} | {h.feature for h in table} | {chosen.feature})
    write_dashboard(store, out / "features", shown, max_density=cfg.max_density)
    report = write_report(out, cfg, store, read, table, chosen, (plain, steered), model, tokenizer, sae, hook)
    print(f"\n== 5. report: {report.resolve()}  ({time.perf_counter() - t0:.0f} s in all)")
