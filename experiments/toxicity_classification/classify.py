"""Toxicity classification on real labels: the report's feature rule against four baselines.

Data: Debian's offensive fortunes against the ordinary ones, Spanish and Italian (human-written, human-labelled;
``fortunes_offensive``), balanced, split deterministically into discovery and test parts (the test part is never
seen while choosing features, K or baselines' settings). Models: gemma3-270m (multilingual, its shipped SAE at
resid_post.9) and smollm2-135m (its three shipped SAEs; the rule picks the hookpoint by top1-diff).

For each model and language: the feature rule at K = 1..10 (K chosen on discovery marked), the SAE-feature probe, the
activation probe, difference-in-means and TF-IDF, with bootstrap intervals; a length-only probe (how far text length
alone gets: offensive fortunes differ in length) and "always toxic" (F1 2/3 on balanced data: the floor); the
data-efficiency curve (1/10/50/100% of discovery, median of 5 draws); and cross-lingual transfer (es -> it, it -> es).

    # both models; ~10 min on 2 CPU cores (pooled features cached)
    .venv/bin/python experiments/toxicity_classification/classify.py
    .venv/bin/python experiments/toxicity_classification/classify.py --models gemma3-270m

Writes experiments/toxicity_classification/results/classify.json,
experiments/toxicity_classification/results/classify.png and one HTML report per model and language.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwenscope import load_model, load_sae
from qwenscope.apps.classify.analysis import RULE, Part, compare, efficiency, transfer
from qwenscope.apps.classify.data import fortunes_offensive, split
from qwenscope.apps.classify.metrics import classification_scores
from qwenscope.apps.classify.pooled import pool_texts
from qwenscope.apps.classify.report import format_table, write_report
from qwenscope.experiment import write_result
from qwenscope.sae.load import embedded_saes

RESULTS = Path(__file__).resolve().parent / "results"
LANGS = ("es", "it")


def parts(model, tokenizer, saes: dict[str, Any], lang: str) -> tuple[Part, Part]:
    data = fortunes_offensive(lang)
    discovery, test = split(data)
    texts = discovery.texts + test.texts
    hooks = list(saes)
    pooled = dict(zip(hooks, pool_texts(model, tokenizer, texts, [saes[h] for h in hooks], hooks)))
    whole = Part(texts, np.concatenate([discovery.labels, test.labels]), pooled)
    n = len(discovery.texts)
    return whole.rows(range(n)), whole.rows(range(n, len(texts)))


def length_row(train: Part, test: Part, hook: str) -> dict[str, Any]:
    """A logistic regression on the number of tokens alone: what length gives away."""
    from sklearn.linear_model import LogisticRegression

    x_tr = np.log1p(train.pooled[hook].n_tokens)[:, None]
    x_te = np.log1p(test.pooled[hook].n_tokens)[:, None]
    clf = LogisticRegression(class_weight="balanced").fit(x_tr, train.labels)
    score = clf.decision_function(x_te)
    return {
        "method": "length only",
        "hookpoint": "-",
        **classification_scores(test.labels, (score > 0).astype(int), score),
    }


def constant_row(test: Part) -> dict[str, Any]:
    """Everything toxic: on balanced data F1 = 2/3 with no information at all, the floor every method must clear."""
    pred = np.ones(len(test.labels), dtype=int)
    return {"method": "always toxic", "hookpoint": "-", **classification_scores(test.labels, pred)}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["comparison"]
    rule = [r for r in rows if r["method"] == RULE]
    chosen = next(r for r in rule if r["chosen"])
    best_k = max(rule, key=lambda r: r["f1"])
    base = [r for r in rows if r["method"] not in (RULE, "length only", "always toxic")]
    best_base = max(base, key=lambda r: r["f1"])
    eff = result["efficiency"]["methods"][RULE]
    at = dict(zip(result["efficiency"]["fractions"], eff))
    return {
        "rule_f1": chosen["f1"],
        "rule_k": chosen["k"],
        "best_k_f1": best_k["f1"],
        "best_k": best_k["k"],
        "best_baseline": best_base["method"],
        "best_baseline_f1": best_base["f1"],
        "gap": best_base["f1"] - chosen["f1"],
        "f1_at_10pct_over_full": at.get(0.1, float("nan")) / at[1.0] if at.get(1.0) else None,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [(m, lang) for m in results["models"] for lang in LANGS if lang in results["models"][m]]
    fig = Figure(figsize=(4.2 * len(runs), 7.2))
    FigureCanvasAgg(fig)
    for col, (m, lang) in enumerate(runs):
        res = results["models"][m][lang]
        ax = fig.add_subplot(2, len(runs), col + 1)
        curve = res["k_curve"]
        lo = [c[0] for c in curve["f1_ci"]]
        hi = [c[1] for c in curve["f1_ci"]]
        ax.fill_between(curve["k"], lo, hi, alpha=0.2)
        ax.plot(curve["k"], curve["f1"], "o-", label="feature rule")
        others = [r for r in res["comparison"] if r["method"] != RULE]
        for i, r in enumerate(others):
            ax.axhline(
                r["f1"],
                ls=":" if r["method"] in ("length only", "always toxic") else "--",
                lw=1.2,
                label=r["method"],
                color=f"C{i + 1}",
            )
        ax.set(title=f"{m}, {lang}: F1 vs K", xlabel="K features", ylabel="test F1", ylim=(0, 1))
        ax.legend(fontsize=7)
        ax = fig.add_subplot(2, len(runs), len(runs) + col + 1)
        eff = res["efficiency"]
        for name, f1s in eff["methods"].items():
            ax.plot(eff["fractions"], f1s, "o-", label=name)
        ax.set(
            xscale="log",
            title=f"{m}, {lang}: data efficiency",
            xlabel="share of discovery data",
            ylabel="test F1 (median of 5)",
            ylim=(0, 1),
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_model(model_id: str, args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer = load_model(model_id, dtype=torch.float32)
    saes = {h: load_sae(model_id, hookpoint=h) for h in embedded_saes()[model_id]}
    out: dict[str, Any] = {"hookpoints": list(saes)}
    split_parts = {}
    for lang in LANGS:
        t0 = time.perf_counter()
        train, test = parts(model, tokenizer, saes, lang)
        split_parts[lang] = (train, test)
        res = compare(train, test, seed=args.seed, n_boot=args.boot)
        res["comparison"] += [length_row(train, test, res["hookpoint"]), constant_row(test)]
        res["efficiency"] = efficiency(train, test, seeds=tuple(range(args.draws)))
        res["summary"] = summary(res)
        res["seconds"] = time.perf_counter() - t0
        out[lang] = res
        print(
            f"\n{model_id}, {lang}: discovery {len(train.texts)}, test {len(test.texts)}, hookpoint {res['hookpoint']}"
        )
        print(format_table(res["comparison"]))
        write_report(
            {"title": f"Offensive fortunes ({lang}), {model_id}", "meta": {"model": model_id, "lang": lang}, **res},
            RESULTS / f"classify-{model_id}-{lang}.html",
        )
    rows = []
    for a, b in (("es", "it"), ("it", "es")):
        rows += transfer(split_parts[a][0], split_parts[b][1], a, b, seed=args.seed, n_boot=args.boot)
    out["transfer"] = rows
    print(f"\n{model_id}: cross-lingual transfer")
    print(format_table([{**r, "method": f"{r['train']}->{r['test']} {r['method']}"} for r in rows]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--draws", type=int, default=5, help="random draws per share of discovery data")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the plot from experiments/toxicity_classification/results/classify.json",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    RESULTS.mkdir(exist_ok=True)
    if args.replot:
        plot(json.loads((RESULTS / "classify.json").read_text()), RESULTS / "classify.png")
        return
    results: dict[str, Any] = {"models": {}}
    t0 = time.perf_counter()
    for model_id in args.models.split(","):
        results["models"][model_id] = run_model(model_id, args)
    results["seconds"] = time.perf_counter() - t0
    write_result(RESULTS / "classify.json", results)
    plot(results, RESULTS / "classify.png")
    print("\nsummary (feature rule at the K chosen on discovery against the best baseline):")
    for m, res in results["models"].items():
        for lang in LANGS:
            s = res[lang]["summary"]
            print(
                f"  {m:<13} {lang}: rule F1 {s['rule_f1']:.3f} (K={s['rule_k']}), best K {s['best_k_f1']:.3f} "
                f"(K={s['best_k']}), best baseline {s['best_baseline']} {s['best_baseline_f1']:.3f}, gap "
                f"{s['gap']:+.3f}; F1 at 10% / 100% = {s['f1_at_10pct_over_full']:.3f}"
            )


if __name__ == "__main__":
    main()
