r"""Does the effect-ranked feature steer better than the contrastive one? Six concepts, 50 held-out prompts each.

For each concept (``experiments/steering_concepts/concepts.py``: its own positive and negative texts, a scorer, held-out
prompts):

* contrastive choice: the rule the demo used before effect ranking: of the contrastive hits by firing-rate difference,
  the strongest that stays silent (<= 2% of tokens) on the negative texts;
* effect choice: the first of ``effect_ranked`` (the first 16 contrastive hits re-ranked by the steering probe);
* both steered alone (add mode, every position) at each relative strength of the sweep (fractions of the residual's
  typical size, ``qwenscope.steer.strength``) on the concept's 50 prompts, greedy, 32 new tokens; alpha 0 is the
  unsteered baseline. Rate = share of generations the scorer accepts; perplexity = of the generated tokens under
  the unsteered model.

The best strength of a choice is the one with the highest rate among those whose perplexity stays at or under
``--cap`` (default 10, about 4x the unsteered perplexity here), lowest strength on ties; so a choice cannot win by
producing garbage. The search texts and the evaluation prompts share nothing, and nothing here was tuned on the
evaluation prompts.

    # all six (~1-2 h on 2 shared cores)
    .venv/bin/python experiments/steering_concepts/steer_concepts.py
    .venv/bin/python experiments/steering_concepts/steer_concepts.py --concepts sea,music --alphas 0,0.3,0.6
    # a new SAE
    .venv/bin/python experiments/steering_concepts/steer_concepts.py --model smollm2-135m --sae PATH --hookpoint \
        resid_post.15

English concepts run on smollm2-135m ``resid_post.15`` and French on gemma3-270m ``resid_post.9`` unless
--model / --sae / --hookpoint say otherwise (then every chosen concept runs there). Writes
experiments/steering_concepts/results/steer_concepts.json (merged with earlier runs, keyed by concept) and
experiments/steering_concepts/results/steer_concepts.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from qwenscope import load_sae
from qwenscope.experiment import load_script, set_threads, write_result
from qwenscope.features.search import contrastive, effect_ranked
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.models.load import load_model
from qwenscope.steer.strength import steering_unit
from qwenscope.steer.sweep import sweep_choices

RESULTS = Path(__file__).parent / "results"
_concepts = load_script(Path(__file__).with_name("concepts.py"))  # the sibling (experiments/* are no packages)
CONCEPTS, PROMPTS, Concept = _concepts.CONCEPTS, _concepts.PROMPTS, _concepts.Concept
DEFAULT_SETUP = {"french": ("gemma3-270m", "resid_post.9")}
ENGLISH_SETUP = ("smollm2-135m", "resid_post.15")


def contrastive_choice(hits: list[Any]) -> Any:
    """The hit with the largest rate difference among those silent (<= 2% of tokens) on the negatives, else overall."""
    fired = [h for h in hits if h.rate_pos > 0]
    return max([h for h in fired if h.rate_neg <= 0.02] or fired, key=lambda h: h.rate_diff)


def best_row(rows: list[dict[str, Any]], cap: float) -> dict[str, Any]:
    """The row with the highest rate among those at or under the perplexity cap (lowest alpha on ties)."""
    ok = [r for r in rows if r["perplexity"] <= cap] or [min(rows, key=lambda r: r["alpha"])]
    return max(ok, key=lambda r: (r["rate"], -r["alpha"]))


def run_concept(concept: Concept, model, tokenizer, sae, hook: str, args) -> dict[str, Any]:
    unit = steering_unit(model, tokenizer, hook)
    t0 = time.perf_counter()
    hits = contrastive(model, tokenizer, sae, concept.positive, concept.negative, top=40, by="rate", hookpoint=hook)
    t_contrastive = time.perf_counter() - t0
    picked = contrastive_choice(hits)
    t0 = time.perf_counter()
    ranked = effect_ranked(
        model,
        tokenizer,
        sae,
        concept.positive,
        concept.negative,
        top=args.candidates,
        candidates=args.candidates,
        hookpoint=hook,
        unit=unit,
    )
    t_effect = time.perf_counter() - t0
    choices = {"contrastive": picked.feature, "effect": ranked[0].feature}
    features = sorted(set(choices.values()), key=list(choices.values()).index)
    kind = concept.prompts
    prompts = list(PROMPTS[kind][: args.n_prompts])
    chat = kind == "instructions" and bool(getattr(tokenizer, "chat_template", None))
    rows = sweep_choices(
        model,
        tokenizer,
        prompts,
        sae,
        [[f] for f in features],
        args.alphas,
        concept.score,
        max_new_tokens=args.max_new_tokens,
        chat=chat,
        relative=True,
        unit=unit,
        hookpoint=hook,
        batch_size=args.batch_size,
    )
    by_feature = {f: [r.to_dict() for r in rr] for f, rr in zip(features, rows)}
    profile = {h.feature: h for h in hits}
    out: dict[str, Any] = {
        "model": args.model_of[concept.name],
        "hookpoint": hook,
        "sae": args.sae_of[concept.name],
        "target": concept.target,
        "prompts": kind,
        "chat": chat,
        "n_prompts": len(prompts),
        "unit": unit,
        "seconds": {"contrastive": round(t_contrastive, 1), "effect_ranked": round(t_effect, 1)},
        "effect_ranking": [vars(h) for h in ranked],
        "contrastive_top": [vars(h) for h in hits[: args.candidates]],
    }
    base = by_feature[features[0]][0] if args.alphas[0] == 0 else None
    for name, f in choices.items():
        sweep = by_feature[f]
        best = best_row(sweep, args.cap)
        hit = profile.get(f)
        typical = hit.mean_pos / hit.rate_pos if hit is not None and hit.rate_pos > 0 else None
        out[name] = {
            "feature": f,
            "rows": sweep,
            "best": best,
            "typical_on_positives_per_unit": typical / unit if typical else None,
        }
    if base is not None:
        out["unsteered"] = {"rate": base["rate"], "perplexity": base["perplexity"]}
    return out


def summary(results: dict[str, Any], cap: float) -> dict[str, Any]:
    rises = {"contrastive": [], "effect": []}
    ppl = {"contrastive": [], "effect": []}
    alphas = []
    for res in results.values():
        if "unsteered" not in res:
            continue
        for name in rises:
            best = best_row(res[name]["rows"], cap)
            rises[name].append(best["rate"] - res["unsteered"]["rate"])
            ppl[name].append(best["perplexity"])
        alphas.append(best_row(res["effect"]["rows"], cap)["alpha"])
    if not alphas:
        return {}
    mean_c, mean_e = statistics.mean(rises["contrastive"]), statistics.mean(rises["effect"])
    return {
        "cap": cap,
        "concepts": len(alphas),
        "mean_rise_contrastive": mean_c,
        "mean_rise_effect": mean_e,
        "rise_ratio": mean_e / mean_c if mean_c > 0 else None,
        "mean_perplexity_contrastive": statistics.mean(ppl["contrastive"]),
        "mean_perplexity_effect": statistics.mean(ppl["effect"]),
        "suggested_alpha": statistics.median(alphas),
    }


def plot(results: dict[str, Any], cap: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        res = results[name]
        twin = ax.twinx()
        for choice, color in (("contrastive", "tab:gray"), ("effect", "tab:blue")):
            sweep = res[choice]["rows"]
            alphas = [r["alpha"] for r in sweep]
            ax.plot(alphas, [r["rate"] for r in sweep], "o-", color=color, label=f"{choice} #{res[choice]['feature']}")
            twin.plot(alphas, [r["perplexity"] for r in sweep], "s--", color=color, alpha=0.5)
        twin.axhline(cap, color="tab:red", lw=0.8, ls=":")
        twin.set_yscale("log")
        twin.set_ylabel("perplexity (dashed; cap dotted)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("relative strength (x residual's typical size)")
        ax.set_ylabel("rate (solid)")
        ax.set_title(f"{name}: {res['model']} {res['hookpoint']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(results: dict[str, Any], cap: float) -> None:
    print(f"\nbest strength = highest rate with perplexity <= {cap:g}")
    print(f"{'concept':<8} {'model':<13} {'unsteered':>10} | {'contrastive':>22} | {'effect-ranked':>22}")
    for name, res in results.items():
        base = res.get("unsteered", {"rate": float("nan"), "perplexity": float("nan")})
        cells = []
        for choice in ("contrastive", "effect"):
            b = best_row(res[choice]["rows"], cap)
            f = res[choice]["feature"]
            cells.append(f"#{f:<5} {b['rate']:>4.0%} @{b['alpha']:<4g} ppl {b['perplexity']:>4.1f}")
        print(
            f"{name:<8} {res['model']:<13} {base['rate']:>4.0%} {base['perplexity']:>4.1f} | {cells[0]:>22} | "
            f"{cells[1]:>22}"
        )


def load(out: Path) -> dict[str, Any]:
    """The concepts' results in ``out`` (without the summary and the environment block)."""
    results = json.loads(out.read_text()) if out.exists() else {}
    results.pop("summary", None)
    results.pop("environment", None)
    return results


