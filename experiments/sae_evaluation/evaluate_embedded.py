r"""Experiment: the embedded SAEs through every evaluation suite, each beside its random-weight baseline.

For each embedded model, its shipped SAEs at every shipped hookpoint go through ``qwenscope eval`` (``run_eval``),
each suite with ``random`` (an SAE of the same shape, k and decoder bias with random weights,
``qwenscope.sae.random_like``): core (explained variance, CE loss recovered ... on ``--n-tokens`` held-out tokens of
``--dataset``), k-sparse probing on the CPU subset of the sae-probes tasks, first-letter absorption, and autointerp
(``--interp-features`` features, 50 + 50 examples each, explained by smollm2-135m and scored by its p(yes): the
only instruction-tuned model reachable offline, so the figures measure the pipeline and its cost, not what a capable
explainer would find). One table for all SAEs; the full results per model under ``results/<model>/`` (core in
``eval.json``, the others in a folder per suite) with their plots. ``--reuse`` reads a suite's ``eval.json`` where
it is already there (and its time from the last run) instead of rerunning it.

    .venv/bin/python experiments/sae_evaluation/evaluate_embedded.py [--probe-pooling last|mean] [--reuse]

Writes experiments/sae_evaluation/results/embedded.json (embedded_mean.json with --probe-pooling mean) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qwenscope.evaluate import EvalConfig, run_eval
from qwenscope.experiment import add_common_args, set_threads, write_result
from qwenscope.sae import embedded_saes

HERE = Path(__file__).resolve().parent
MODELS = ("smollm2-135m", "gemma3-270m")
SUITES = ("core", "probing", "absorption", "autointerp")
EXPLAINER = "smollm2-135m"
"""The explainer and scorer of autointerp: the one instruction-tuned model here."""


def row(model: str, hp: str, results: dict) -> dict:
    core, probing = results["core"], results["probing"]
    trained, random = core["hookpoints"][hp], core["random"]["hookpoints"][hp]
    summary = probing["probing"]["hookpoints"][hp]["summary"]
    out = {
        "sae": f"{model} {hp}",
        "explained_variance": trained["explained_variance"],
        "explained_variance_random": random["explained_variance"],
        "ce_loss_recovered": trained["ce_loss_recovered"],
        "ce_loss_recovered_random": random["ce_loss_recovered"],
        "resid_full": summary["resid_full"]["accuracy"],
    }
    for k in probing["probing"]["ks"]:
        for method in ("sae", "random", "resid_topk"):
            out[f"{method}@{k}"] = summary[f"{method}@{k}"]["accuracy"]
            out[f"{method}@{k}_ci95"] = summary[f"{method}@{k}"]["accuracy_ci95"]
    out["sae_minus_random@1"] = out["sae@1"] - out["random@1"]
    if "absorption" in results:
        block = results["absorption"]["absorption"]["hookpoints"][hp]
        out["absorption"] = block["summary"]["mean_absorption_rate"]
        out["absorption_random"] = block["random"]["summary"]["mean_absorption_rate"]
        out["main_f1"] = block["summary"]["mean_main_f1"]
        out["main_f1_random"] = block["random"]["summary"]["mean_main_f1"]
    if "autointerp" in results:
        block = results["autointerp"]["autointerp"]["hookpoints"][hp]
        for name, summary in (("", block["summary"]), ("_random", block["random"]["summary"])):
            for key in ("detection_auroc", "detection_null_auroc", "fuzzing_auroc", "fuzzing_null_auroc"):
                out[key + name] = summary[key]
    return out


def suite_config(suite: str, model: str, args: argparse.Namespace, common: dict, out: Path) -> EvalConfig:
    """The run_eval config of one suite (with random) for one model's shipped SAEs."""
    folder = {"core": "", "probing": f"probing_{args.probe_pooling}"}.get(suite, suite)
    extra: dict = {"dataset": args.dataset} if suite in ("core", "autointerp") else {}
    if suite == "core":
        extra["n_tokens"] = args.n_tokens
    if suite == "probing":
        extra |= {"probe_tasks": args.probe_tasks, "probe_pooling": args.probe_pooling}
    if suite == "autointerp":
        extra |= {"explainer": "" if model == EXPLAINER else EXPLAINER, "interp_features": args.interp_features}
    return EvalConfig(**common, out=str(out.parent / model / folder), suite=f"{suite},random", **extra)


