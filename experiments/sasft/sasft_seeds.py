r"""Plain SFT against SASFT over several training seeds: gathers ``experiments/sasft/sasft.py`` results into one table
and plot.

One ``experiments/sasft/sasft.py`` run trains each arm at one order of the samples; the order alone moves an arm's
code-switching ratio more than the settings do, so a claim needs several orders per arm. Each input is a ``sasft.json``
holding the ``sft`` arm, the ``sasft`` arm or both at one training seed (``--train-seed N``; a run without it used
``--seed``); every input must share the settings that make the arms comparable (data, steps, λ, features, hookpoints).
Per arm it reports each seed, the median and the pooled ratio (English sentences over all sentences of all seeds), and
per seed the paired cut (1 − SASFT / SFT), which cancels what a sample order does to both arms alike. Runs that measured
English-only words (``word_switching``) get the same figures by word (over all words of all seeds), and the count of
empty greedy answers per arm is listed: an empty answer adds to neither count of a ratio, so a model that stops where it
would have switched looks as if it had stayed in the expected language.

    .venv/bin/python experiments/sasft/sasft_seeds.py experiments/sasft/results/sasft.json \
        experiments/sasft/results/sasft-trainseed1.json experiments/sasft/results/sasft-trainseed1-sft.json \
        /tmp/sasft-trainseed2/sasft.json ... --out experiments/sasft/results/sasft-seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from qwenscope.experiment import write_result

RESULTS = Path(__file__).parent / "results"
ARMS = ("sft", "sasft")
# settings that may differ between the runs being gathered (they do not change what an arm trains on or how)
FREE = {"train_seed", "arms", "reuse", "out", "threads", "device", "work", "quick"}
# metric: (block of an arm's result, its share, the count the share is of); the word metrics where every run has them
METRICS = {
    "greedy": ("code_switching", "sentence_unwanted", "n_sentences"),
    "sampled": ("code_switching_sampled", "sentence_unwanted", "n_sentences"),
    "words, greedy": ("word_switching", "word_unwanted", "n_words"),
    "words, sampled": ("word_switching_sampled", "word_unwanted", "n_words"),
}
ALWAYS = ("greedy", "sampled")


def seed_of(config: dict[str, Any]) -> int:
    return config["seed"] if config.get("train_seed") is None else config["train_seed"]


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match across runs; keys an older run lacks take today's defaults."""
    defaults = {
        "more_hookpoints": [],
        "sae": "",
        "positions": "response",
        "freeze_after_hook": False,
        "spanish": 1.0,
        "instruction": "",
    }
    return {k: v for k, v in {**defaults, **config}.items() if k not in FREE}


def gather(paths: list[Path]) -> dict[str, dict[int, dict[str, Any]]]:
    """{arm: {training seed: arm result}}; refuses runs of other settings and two results for one arm and seed."""
    arms: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in ARMS}
    reference, first = None, None
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: no such file; give the sasft.json files that experiments/sasft/sasft.py wrote")
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not {"config", "arms"} <= run.keys():
            raise SystemExit(f"{path} is not a experiments/sasft/sasft.py result (no config and arms)")
        if run.get("partial"):
            raise SystemExit(f"{path} is a partial run (stopped before its last arm): finish it or leave it out")
        settings = comparable(run["config"])
        if reference is None:
            reference, first = settings, path
        elif settings != reference:
            diff = sorted(k for k in settings.keys() | reference.keys() if settings.get(k) != reference.get(k))
            raise SystemExit(f"{path} has other settings than {first} ({', '.join(diff)}): gather runs of one setting")
        seed = seed_of(run["config"])
        for arm in ARMS:
            if arm not in run["arms"]:
                continue
            result = run["arms"][arm]
            if seed in arms[arm]:  # the same arm taken by --reuse is the same result; another one is a clash
                if _measured(arms[arm][seed]) != _measured(result):
                    raise SystemExit(
                        f"{path}: a second, different '{arm}' result at training seed {seed}; "
                        "give each arm and seed once"
                    )
                continue
            arms[arm][seed] = result
    return arms


def _measured(result: dict[str, Any]) -> tuple:
    return tuple(json.dumps(result.get(block), sort_keys=True) for block, _, _ in METRICS.values()) + (
        result["ppl_bible_es"],
    )


def measured_metrics(results: list[dict[str, Any]]) -> list[str]:
    """The sentence metrics, and the word ones when every result measured them (runs before word_switching did not)."""
    return [m for m in METRICS if m in ALWAYS or all(METRICS[m][0] in r for r in results)]


def value(result: dict[str, Any], metric: str) -> float:
    block, key, _ = METRICS[metric]
    return float(result[block][key])


def counts(result: dict[str, Any], metric: str) -> tuple[int, int]:
    block, key, total = METRICS[metric]
    return round(result[block][key] * result[block][total]), int(result[block][total])


def cut(before: float, after: float) -> float | None:
    """1 − after / before: the share of plain SFT's ratio that SASFT removes (None when plain SFT's is 0)."""
    return None if before == 0 else 1 - after / before


