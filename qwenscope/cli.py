"""The ``qwenscope`` command. Each subcommand is a config dataclass (its field docstrings are the help) and a run
function taking that config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qwenscope.cli_args import add_dataclass_args, from_args
from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density

logger = logging.getLogger("qwenscope")


# ---------------------------------------------------------------- info
@dataclass
class InfoConfig:
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""


def run_info(cfg: InfoConfig) -> None:
    from qwenscope.models.load import load_model

    print_info(cfg.model, *load_model(cfg.model))


def print_info(name: str, model, tokenizer) -> None:
    """Architecture, sizes and the module behind every hookpoint kind of a loaded model."""
    from qwenscope.models.hookpoints import KINDS, decoder_layers, hidden_size, resolve_hookpoint

    path, layers = decoder_layers(model)
    n_params = sum(p.numel() for p in model.parameters())
    rows = [
        ("model", name),
        ("class", type(model).__name__),
        ("model_type", getattr(model.config, "model_type", "?")),
        ("parameters", f"{n_params / 1e6:.1f}M ({next(model.parameters()).dtype})"),
        ("layers", f"{len(layers)} at {path}"),
        ("hidden size", str(hidden_size(model))),
        ("vocab", str(len(tokenizer))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nhookpoints (L = 0..{len(layers) - 1}):")
    for kind in KINDS:
        paths = []
        for i in range(len(layers)):
            p = resolve_hookpoint(model, f"{kind}.{i}").module_path.replace(f"{path}.{i}", f"{path}.L")
            paths.append(p + (" (input)" if kind == "resid_pre" else ""))
        print(f"  {kind + '.L':<14} {' | '.join(dict.fromkeys(paths))}")
    print("  or any module path from model.named_modules(), with '.input' for its input")


# ---------------------------------------------------------------- features
@dataclass
class FeaturesConfig:
    sae: str
    """SAE: a folder, a file or a hub repo id (Qwen-Scope, SAELens, Gemma Scope, sparsify or ours)."""
    text: str
    """The text whose tokens are shown with their top features."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    hookpoint: str | None = None
    """Where the SAE reads, e.g. resid_post.12; default: the hookpoint the SAE records."""
    top: int = 5
    """Features shown per token."""
    k: int | None = None
    """TopK k, only for Qwen-Scope files outside a folder named like their release."""
    json: bool = False
    """Print JSON instead of a table."""
    store: str = ""
    """Feature store folder for the densities; empty: the SAE's cached store or the one shipped with it (no new
    pass: without either, densities are unknown; `qwenscope stats` builds one)."""
    max_density: float = MAX_DENSITY
    """Leave out features that fire on more than this share of the store's tokens (always-on); 1 keeps them."""

    def __post_init__(self) -> None:
        if self.top < 1:
            raise QwenscopeError(f"--top must be at least 1, got {self.top}")
        if not self.text.strip():
            raise QwenscopeError("--text is empty; pass the text to analyse")
        check_max_density(self.max_density)


def token_features(model, tokenizer, sae, hookpoint: str, text: str, top: int) -> list[dict[str, Any]]:
    """Moved to ``qwenscope.features.search.token_features``; this name stays for older imports."""
    from qwenscope.features.search import token_features as features_of_tokens

    return features_of_tokens(model, tokenizer, sae, hookpoint, text, top)


def run_features(cfg: FeaturesConfig) -> None:
    from qwenscope.features.density import dense_features, density_text
    from qwenscope.features.search import token_features
    from qwenscope.features.store import FeatureStore, find_store
    from qwenscope.models.load import model_name
    from qwenscope.models.parts import load_model_and_saes

    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint, k=cfg.k)
    model, tokenizer, (hook, sae) = parts.model, parts.tokenizer, parts.one()
    store = (
        FeatureStore.open(cfg.store)
        if cfg.store
        else find_store(model, tokenizer, sae, model_name(model), parts.sae_id, hook)
    )
    frequency = store.frequencies() if store is not None else None
    dense = dense_features(store, cfg.max_density) if store is not None else {}
    rows = token_features(model, tokenizer, sae, hook, cfg.text, cfg.top + len(dense))
    left_out: dict[int, float] = {}
    for r in rows:
        left_out.update({f["id"]: dense[f["id"]] for f in r["features"] if f["id"] in dense})
        r["features"] = [
            {**f, "density": None if frequency is None else float(frequency[f["id"]])}
            for f in r["features"]
            if f["id"] not in dense
        ][: cfg.top]
    always_on = [{"id": i, "density": p} for i, p in sorted(left_out.items(), key=lambda kv: -kv[1])]
    if cfg.json:
        print(
            json.dumps(
                {
                    "model": cfg.model,
                    "sae": cfg.sae,
                    "hookpoint": hook,
                    "max_density": cfg.max_density,
                    "store": None if store is None else str(store.folder),
                    "always_on": always_on,
                    "tokens": rows,
                }
            )
        )
        return
    if store is None:
        print(
            f"densities unknown: no feature store for this SAE yet (qwenscope stats --model {cfg.model} --sae "
            f"{cfg.sae} builds one)"
        )
    elif always_on:
        print(
            f"left out: {len(always_on)} always-on features (firing on more than {density_text(cfg.max_density)} "
            "of tokens): " + ", ".join(f"#{a['id']} ({density_text(a['density'])})" for a in always_on)
        )
    print(f"{'pos':>4}  {'token':<16} top features (id:activation, density) at {hook}")
    for r in rows:
        feats = "  ".join(f"{f['id']}:{f['act']:.2f} ({density_text(f['density'])})" for f in r["features"]) or "-"
        print(f"{r['pos']:>4}  {r['token']!r:<16} {feats}")


