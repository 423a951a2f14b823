"""Does the feature proxy behave on real benchmarks? The acceptance checks of the benchmark analysis.

For every shipped SAE (smollm2-135m at resid_post.3, .15 and .25; gemma3-270m at resid_post.9), each pooling asked
for (default: last token, the report's F(x)), with the density filter on (MAX_DENSITY, 10%) and off (1.0), on the
four bundled benchmarks (HumanEval 164, GSM8K 1,319, GPQA-Diamond 198, AIME 2025 30; their default templates):

* halves: the symmetric overlap of two seeded random halves of GSM8K, against GSM8K with HumanEval and with
  GPQA-Diamond (expected: the halves overlap more);
* duplicates: R_hat of GSM8K against GSM8K with every item twice (expected: higher);
* coverage: every benchmark's exact coverage curve c_n rises monotonically and flattens (the last tenth of the items
  adds less coverage than the first tenth);
* compression: the greedy subset reaching 90% of each benchmark's footprint against the items random orders need
  (median of 200; goal: greedy needs half as many or fewer);
* the footprints, the overlap matrix and R_hat of every benchmark and natural subset (GPQA by domain, GSM8K by solution
  length, AIME I/II), which ``experiments/benchmark_redundancy/benchmarks_rho.py`` pairs with the performance redundancy
  R.

One early-stopped pass per benchmark and model reads every hookpoint; the feature sets are cached
(``cache_dir()/benchmarks``), so a rerun (or the filter off after on) costs no forward.

    # both models, last-token pooling
    .venv/bin/python experiments/benchmark_redundancy/benchmarks.py
    # a quick run on the first 40 items of each
    .venv/bin/python experiments/benchmark_redundancy/benchmarks.py --pooling last,max --limit 40

Writes experiments/benchmark_redundancy/results/benchmarks.json and
experiments/benchmark_redundancy/results/benchmarks.png (coverage curves, greedy against random).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from qwenscope import load_model, load_sae
from qwenscope.apps.benchmarks.compress import greedy_cover, random_needed
from qwenscope.apps.benchmarks.data import list_benchmarks, load_benchmark, subsets
from qwenscope.apps.benchmarks.features import FeatureSetConfig, SaeSpec, dense_ids, feature_sets
from qwenscope.apps.benchmarks.measures import coverage_exact, footprint, redundancy, symmetric_overlap
from qwenscope.experiment import write_result
from qwenscope.features.density import MAX_DENSITY

RESULTS = Path(__file__).parent / "results"
SETUPS = {"smollm2-135m": ["resid_post.3", "resid_post.15", "resid_post.25"], "gemma3-270m": ["resid_post.9"]}


def without_columns(m: sp.csr_matrix, dropped: list[int]) -> sp.csr_matrix:
    keep = np.ones(m.shape[1], dtype=bool)
    keep[dropped] = False
    out = m.multiply(sp.csr_matrix(keep[None, :])).tocsr().astype(bool)
    out.eliminate_zeros()
    return out


def checks(named: dict[str, sp.csr_matrix], seed: int) -> dict[str, Any]:
    gsm = named["gsm8k"]
    order = np.random.default_rng(seed).permutation(gsm.shape[0])
    a, b = gsm[np.sort(order[: len(order) // 2])], gsm[np.sort(order[len(order) // 2 :])]
    halves = {
        "halves": symmetric_overlap(a, b),
        "gsm8k~humaneval": symmetric_overlap(gsm, named["humaneval"]),
        "gsm8k~gpqa-diamond": symmetric_overlap(gsm, named["gpqa-diamond"]),
    }
    halves["holds"] = halves["halves"] > max(halves["gsm8k~humaneval"], halves["gsm8k~gpqa-diamond"])
    dup = {"gsm8k": redundancy(gsm), "gsm8k_twice": redundancy(sp.vstack([gsm, gsm]).tocsr())}
    dup["holds"] = dup["gsm8k_twice"] > dup["gsm8k"]
    coverage, compression = {}, {}
    for name, m in named.items():
        if "/" in name:
            continue
        c = coverage_exact(m)
        tenth = max(1, len(c) // 10)
        first, last = c[tenth - 1], c[-1] - c[-tenth - 1] if len(c) > tenth else 0.0
        coverage[name] = {
            "monotone": bool(np.all(np.diff(c) >= -1e-12)),
            "first_tenth_gain": float(first),
            "last_tenth_gain": float(last),
            "flattens": bool(last < first),
            "curve": [float(x) for x in c],
        }
        greedy = len(greedy_cover(m, 0.9))
        rand = random_needed(m, 0.9, n_samples=200, seed=seed)
        compression[name] = {
            "items": m.shape[0],
            "greedy": greedy,
            "random_median": float(np.median(rand)),
            "random_p5": float(np.percentile(rand, 5)),
            "random_p95": float(np.percentile(rand, 95)),
            "ratio": greedy / float(np.median(rand)),
            "half_or_fewer": greedy <= 0.5 * float(np.median(rand)),
        }
    tops = [n for n in named if "/" not in n]
    overlap = {f"{x}~{y}": symmetric_overlap(named[x], named[y]) for i, x in enumerate(tops) for y in tops[i + 1 :]}
    return {
        "footprint": {n: int(footprint(m).size) for n, m in named.items()},
        "features_per_item": {n: float(m.getnnz(axis=1).mean()) for n, m in named.items()},
        "r_hat": {n: redundancy(m) for n, m in named.items()},
        "halves": halves,
        "duplicates": dup,
        "coverage": coverage,
        "compression": compression,
        "symmetric_overlap": overlap,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))
    parser.add_argument("--pooling", default="last", help="comma-separated: last, max")
    parser.add_argument("--limit", type=int, help="only the first N items of each benchmark (a quick run)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "benchmarks.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    benches = {name: load_benchmark(name) for name in list_benchmarks()}
    if args.limit:
        benches = {n: b.subset(n, range(min(args.limit, len(b)))) for n, b in benches.items()}
    natural = {k: v for b in benches.values() for k, v in subsets(b).items()}
    index = {n: {item.id: i for i, item in enumerate(b.items)} for n, b in benches.items()}
    results: dict[str, Any] = {"bench": "benchmarks", "limit": args.limit, "seed": args.seed, "runs": {}}
    for model_name in args.models.split(","):
        model, tokenizer = load_model(model_name, device=args.device, dtype=torch.float32)
        hooks = SETUPS[model_name]
        specs = [SaeSpec(load_sae(model_name, hookpoint=h, device=args.device), model_name, h) for h in hooks]
        for pooling in args.pooling.split(","):
            cfg = FeatureSetConfig(pooling=pooling, max_density=1.0, batch_size=args.batch_size)  # type: ignore[arg-type]
            start = time.perf_counter()
            raw = {n: feature_sets(model, tokenizer, b, specs, cfg) for n, b in benches.items()}
            seconds = time.perf_counter() - start
            dense = {h: dense_ids(model, tokenizer, s, h, MAX_DENSITY) for h, s in zip(hooks, specs)}
            for j, hook in enumerate(hooks):
                for filtered in (True, False):
                    named = {n: sets[j].matrix for n, sets in raw.items()}
                    for sub, b in natural.items():
                        parent = sub.split("/")[0]
                        named[sub] = named[parent][[index[parent][i] for i in b.ids]]
                    if filtered:
                        named = {n: without_columns(m, dense[hook]) for n, m in named.items()}
                    key = f"{model_name} {hook} {pooling} filter {'on' if filtered else 'off'}"
                    results["runs"][key] = {
                        "dropped": len(dense[hook]) if filtered else 0,
                        "seconds_feature_sets": seconds,
                        **checks(named, args.seed),
                    }
                    r = results["runs"][key]
                    logging.info(
                        "%s: halves %.3f vs %.3f / %.3f (%s); R_hat %.3f -> %.3f twice (%s); greedy/random %s",
                        key,
                        r["halves"]["halves"],
                        r["halves"]["gsm8k~humaneval"],
                        r["halves"]["gsm8k~gpqa-diamond"],
                        r["halves"]["holds"],
                        r["duplicates"]["gsm8k"],
                        r["duplicates"]["gsm8k_twice"],
                        r["duplicates"]["holds"],
                        {n: f"{c['greedy']}/{c['random_median']:.0f}" for n, c in r["compression"].items()},
                    )
            save(results, Path(args.out))  # after every model and pooling: a killed run keeps what it measured
        del model

    out = Path(args.out)
    save(results, out)
    table(results)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def save(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)


def table(results: dict[str, Any]) -> None:
    names = ", ".join(next(iter(results["runs"].values()))["compression"])
    print(
        f"\n{'run':<42} {'halves':>7} {'~HE':>6} {'~GPQA':>6} {'R_hat':>6} {'twice':>6} {'mono+flat':>9}"
        f"  greedy/random items for 90% ({names})"
    )
    for key, r in results["runs"].items():
        h, d = r["halves"], r["duplicates"]
        cov = all(c["monotone"] and c["flattens"] for c in r["coverage"].values())
        comp = ", ".join(f"{c['greedy']}/{c['random_median']:.0f}" for c in r["compression"].values())
        print(
            f"{key:<42} {h['halves']:>7.3f} {h['gsm8k~humaneval']:>6.3f} {h['gsm8k~gpqa-diamond']:>6.3f}"
            f" {d['gsm8k']:>6.3f} {d['gsm8k_twice']:>6.3f} {cov!s:>9} {comp:>44}"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [k for k in results["runs"] if k.endswith("filter on")]
    fig, axes = plt.subplots(2, len(runs), figsize=(4 * len(runs), 7), squeeze=False)
    for col, key in enumerate(runs):
        r = results["runs"][key]
        ax = axes[0][col]
        for name, c in r["coverage"].items():
            n = len(c["curve"])
            ax.plot(np.arange(1, n + 1) / n, c["curve"], label=f"{name} (|F|={r['footprint'][name]})")
        ax.set_title(key.replace(" filter on", ""), fontsize=9)
        ax.set_xlabel("share of items in the subset")
        ax.set_ylabel("coverage c_n (exact)")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        names = list(r["compression"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r["compression"][n]["greedy"] for n in names], 0.4, label="greedy")
        med = [r["compression"][n]["random_median"] for n in names]
        err = [
            [m - r["compression"][n]["random_p5"] for n, m in zip(names, med)],
            [r["compression"][n]["random_p95"] - m for n, m in zip(names, med)],
        ]
        ax.bar(x + 0.2, med, 0.4, yerr=err, label="random (median, 5-95%)")
        ax.set_xticks(x, names, fontsize=7)
        ax.set_ylabel("items to reach 90% of the footprint")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