def plot(rows: list[dict], ks: list[int], path: Path) -> None:
    from qwenscope.util import figure

    fig = figure(11, 3.8)
    ax = fig.add_subplot(1, 2, 1)
    x = range(len(rows))
    for j, (key, label, color) in enumerate(
        (("explained_variance", "trained", "C0"), ("explained_variance_random", "random weights", "0.6"))
    ):
        ax.bar([i + 0.4 * j for i in x], [r[key] for r in rows], 0.4, label=label, color=color)
    ax.set_xticks([i + 0.2 for i in x], [r["sae"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_title("explained variance (mean-centred)", fontsize=10)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    for j, (method, label, color) in enumerate(
        (("sae", "SAE latents", "C0"), ("random", "random-weight SAE", "0.6"), ("resid_topk", "residual dims", "C2"))
    ):
        ax.bar([i + 0.27 * j for i in x], [r[f"{method}@1"] for r in rows], 0.27, label=label, color=color)
    ax.set_ylim(0.45, max(r["resid_full"] for r in rows) + 0.05)
    ax.axhline(0.5, color="black", linewidth=0.6)
    ax.set_xticks([i + 0.27 for i in x], [r["sae"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_title("k-sparse probing at k = 1: mean test accuracy", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def print_more(rows: list[dict]) -> None:
    """The absorption and autointerp columns, trained / random, where they ran."""
    cols = [
        (key, title)
        for key, title in (
            ("absorption", "absorb"),
            ("main_f1", "main F1"),
            ("detection_auroc", "det AUROC"),
            ("detection_null_auroc", "det null"),
            ("fuzzing_auroc", "fuzz AUROC"),
            ("fuzzing_null_auroc", "fuzz null"),
        )
        if key in rows[0]
    ]
    if not cols:
        return
    print(f"\n{'SAE (trained / random)':<26}" + "".join(f"{title:>16}" for _, title in cols))
    for r in rows:
        print(f"{r['sae']:<26}" + "".join(f"{r[k]:>9.3f} /{r[k + '_random']:>5.3f}" for k, _ in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dataset", default="dataset-build:multi")
    parser.add_argument("--n-tokens", type=int, default=16_384)
    parser.add_argument("--probe-tasks", default="cpu")
    parser.add_argument("--probe-pooling", default="last", choices=["last", "mean"])
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--interp-features", type=int, default=5, help="autointerp: features per SAE")
    parser.add_argument("--reuse", action="store_true", help="read a suite's eval.json where it is already there")
    add_common_args(parser, threads=0, seed=0, out=HERE / "results" / "embedded.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    out = Path(args.out)
    if args.probe_pooling != "last" and out.name == "embedded.json":
        out = out.with_name(f"embedded_{args.probe_pooling}.json")
    suites = [x for x in SUITES if x in args.suites.split(",")]
    if suites[:2] != ["core", "probing"]:
        parser.error("--suites needs core and probing (the table's columns); add absorption, autointerp")
    earlier = json.loads(out.read_text()).get("seconds", {}) if out.exists() else {}
    rows, seconds = [], {}
    for model in args.models.split(","):
        shipped = sorted(embedded_saes()[model], key=lambda h: int(h.rsplit(".", 1)[-1]))
        hookpoints = ",".join(shipped)  # every shipped SAE of the model, by layer
        common = {"sae": model, "model": model, "hookpoints": hookpoints, "seed": args.seed}
        results, seconds[model] = {}, {"saes": len(shipped)}
        for suite in suites:
            cfg = suite_config(suite, model, args, common, out)
            done = Path(cfg.out) / "eval.json"
            if args.reuse and done.exists() and f"{suite}_and_random" in earlier.get(model, {}):
                results[suite] = json.loads(done.read_text())
                seconds[model][f"{suite}_and_random"] = earlier[model][f"{suite}_and_random"]
                continue
            t0 = time.perf_counter()
            results[suite] = run_eval(cfg)
            seconds[model][f"{suite}_and_random"] = time.perf_counter() - t0
        rows += [row(model, hp, results) for hp in shipped]
        probing = results["probing"]
    ks = probing["probing"]["ks"]
    print(
        f"\n{'SAE':<26}{'EV':>7}{'EV rnd':>8}{'CE rec':>8}{'rnd':>7}"
        + "".join(f"{f'k={k} sae/rnd/res':>20}" for k in ks)
        + f"{'full':>7}"
    )
    for r in rows:
        cells = "".join(f"{r[f'sae@{k}']:>8.3f}{r[f'random@{k}']:>6.3f}{r[f'resid_topk@{k}']:>6.3f}" for k in ks)
        print(
            f"{r['sae']:<26}{r['explained_variance']:>7.3f}{r['explained_variance_random']:>8.3f}"
            f"{r['ce_loss_recovered']:>8.3f}{r['ce_loss_recovered_random']:>7.3f}{cells}{r['resid_full']:>7.3f}"
        )
    mean_gap = sum(r["sae_minus_random@1"] for r in rows) / len(rows)
    print(f"trained minus random at k = 1, mean over SAEs: {mean_gap:+.3f} (goal: >= +0.05 for every SAE)")
    print_more(rows)
    write_result(
        out,
        {
            "probe_pooling": args.probe_pooling,
            "probe_tasks": probing["probing"]["tasks"],
            "n_tokens": args.n_tokens,
            "dataset": args.dataset,
            "suites": suites,
            "autointerp": {"explainer": EXPLAINER, "scoring": "logprob", "features": args.interp_features},
            "threads": threads,
            "seconds": seconds,
            "rows": rows,
        },
    )
    plot(rows, ks, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