# ---------------------------------------------------------------- releases
@dataclass
class ReleasesConfig:
    json: bool = False
    """Print JSON instead of a table."""


def run_releases(cfg: ReleasesConfig) -> None:
    from dataclasses import asdict

    from qwenscope.sae.releases import RELEASES

    if cfg.json:
        print(json.dumps([asdict(r) for r in RELEASES.values()], indent=1))
        return
    print(f"{'repo':<48} {'backbone':<28} {'layers':>6} {'d_model':>7} {'width':>7} {'k':>4}  moe")
    for r in RELEASES.values():
        print(
            f"{r.repo_id:<48} {r.backbone:<28} {r.n_layers:>6} {r.d_model:>7} {r.d_sae:>7} {r.k:>4}  "
            f"{'yes' if r.moe else 'no'}"
        )


# ---------------------------------------------------------------- main
Getter = Callable[[], tuple[tuple[type, ...], Callable[..., object]]]


def _demo() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.demo import DemoConfig, run_demo

    return (DemoConfig,), run_demo


def _cache() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.train.cli import CacheCommand, run_cache

    return (CacheCommand,), run_cache


def _train() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.train.cli import TrainCommand, run_train
    from qwenscope.train.config import TrainConfig

    return (TrainCommand, TrainConfig), run_train


def _steer() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.steer.generate import SteerConfig, run_steer

    return (SteerConfig,), run_steer


def _dashboard() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.features.dashboard import DashboardConfig, run_dashboard

    return (DashboardConfig,), run_dashboard


def _playground() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.serve.playground import PlaygroundConfig, run_playground

    return (PlaygroundConfig,), run_playground


def _serve() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.serve.api import ServeConfig, run_serve

    return (ServeConfig,), run_serve


def _stats() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.features.cli import StatsCommand, run_stats
    from qwenscope.features.stats import StatsConfig

    return (StatsCommand, StatsConfig), run_stats


def _search() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.features.cli import SearchConfig, run_search

    return (SearchConfig,), run_search


def _eval() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.evaluate import EvalConfig, run_eval

    return (EvalConfig,), run_eval


def _benchmarks() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.apps.benchmarks.cli import BenchmarksConfig, run_benchmarks

    return (BenchmarksConfig,), run_benchmarks


def _classify() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.apps.classify.cli import ClassifyConfig, run_classify

    return (ClassifyConfig,), run_classify


def _synthesize() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.apps.synthesize.cli import SynthesizeConfig, run_synthesize

    return (SynthesizeConfig,), run_synthesize


def _grpo() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.apps.posttrain.cli import command

    return command()


def _sasft() -> tuple[tuple[type, ...], Callable[..., object]]:
    from qwenscope.apps.posttrain.cli import SasftCommand, run_sasft

    return (SasftCommand,), run_sasft


COMMANDS: dict[str, tuple[str, Getter, tuple[str, ...]]] = {
    "info": (
        "architecture, layers, hidden size and hookpoints of a model",
        lambda: ((InfoConfig,), run_info),
        ("model",),
    ),
    "features": ("top SAE features of each token of a text", lambda: ((FeaturesConfig,), run_features), ()),
    "releases": ("the published Qwen-Scope SAE suites", lambda: ((ReleasesConfig,), run_releases), ()),
    "cache": ("write model activations to an on-disk cache (resumable)", _cache, ()),
    "train": ("train TopK / BatchTopK SAEs from a cache or a live model (resumable)", _train, ()),
    "eval": ("explained variance, L0, dead features and CE-loss recovered of SAEs", _eval, ()),
    "stats": ("feature statistics, top contexts and logit lens into a cached feature store", _stats, ()),
    "search": ("find features: contrastive texts, a promoted token, or a label", _search, ()),
    "steer": ("unsteered and steered generations side by side", _steer, ()),
    "dashboard": ("static HTML pages of SAE features with a searchable index (opens offline)", _dashboard, ()),
    "playground": ("a gradio app: features of a prompt, steering, unsteered vs steered", _playground, ()),
    "serve": ("an OpenAI-compatible HTTP API with per-request feature steering", _serve, ()),
    "benchmarks": (
        "what benchmarks cover, their redundancy and overlap, and compressing them, from SAE features",
        _benchmarks,
        ("action", "benchmarks"),
    ),
    "classify": (
        "toxicity (or any label) from a handful of SAE features, with probes and TF-IDF side by side",
        _classify,
        ("action", "classifier"),
    ),
    "synthesize": ("verified data aimed at the SAE features a seed corpus never activates", _synthesize, ()),
    "grpo": ("GRPO in TRL with one steered negative rollout per group (a repetition feature turned up)", _grpo, ()),
    "sasft": ("fine-tune with SASFT: SFT that keeps an unwanted language's SAE features quiet (TRL)", _sasft, ()),
    "demo": ("the main job on the embedded default model", _demo, ()),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwenscope", description="SAE features of Qwen models as development tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, get, positional) in COMMANDS.items():
        classes, _ = get()
        command = sub.add_parser(name, help=help_text, description=help_text)
        for cls in classes:
            doc = (cls.__doc__ or "").split("\n")[0]
            group = command.add_argument_group(cls.__name__, None if doc.startswith(cls.__name__ + "(") else doc)
            add_dataclass_args(group, cls, positional)  # type: ignore[arg-type]
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    classes, run = COMMANDS[args.command][1]()
    try:
        run(*(from_args(cls, args) for cls in classes))
    except QwenscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
