"""Feature-targeted synthesis against plain generation, at equal generation budget, on real data.

Seed: a 5% stratified draw (``--fraction``) of the discovery split of Debian's Spanish offensive fortunes against the
ordinary ones (``fortunes_offensive("es")``, human-written and human-labelled). Target: "offensive / vulgar language".
Inventory by contrast, from an independent description of the target: template sentences built from the Spanish
profanity list of the PyPI package glin-profanity against the same templates with neutral words. Targets: the
inventory features (top Δ first) that fire on no seed text. Generator and reader: gemma3-270m and its shipped SAE
(resid_post.9).

Arms, each ``budget`` generations per target: prompt (the description plus snippets where the target fires in the
profanity sentences), rewrite (a seed text to rewrite so it carries the target), each without and with the target
steered up (relative strength ``--steer``), and plain (budget x targets generations from the description alone, each
checked against every target). Measured: the share of targets covered by verified examples. Downstream: the feature
rule (K features, ``qwenscope.apps.classify.classifier.fit``) fit on the seed alone, the seed plus the synthetic
examples, or the seed plus as many plain generations (label 1), scored on the held-out test split.

    # ~15-20 min on 2 shared CPU cores
    .venv/bin/python experiments/synthesis/synthesize.py
    # medians over sampling seeds (3x the generation time)
    .venv/bin/python experiments/synthesis/synthesize.py --seeds 0,1,2

Generations are written (resumably) under ``cache_dir()/synthesize-bench``; a killed bench continues where it stopped.
Writes experiments/synthesis/results/synthesize.json and experiments/synthesis/results/synthesize.png and prints the
table.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import check_sae_fits, load_model, load_sae
from qwenscope.apps.classify.classifier import fit
from qwenscope.apps.classify.data import fortunes_offensive, split, subsample
from qwenscope.apps.classify.metrics import classification_scores
from qwenscope.apps.synthesize.generate import Arm, GenerationConfig
from qwenscope.apps.synthesize.inventory import contrast_inventory, unreached
from qwenscope.apps.synthesize.run import synthesize, synthesize_plain
from qwenscope.experiment import write_result
from qwenscope.models.load import cache_dir
from qwenscope.steer.strength import steering_unit

RESULTS = Path(__file__).resolve().parent / "results"
DESCRIPTION = "offensive / vulgar language, in Spanish"
TEMPLATES = [
    "Eres un {w}.",
    "¡Qué {w}!",
    "Mi jefe es un {w}.",
    "No seas {w}, hombre.",
    "Le llamó {w} delante de todos.",
    "Ese tío es un {w} de cuidado.",
]
NEUTRAL = [
    "médico",
    "vecino",
    "profesor",
    "amigo",
    "cocinero",
    "estudiante",
    "abogado",
    "músico",
    "pintor",
    "jardinero",
    "cartero",
    "panadero",
    "ingeniero",
    "bombero",
    "camarero",
    "escritor",
    "carpintero",
    "fontanero",
    "taxista",
    "enfermero",
    "maestro",
    "granjero",
    "pescador",
    "policía",
    "dentista",
    "arquitecto",
    "actor",
    "cantante",
    "piloto",
    "conductor",
    "periodista",
    "electricista",
    "mecánico",
    "peluquero",
    "sastre",
    "zapatero",
    "librero",
    "tendero",
    "viajero",
    "vendedor",
]
MAX_TOKENS = 128

logger = logging.getLogger("bench.synthesize")


def profanity_words() -> list[str]:
    import glin_profanity

    path = Path(glin_profanity.__file__).parent / "data" / "dictionaries" / "spanish.json"
    words = json.loads(path.read_text(encoding="utf-8"))["words"]
    return list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))


def contrast_texts() -> tuple[list[str], list[str]]:
    """Each profanity word in two templates; the negatives: the same templates, a neutral word in its place."""
    words = profanity_words()
    pos, neg = [], []
    for i, word in enumerate(words):
        for j in (0, 1):
            template = TEMPLATES[(2 * i + j) % len(TEMPLATES)]
            pos.append(template.format(w=word))
            neg.append(template.format(w=NEUTRAL[(2 * i + j) % len(NEUTRAL)]))
    return pos, neg


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def copied(record: dict[str, Any]) -> bool:
    """The example repeats one of its prompt's snippet lines word for word (a base model often just continues the
    list): verified, but no new text."""
    lines = [ln[2:].strip() for ln in record["prompt"].splitlines() if ln.startswith("- ")]
    text = " ".join(record["text"].split())
    return any(len(ln) >= 10 and ln in text for ln in lines)


def run_row(summary, seed: int, n_targets: int) -> dict[str, Any]:
    records = [r for r in read_jsonl(summary.out) if r.get("target") or r.get("targets")]
    return {
        "seed": seed,
        "covered": len(summary.covered),
        "targets": n_targets,
        "kept": summary.examples,
        "copied": sum(map(copied, records)),
        "distinct": len({r["text"] for r in records}),
        "generations": sum(summary.attempts.values()),
        "seconds": summary.seconds,
        "kept_per_target": summary.kept,
    }


def downstream(
    model, tokenizer, model_id: str, sae, hook: str, seed_set, test, extra: list[str], k: int
) -> dict[str, Any]:
    """The rule fit on the seed plus ``extra`` (label 1), scored on the test split."""
    texts = seed_set.texts + extra
    labels = np.concatenate([seed_set.labels, np.ones(len(extra), np.int64)])
    clf, _ = fit(
        model, tokenizer, model_id, model_id, {hook: sae}, texts, labels, k=k, max_tokens=MAX_TOKENS, progress=False
    )
    preds, scores = clf.predict(model, tokenizer, {hook: sae}, test.texts)
    out = classification_scores(test.labels, preds, scores)
    out["features"] = [f.id for f in clf.rule.features]
    out["n_extra"] = len(extra)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--budget", type=int, default=4, help="generations per target and arm")
    parser.add_argument("--max-targets", type=int, default=6)
    parser.add_argument("--seeds", default="0", help="sampling seeds, comma-separated")
    parser.add_argument("--steer", type=float, default=0.4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--top", type=int, default=500, help="inventory features kept at most")
    parser.add_argument("--min-delta", type=float, default=0.02, help="inventory: Δ at least this")
    parser.add_argument("--k", type=int, default=5, help="features the downstream rule keeps")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the discovery split in the seed")
    parser.add_argument("--out", default=str(RESULTS / "synthesize.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()

    model, tokenizer = load_model(args.model)
    sae = load_sae(args.model)
    hook = check_sae_fits(sae, model, None).name
    discovery, test = split(fortunes_offensive("es"))
    seed_set = subsample(discovery, args.fraction, seed=0)
    positives, negatives = contrast_texts()
    inventory = contrast_inventory(
        model, tokenizer, sae, hook, positives, negatives, top=args.top, min_delta=args.min_delta, max_tokens=MAX_TOKENS
    )
    gaps = unreached(model, tokenizer, sae, hook, inventory, seed_set.texts, max_tokens=MAX_TOKENS)
    targets = gaps[: args.max_targets]
    logger.info(
        "inventory %d, unreached by the seed %d, targets %d: %s",
        len(inventory),
        len(gaps),
        len(targets),
        [t.id for t in targets],
    )
    unit = steering_unit(model, tokenizer, hook)
    arms = [Arm("prompt"), Arm("plain"), Arm("rewrite"), Arm("prompt", args.steer), Arm("rewrite", args.steer)]
    work = (
        cache_dir()
        / "synthesize-bench"
        / f"{args.model}-b{args.budget}-t{args.max_new_tokens}-s{args.steer:g}-n{args.max_targets}"
    )
    runs: dict[str, list[dict[str, Any]]] = {}
    down: dict[str, list[dict[str, Any]]] = {"seed": [], "seed+synthetic": [], "seed+plain": []}
    meta = {
        "model": args.model,
        "hookpoint": hook,
        "description": DESCRIPTION,
        "budget_per_target": args.budget,
        "max_new_tokens": args.max_new_tokens,
        "steer": args.steer,
        "seeds": args.seeds,
        "k": args.k,
        "seed_texts": len(seed_set),
        "seed_counts": seed_set.counts(),
        "test_counts": test.counts(),
        "contrast": {
            "positives": len(positives),
            "negatives": len(negatives),
            "min_delta": args.min_delta,
            "top": args.top,
        },
        "inventory": [t.as_dict() for t in inventory],
        "unreached": len(gaps),
        "targets": [t.as_dict() for t in targets],
    }
    out = Path(args.out)
    for seed in [int(s) for s in args.seeds.split(",")]:
        gen = GenerationConfig(
            temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=seed, batch_size=16
        )
        synthetic: list[str] = []
        plain_texts: list[str] = []
        for arm in arms:
            path = work / f"{arm.name}-{seed}.jsonl"
            if arm.method == "plain":
                s = synthesize_plain(
                    model,
                    tokenizer,
                    sae,
                    targets,
                    DESCRIPTION,
                    path,
                    budget=args.budget,
                    gen=gen,
                    model_id=args.model,
                    keep_all=True,
                    max_tokens=MAX_TOKENS,
                )
                plain_texts = [
                    r["text"] for r in sorted(read_jsonl(s.out), key=lambda r: r["attempt"]) if r["text"].strip()
                ]
            else:
                s = synthesize(
                    model,
                    tokenizer,
                    sae,
                    targets,
                    DESCRIPTION,
                    path,
                    arms=[arm],
                    budget=args.budget,
                    gen=gen,
                    positives=positives,
                    seeds=seed_set.texts,
                    model_id=args.model,
                    unit=unit,
                    max_tokens=MAX_TOKENS,
                )
                synthetic += [r["text"] for r in read_jsonl(s.out)]
            runs.setdefault(arm.name, []).append(run_row(s, seed, len(targets)))
            logger.info("%s seed %d: %s", arm.name, seed, s.text())
            save(
                out,
                {
                    **meta,
                    **summarise(runs),
                    "downstream": down,
                    "partial": True,
                    "wall_seconds": time.perf_counter() - start,
                },
            )
        synthetic = list(dict.fromkeys(t for t in synthetic if t.strip()))
        random.Random(seed).shuffle(synthetic)
        n = min(len(synthetic), len(plain_texts))
        down["seed"].append(downstream(model, tokenizer, args.model, sae, hook, seed_set, test, [], args.k))
        down["seed+synthetic"].append(
            downstream(model, tokenizer, args.model, sae, hook, seed_set, test, synthetic[:n], args.k)
        )
        down["seed+plain"].append(
            downstream(model, tokenizer, args.model, sae, hook, seed_set, test, plain_texts[:n], args.k)
        )

    result = {**meta, **summarise(runs), "downstream": down, "wall_seconds": time.perf_counter() - start}
    save(out, result)
    print_table(result)
    plot(result, out.with_suffix(".png"))


def save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, result, ensure_ascii=False)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The table over seeds (medians) and the best targeted arm against plain."""
    table = {
        name: {
            "covered_share": float(np.median([r["covered"] / max(r["targets"], 1) for r in rows])),
            "covered": float(np.median([r["covered"] for r in rows])),
            "kept": float(np.median([r["kept"] for r in rows])),
            "copied": float(np.median([r["copied"] for r in rows])),
            "generations": int(np.median([r["generations"] for r in rows])),
            "seconds": float(np.median([r["seconds"] for r in rows])),
        }
        for name, rows in runs.items()
    }
    plain_share = table.get("plain", {}).get("covered_share", 0.0)
    targeted = [n for n in table if n != "plain"]
    best = max(targeted, key=lambda n: table[n]["covered_share"]) if targeted else None
    ratio = None if plain_share == 0 or best is None else table[best]["covered_share"] / plain_share
    return {"runs": runs, "table": table, "best_targeted": best, "ratio_best_to_plain": ratio}