def summarise(arms: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    seeds = sorted(set(arms["sft"]) & set(arms["sasft"]))
    if not seeds:
        raise SystemExit("no training seed has both a plain SFT and a SASFT result: add the missing arm's run")
    metrics = measured_metrics([arms[arm][s] for arm in ARMS for s in seeds])
    out: dict[str, Any] = {"seeds": seeds, "metrics": metrics, "arms": {}, "paired": {}}
    for arm in ARMS:
        row: dict[str, Any] = {}
        for metric in metrics:
            per_seed = [value(arms[arm][s], metric) for s in seeds]
            english, total = (sum(c) for c in zip(*(counts(arms[arm][s], metric) for s in seeds)))
            row[metric] = {
                "per_seed": per_seed,
                "median": statistics.median(per_seed),
                "mean": statistics.fmean(per_seed),
                "pooled": english / max(total, 1),
                "english": english,
                "total": total,
            }
        row["empty_greedy"] = [arms[arm][s]["code_switching"].get("n_empty") for s in seeds]
        ppl = [float(arms[arm][s]["ppl_bible_es"]) for s in seeds]
        row["ppl_bible_es"] = {"per_seed": ppl, "median": statistics.median(ppl)}
        row["seconds_per_step"] = [arms[arm][s].get("seconds_per_step") for s in seeds]
        out["arms"][arm] = row
    for metric in metrics:
        sft, sasft = out["arms"]["sft"][metric], out["arms"]["sasft"][metric]
        cuts = [cut(a, b) for a, b in zip(sft["per_seed"], sasft["per_seed"])]
        out["paired"][metric] = {
            "cut_per_seed": cuts,
            "sasft_lower": sum(b < a for a, b in zip(sft["per_seed"], sasft["per_seed"])),
            "sasft_higher": sum(b > a for a, b in zip(sft["per_seed"], sasft["per_seed"])),
            "cut_of_medians": cut(sft["median"], sasft["median"]),
            "cut_pooled": cut(sft["pooled"], sasft["pooled"]),
        }
    ppl = [
        b / a - 1
        for a, b in zip(
            out["arms"]["sft"]["ppl_bible_es"]["per_seed"], out["arms"]["sasft"]["ppl_bible_es"]["per_seed"]
        )
    ]
    out["paired"]["ppl_change_per_seed"] = ppl
    out["paired"]["ppl_change_median"] = statistics.median(ppl)
    return out


def table(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    head = "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | median | pooled |"
    lines = [head, "|" + "---|" * (len(seeds) + 3)]
    for metric in summary["metrics"]:
        for arm in ARMS:
            m = summary["arms"][arm][metric]
            digits = 4 if metric.startswith("words") else 3
            cells = " | ".join(f"{v:.{digits}f}" for v in m["per_seed"])
            lines.append(
                f"| {arm}, {metric} | {cells} | {m['median']:.{digits}f} | {m['pooled']:.{digits}f} "
                f"({m['english']} of {m['total']}) |"
            )
    for arm in ARMS:
        empty = summary["arms"][arm]["empty_greedy"]
        if None not in empty:
            lines.append(
                f"| {arm}, empty greedy answers | {' | '.join(map(str, empty))} | "
                f"{statistics.median(empty):g} | {sum(empty)} |"
            )
    for arm in ARMS:
        m = summary["arms"][arm]["ppl_bible_es"]
        cells = " | ".join(f"{v:.2f}" for v in m["per_seed"])
        lines.append(f"| {arm}, perplexity | {cells} | {m['median']:.2f} | |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = summary["seeds"]
    titles = {
        "greedy": "English sentences, greedy",
        "sampled": "English sentences, sampled (T 0.7)",
        "words, greedy": "English-only words, greedy",
        "words, sampled": "English-only words, sampled",
        "ppl_bible_es": "perplexity, held-out Spanish verses",
    }
    panels = [(key, titles[key]) for key in [*summary["metrics"], "ppl_bible_es"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8))
    for ax, (key, title) in zip(axes, panels):
        for seed_index, seed in enumerate(seeds):
            pair = [summary["arms"][arm][key]["per_seed"][seed_index] for arm in ARMS]
            ax.plot([0, 1], pair, "o-", color="0.6", lw=1)
            ax.annotate(f"seed {seed}", (1.03, pair[1]), fontsize=7, va="center")
        medians = [summary["arms"][arm][key]["median"] for arm in ARMS]
        ax.plot([0, 1], medians, "s-", color="C3", lw=2.5, label="median")
        ax.set_xticks([0, 1], ["plain SFT", "SASFT"])
        ax.set_xlim(-0.3, 1.4)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"plain SFT vs SASFT over {len(seeds)} training seeds (each grey line: one sample order)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="sasft.json files, one setting, one or both arms each")
    parser.add_argument("--out", type=Path, default=RESULTS / "sasft-seeds", help="path stem of the JSON and PNG")
    args = parser.parse_args()
    summary = summarise(gather(args.runs))
    summary["runs"] = [str(p) for p in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), summary)
    plot(summary, args.out.with_suffix(".png"))
    print(table(summary))
    for metric in summary["metrics"]:
        p = summary["paired"][metric]
        cut = "n/a" if p["cut_pooled"] is None else f"{p['cut_pooled']:+.0%}"
        print(
            f"{metric}: SASFT lower at {p['sasft_lower']} of {len(summary['seeds'])} seeds, higher at "
            f"{p['sasft_higher']}; pooled cut {cut}"
        )
    print(f"perplexity change, median over seeds: {summary['paired']['ppl_change_median']:+.1%}")
    print(f"wrote {args.out.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
