"""Does steering work? Two measured experiments on the embedded models, each an alpha sweep over 50 prompts.

* language (gemma3-270m, resid_post.9): the 10 features that fire most often on French paragraphs of the offline
  corpus while staying silent (<= 1% of tokens) on English ones; steering English sentence openings with all of
  them. Rate = share of continuations that langid identifies as French.
* concept (smollm2-135m, resid_post.15): a feature found contrastively on texts about a concept (the sea, the demo's
  texts) vs other texts; steering chat instructions unrelated to it. Rate = share of answers containing a word of
  the concept.

Strengths are relative (``qwenscope.steer.strength``): each feature adds a vector of norm alpha x the residual's
typical size at the hookpoint, at every position. (Each feature's mean activation where it fires on the positive
texts is recorded too, in the same unit, as ``typical_per_unit``.) Alpha 0 is the unsteered baseline of the same
run. Fluency cost: perplexity of each continuation under the unsteered model. Greedy decoding, so every figure
is deterministic.

    # both experiments (~15 min on 2 cores)
    .venv/bin/python experiments/steering_effect/steer_effect.py
    .venv/bin/python experiments/steering_effect/steer_effect.py --experiment concept --alphas 0,0.3,0.6

Writes experiments/steering_effect/results/steer_effect.json and experiments/steering_effect/results/steer_effect.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import torch

from qwenscope import load_sae
from qwenscope.data.sources import iter_texts
from qwenscope.demo_texts import NEGATIVE, POSITIVE
from qwenscope.experiment import load_script, set_threads, write_result
from qwenscope.features.search import contrastive, firing_profile
from qwenscope.models.load import load_model
from qwenscope.steer.strength import steering_unit
from qwenscope.steer.sweep import sweep

RESULTS = Path(__file__).parent / "results"

# English sentence openings for the base gemma3-270m (plain continuation, no chat template).
OPENINGS = list(load_script(Path(__file__).parents[1] / "prompts.py").OPENINGS)

# Chat instructions for smollm2-135m-instruct, none of them about the concept.
INSTRUCTIONS = [
    "Write a sentence about your morning.",
    "Describe your favourite room in a house.",
    "Tell me about a good book.",
    "Give me a tip for studying.",
    "Describe a busy city street.",
    "Write a short story about a cat.",
    "What makes a good friend?",
    "Describe your ideal weekend.",
    "Write a sentence about autumn.",
    "Tell me about a famous inventor.",
    "Describe a walk in the forest.",
    "What is your favourite food and why?",
    "Write a poem about the moon.",
    "Describe a day at school.",
    "Give me advice for a job interview.",
    "Write a sentence about a train journey.",
    "Describe an old house.",
    "Tell me about a birthday party.",
    "Write a short story about a dragon.",
    "Describe a rainy afternoon.",
    "What is the best way to learn to cook?",
    "Write about a visit to the mountains.",
    "Describe a football match.",
    "Tell me about your favourite animal.",
    "Write a sentence about music.",
    "Describe a market in the morning.",
    "Give me a tip for sleeping better.",
    "Write a short story about a robot.",
    "Describe a garden in spring.",
    "Tell me about a hobby you enjoy.",
    "Write a sentence about friendship.",
    "Describe a library.",
    "What should I pack for a trip?",
    "Write about a snowy day.",
    "Describe a painting you like.",
    "Tell me about a memorable meal.",
    "Write a short story about a lost key.",
    "Describe a night in the desert.",
    "Give me an idea for a gift.",
    "Write a sentence about the city at night.",
    "Describe a kitchen.",
    "Tell me about a teacher you admire.",
    "Write a short story about a magic tree.",
    "Describe a bicycle ride.",
    "What makes a house a home?",
    "Write a sentence about a mountain village.",
    "Describe a concert.",
    "Tell me about the history of bread.",
    "Write a short story about a clock.",
    "Describe your perfect breakfast.",
]

SEA_WORDS = re.compile(
    r"\b(seas?|ocean\w*|waves?|beach\w*|shores?|ships?|boats?|sail\w*|tides?|coast\w*|fish\w*|marine|"
    r"harbou?rs?|island\w*|sand|salt\w*|whales?|dolphins?|coral|surf\w*|underwater|sailors?|seaside|deck|anchor\w*)\b",
    re.IGNORECASE,
)


def typical_on(model, tokenizer, sae, hook: str, texts, features: list[int]) -> torch.Tensor:
    """A (d_sae,) tensor: each feature's mean activation where it fires on ``texts`` (0 elsewhere)."""
    rate, mean = firing_profile(model, tokenizer, sae, hook, texts)
    typical = torch.zeros(sae.d_sae)
    for f in features:
        typical[f] = float(mean[f] / rate[f]) if rate[f] > 0 else 0.0
    return typical


def paragraphs(source: str, n: int, min_chars: int = 200, max_chars: int = 400) -> list[str]:
    """``n`` paragraphs of a corpus (held-out split), trimmed at a word boundary, headings and lists skipped."""
    out = []
    for text in iter_texts(source, split="all"):
        if len(text) >= min_chars and not text.lstrip().startswith(("#", "*", "-", "|")):
            out.append(text[:max_chars].rsplit(" ", 1)[0])
        if len(out) == n:
            break
    return out