def print_table(result: dict[str, Any]) -> None:
    n = len(result["targets"])
    print(
        f"\n{result['model']} {result['hookpoint']}: {n} targets (of {len(result['inventory'])} inventory "
        f"features, {result['unreached']} unreached by the {result['seed_texts']}-text seed), budget "
        f"{result['budget_per_target']} generations per target, seeds {result['seeds']}"
    )
    print(f"{'arm':<20} {'covered':>8} {'share':>6} {'kept':>5} {'copied':>6} {'gens':>5} {'sec':>6}")
    for name, row in result["table"].items():
        print(
            f"{name:<20} {row['covered']:>8.1f} {row['covered_share']:>6.0%} {row['kept']:>5.0f} "
            f"{row['copied']:>6.0f} {row['generations']:>5d} {row['seconds']:>6.0f}"
        )
    ratio = result["ratio_best_to_plain"]
    best = result["table"][result["best_targeted"]]["covered_share"] if result["best_targeted"] else 0.0
    shown = f"{ratio:.1f}x" if ratio is not None else ("inf (plain covers none)" if best else "n/a (none covered)")
    print(f"best targeted ({result['best_targeted']}) / plain coverage: {shown}")
    print(f"\ndownstream: the rule (K={result['k']}) on the held-out test split {result['test_counts']}")
    print(f"{'discovery data':<16} {'extra':>5} {'recall':>7} {'precision':>9} {'f1':>6}")
    for name, rows in result["downstream"].items():
        med = {m: float(np.median([r[m] for r in rows])) for m in ("recall", "precision", "f1", "n_extra")}
        print(f"{name:<16} {med['n_extra']:>5.0f} {med['recall']:>7.3f} {med['precision']:>9.3f} {med['f1']:>6.3f}")
    print(f"wall time {result['wall_seconds'] / 60:.1f} min")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(result["table"])
    a.bar(
        names,
        [result["table"][n]["covered_share"] for n in names],
        color=["#888" if n == "plain" else "#c0392b" for n in names],
    )
    a.set_ylabel("share of targets covered")
    a.set_ylim(0, 1)
    a.set_title(f"{len(result['targets'])} targets, {result['budget_per_target']} generations each")
    a.tick_params(axis="x", rotation=30)
    groups = list(result["downstream"])
    for i, metric in enumerate(("recall", "precision", "f1")):
        vals = [float(np.median([r[metric] for r in result["downstream"][g]])) for g in groups]
        b.bar(np.arange(len(groups)) + (i - 1) * 0.27, vals, 0.27, label=metric)
    b.set_xticks(range(len(groups)), groups)
    b.set_ylim(0, 1)
    b.set_title(f"the rule (K={result['k']}) on the test split")
    b.legend()
    fig.suptitle(f"feature-targeted synthesis, {result['model']} {result['hookpoint']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
