r"""Experiment: the embedded SAEs through every evaluation suite, each beside its random-weight baseline.

For each embedded model, its shipped SAEs at every shipped hookpoint go through ``qwenscope eval`` (``run_eval``):
the core suite (explained variance, CE loss recovered ... on ``--n-tokens`` held-out tokens of ``--dataset``) and
k-sparse probing on the CPU subset of the sae-probes tasks, both with ``random`` (an SAE of the same shape, k and
decoder bias with random weights, ``qwenscope.sae.random_like``). One table for all SAEs; the full results per model
under ``results/<model>/eval.json`` with their plots.

    .venv/bin/python experiments/sae_evaluation/evaluate_embedded.py [--probe-pooling last|mean]

Writes experiments/sae_evaluation/results/embedded.json (embedded_mean.json with --probe-pooling mean) and a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from qwenscope.evaluate import EvalConfig, run_eval
from qwenscope.experiment import add_common_args, set_threads, write_result
from qwenscope.sae import embedded_saes

HERE = Path(__file__).resolve().parent
MODELS = ("smollm2-135m", "gemma3-270m")


def row(model: str, hp: str, core: dict, probing: dict) -> dict:
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
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dataset", default="dataset-build:multi")
    parser.add_argument("--n-tokens", type=int, default=16_384)
    parser.add_argument("--probe-tasks", default="cpu")
    parser.add_argument("--probe-pooling", default="last", choices=["last", "mean"])
    add_common_args(parser, threads=0, seed=0, out=HERE / "results" / "embedded.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    out = Path(args.out)
    if args.probe_pooling != "last" and out.name == "embedded.json":
        out = out.with_name(f"embedded_{args.probe_pooling}.json")
    rows, seconds = [], {}
    for model in args.models.split(","):
        shipped = sorted(embedded_saes()[model], key=lambda h: int(h.rsplit(".", 1)[-1]))
        hookpoints = ",".join(shipped)  # every shipped SAE of the model, by layer
        common = {
            "sae": model,
            "model": model,
            "hookpoints": hookpoints,
            "seed": args.seed,
            "out": str(out.parent / model),
        }
        t0 = time.perf_counter()
        core = run_eval(EvalConfig(**common, dataset=args.dataset, n_tokens=args.n_tokens, suite="core,random"))
        t1 = time.perf_counter()
        probing = run_eval(
            EvalConfig(
                **{**common, "out": str(out.parent / model / f"probing_{args.probe_pooling}")},
                suite="probing,random",
                probe_tasks=args.probe_tasks,
                probe_pooling=args.probe_pooling,
            )
        )
        t2 = time.perf_counter()
        seconds[model] = {"core_and_random": t1 - t0, "probing_and_random": t2 - t1, "saes": len(core["hookpoints"])}
        rows += [row(model, hp, core, probing) for hp in core["hookpoints"]]
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
    write_result(
        out,
        {
            "probe_pooling": args.probe_pooling,
            "probe_tasks": probing["probing"]["tasks"],
            "n_tokens": args.n_tokens,
            "dataset": args.dataset,
            "threads": threads,
            "seconds": seconds,
            "rows": rows,
        },
    )
    plot(rows, ks, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