def save(out: Path, name: str, result: dict[str, Any], cap: float) -> None:
    """Merge one concept's result into ``out`` (re-read first: runs of other concepts may write it too)."""
    results = {**load(out), name: result}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    write_result(tmp, {**results, "summary": summary(results, cap)}, ensure_ascii=False)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", default=",".join(CONCEPTS), help=f"comma-separated: {', '.join(CONCEPTS)}")
    parser.add_argument("--model", default=None, help="run every chosen concept on this model")
    parser.add_argument("--sae", default=None, help="SAE (folder, file or hub id); default: the model's own")
    parser.add_argument("--hookpoint", default=None, help="hookpoint of the SAE; default: the one it records")
    parser.add_argument("--alphas", default="0,0.2,0.35,0.5,0.65,0.8", help="relative strengths; 0 = unsteered")
    parser.add_argument("--n-prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=16, help="contrastive candidates the probe re-ranks")
    parser.add_argument("--cap", type=float, default=10.0, help="perplexity cap of the best strength")
    parser.add_argument("--batch-size", type=int, default=100, help="generations per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    parser.add_argument("--out", default=str(RESULTS / "steer_concepts.json"))
    args = parser.parse_args()
    args.alphas = sorted(float(a) for a in args.alphas.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(args.threads)
    names = [c.strip() for c in args.concepts.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown:
        parser.error(f"unknown concepts {unknown}; pick from {', '.join(CONCEPTS)}")
    setup = {n: (args.model, args.hookpoint) if args.model else DEFAULT_SETUP.get(n, ENGLISH_SETUP) for n in names}
    args.model_of = {n: s[0] for n, s in setup.items()}
    args.sae_of = {n: args.sae or s[0] for n, s in setup.items()}
    out = Path(args.out)
    for model_name in dict.fromkeys(args.model_of.values()):
        model, tokenizer = load_model(model_name)
        todo = [n for n in names if args.model_of[n] == model_name]
        sae = load_sae(args.sae_of[todo[0]], hookpoint=setup[todo[0]][1])
        hook = check_sae_fits(sae, model, setup[todo[0]][1]).name
        for name in todo:
            t0 = time.perf_counter()
            result = run_concept(CONCEPTS[name], model, tokenizer, sae, hook, args)
            result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
            save(out, name, result, args.cap)
            print_table({name: result}, args.cap)
    results = load(out)
    total = summary(results, args.cap)
    plot(results, args.cap, out.with_suffix(".png"))
    print_table(results, args.cap)
    print(json.dumps(total, indent=1))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