def run_language(args) -> dict:
    import langid

    langid.set_languages(None)
    model, tokenizer = load_model("gemma3-270m")
    sae = load_sae("gemma3-270m", hookpoint="resid_post.9")
    hook = sae.cfg.hookpoint
    french, english = paragraphs("dataset-build:fra", 40), paragraphs("dataset-build:eng", 40)
    # Features that fire on French and (almost) never on English, the most frequent first. The largest rate
    # differences belong to features that also fire on 15-25% of English tokens: steering those gives noise.
    hits = contrastive(model, tokenizer, sae, french, english, top=400, by="rate")
    hits = sorted([h for h in hits if h.rate_neg <= 0.01], key=lambda h: -h.rate_pos)[: args.language_features]
    features = [h.feature for h in hits]
    typical = typical_on(model, tokenizer, sae, hook, french, features)

    def is_french(text: str) -> bool:
        return bool(text.strip()) and langid.classify(text)[0] == "fr"

    alphas = [float(a) for a in args.language_alphas.split(",")]
    unit = steering_unit(model, tokenizer, hook)
    rows = sweep(
        model,
        tokenizer,
        OPENINGS[: args.n_prompts],
        sae,
        features,
        alphas,
        is_french,
        max_new_tokens=args.max_new_tokens,
        chat=False,
        relative=True,
        unit=unit,
    )
    return {
        "model": "gemma3-270m",
        "hookpoint": hook,
        "target": "French (langid 'fr')",
        "unit": unit,
        "features": [vars(h) for h in hits],
        "typical_per_unit": [float(typical[f]) / unit for f in features],
        "n_prompts": len(OPENINGS[: args.n_prompts]),
        "rows": [r.to_dict() for r in rows],
    }


def run_concept(args) -> dict:
    model, tokenizer = load_model("smollm2-135m")
    sae = load_sae("smollm2-135m", hookpoint="resid_post.15")
    hook = sae.cfg.hookpoint
    hits = contrastive(model, tokenizer, sae, list(POSITIVE), list(NEGATIVE), top=40, by="rate")
    quiet = [h for h in hits if h.rate_neg <= 0.02 and h.rate_pos > 0][: args.concept_features]
    features = [h.feature for h in quiet]
    typical = typical_on(model, tokenizer, sae, hook, list(POSITIVE), features)

    def about_the_sea(text: str) -> bool:
        return SEA_WORDS.search(text) is not None

    unit = steering_unit(model, tokenizer, hook)
    rows = sweep(
        model,
        tokenizer,
        INSTRUCTIONS[: args.n_prompts],
        sae,
        features,
        args.alphas,
        about_the_sea,
        max_new_tokens=args.max_new_tokens,
        chat=True,
        relative=True,
        unit=unit,
    )
    return {
        "model": "smollm2-135m",
        "hookpoint": hook,
        "target": "the sea (keyword rate)",
        "unit": unit,
        "features": [vars(h) for h in quiet],
        "typical_per_unit": [float(typical[f]) / unit for f in features],
        "n_prompts": len(INSTRUCTIONS[: args.n_prompts]),
        "rows": [r.to_dict() for r in rows],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        alphas = [r["alpha"] for r in res["rows"]]
        ax.plot(alphas, [r["rate"] for r in res["rows"]], "o-", color="tab:blue")
        ax.set_xlabel("alpha (x the residual's typical size)")
        ax.set_ylabel(f"rate: {res['target']}", color="tab:blue")
        ax.set_ylim(0, 1)
        twin = ax.twinx()
        twin.plot(alphas, [r["perplexity"] for r in res["rows"]], "s--", color="tab:red")
        twin.set_ylabel("perplexity under the unsteered model", color="tab:red")
        twin.set_yscale("log")
        feats = ", ".join(f"#{f['feature']}" for f in res["features"])
        ax.set_title(
            f"{name}: {res['model']} {res['hookpoint']}\nfeatures {feats}, {res['n_prompts']} prompts", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["language", "concept", "both"], default="both")
    parser.add_argument(
        "--alphas",
        default="0,0.15,0.3,0.6,0.9,1.2",
        help="comma-separated relative strengths (x the residual's typical size)",
    )
    parser.add_argument(
        "--language-alphas",
        default="0,0.04,0.08,0.12,0.16,0.24",
        help="alphas of the language sweep (each of the 10 features)",
    )
    parser.add_argument("--n-prompts", type=int, default=50)
    parser.add_argument("--language-features", type=int, default=10, help="French features steered together")
    parser.add_argument("--concept-features", type=int, default=1, help="concept features steered together")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(RESULTS / "steer_effect.json"))
    args = parser.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    todo = ["language", "concept"] if args.experiment == "both" else [args.experiment]
    for name in todo:
        t0 = time.perf_counter()
        results[name] = (run_language if name == "language" else run_concept)(args)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        res = results[name]
        print(
            f"\n{name}: {res['model']} {res['hookpoint']}, features {[f['feature'] for f in res['features']]}, "
            f"{res['n_prompts']} prompts, target {res['target']}"
        )
        print(f"{'alpha':>6} {'rate':>6} {'perplexity':>11}  example")
        for r in res["rows"]:
            example = r["examples"][0].replace("\n", " ")[:70] if r["examples"] else ""
            print(f"{r['alpha']:>6g} {r['rate']:>6.0%} {r['perplexity']:>11.1f}  {example}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results, ensure_ascii=False)
    plot({k: results[k] for k in ("language", "concept") if k in results}, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
