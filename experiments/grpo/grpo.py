"""GRPO against repetition on smollm2-135m: plain GRPO against GRPO with steered negatives (Qwen-Scope report §6).

1. Features. Arithmetic questions (``What is 7 + 5?`` and word problems, operands up to ``--max-operand``;
   the task: the last number of the answer is right). Greedy answers of the training prompts; those that loop
   (``repetition.LoopRule``) rank the SAE's features at ``--hookpoint`` by activation at a token's last occurrence
   minus its first; of the top ``--candidates`` the one whose steering (``--alpha``, relative) raises the greedy
   repeat ratio most is kept.
2. Training. For each seed, one run per arm from the same initial weights, prompts, reward, steps and seed
   (``--arms``): ``plain`` GRPO; ``steered``, GRPO whose group of ``--group`` rollouts holds one rollout steered with
   that feature, trained as off-policy data (its old log-probabilities are the steered model's, so PPO's ratio is
   pi_theta / pi_steered and the clip bounds it); ``steered-ratio1``, the same rollouts trained with ratio 1 (old
   log-probabilities = the policy's, the first version). The reward is the task's (``grpo.answer_reward``: 1 when
   the last number is right), nothing about repetition. Logged per step: the repeat ratio (rep-4) and loop share of
   the plain rollouts, the task reward of the plain rollouts, wall time. ``--reuse`` takes the arms this run does
   not train from an earlier JSON of the same settings (one written before ``--arms`` existed names its ratio-1 arm
   ``steered``).
3. After training: greedy answers of held-out prompts (repeat ratio, loop share, accuracy).

Why these defaults: smollm2-135m answers 2-digit questions right ~6% of the time at temperature 0.7, so nearly every
group had the same reward (0) and GRPO learned nothing. With operands up to 9 and temperature 0.4 (128 new tokens) it
is right 25% of the time and 7 groups of 8 held both rewards (measured on CPU: 8 prompts x 4 rollouts); greedy
answers are right 44% of the time, rep-4 ~0.1. ``--jobs`` runs the seed x arm runs in parallel processes (one GPU:
a 135M model's generation is launch-bound, so the runs overlap almost for free).

Summary per arm (mean over seeds): the final repeat ratio of plain rollouts (mean of the last 5 steps), the first
step where the steered arm's curve (moving mean of 5) reaches plain GRPO's final value, the final task reward, wall
time per step and in total. The goal: steered negatives reach plain's final repeat ratio in half the steps or fewer,
with no lower task reward.

    # proves it runs: 2 steps, 1 seed, few prompts (~2 min on 2 cores)
    .venv/bin/python experiments/grpo/grpo.py --quick
    # 3 seeds x 2 arms x 60 steps (GPU advised; ~5 s/step on 2 cores)
    .venv/bin/python experiments/grpo/grpo.py
    .venv/bin/python experiments/grpo/grpo.py --jobs 6 --out /tmp/o    # the six runs in parallel processes (GPU)

Writes experiments/grpo/results/grpo.json and grpo.png (grpo-quick.* with --quick; ``--out`` another folder), the JSON
also after each finished run (``"partial": true``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from trl import GRPOConfig

from qwenscope import load_model, load_sae
from qwenscope.apps.posttrain.grpo import GrpoSteerConfig, SteeredGRPOTrainer, answer_reward
from qwenscope.apps.posttrain.repetition import (
    Generation,
    generate_completions,
    looping_generations,
    rank_repetition_features,
    render_prompts,
    repeat_stats,
    steering_check,
)
from qwenscope.experiment import write_result
from qwenscope.steer.strength import steering_unit

RESULTS = Path(__file__).resolve().parent / "results"
DTYPE = torch.float32
"""The model's weights (float32 on CPU and GPU; GRPOConfig's bf16 autocasts the matmuls on CUDA)."""
logger = logging.getLogger("bench.grpo")


# ---------------------------------------------------------------- the task
KINDS = ("sum", "marbles", "eggs", "explain", "apples")
"""Question families: ``What is a + b?``, a subtraction word problem, a multiplication word problem, ``Add a and b,
then explain your answer step by step.``, and a three-operand word problem (``apples``: smollm2-135m loops on it:
11% of rollouts loop at temperature 0.3 and 192 tokens, against 2% for ``explain`` and 0% for ``eggs``; 0% for
``sum`` at temperature 0.4; 16 prompts x 4 rollouts each)."""


def arithmetic(n: int, seed: int, max_operand: int = 9, kinds: tuple[str, ...] = KINDS[:4]) -> list[dict[str, Any]]:
    """``n`` arithmetic questions with their answers, drawn deterministically, operands in 2..max_operand, the
    families ``kinds`` in turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        kind = kinds[i % len(kinds)]
        if kind == "sum":
            rows.append({"prompt": f"What is {a} + {b}?", "answer": a + b})
        elif kind == "marbles":
            a, b = max(a, b), min(a, b)
            rows.append(
                {
                    "prompt": f"Tom has {a} marbles and gives {b} to his sister. How many marbles does he have now?",
                    "answer": a - b,
                }
            )
        elif kind == "eggs":
            rows.append({"prompt": f"A box holds {a} rows of {b} eggs. How many eggs are in the box?", "answer": a * b})
        elif kind == "explain":
            rows.append({"prompt": f"Add {a} and {b}, then explain your answer step by step.", "answer": a + b})
        elif kind == "apples":
            c = rng.randint(2, max_operand)
            rows.append(
                {
                    "prompt": f"Sara has {a + c} apples. She buys {b} more and then eats {c}. How many apples "
                    "does she have now?",
                    "answer": a + b,
                }
            )
        else:
            raise SystemExit(f"unknown question kind {kind!r}; choose from {', '.join(KINDS)}")
    return rows


def split(args) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training questions, held-out questions): different draws."""
    kinds = tuple(args.kinds)
    return (
        arithmetic(args.train_prompts, 0, args.max_operand, kinds),
        arithmetic(args.eval_prompts, 1, args.max_operand, kinds),
    )


def accuracy(tokenizer, rows: list[dict[str, Any]], completions: list[list[int]]) -> float:
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return float(np.mean(answer_reward(texts, answer=[r["answer"] for r in rows])))


# ---------------------------------------------------------------- 1. the repetition feature
def pick_feature(model, tokenizer, sae, train: list[dict], check: list[str], args) -> dict[str, Any]:
    prompts = [r["prompt"] for r in train]
    loops = looping_generations(model, tokenizer, prompts, max_new_tokens=args.feature_tokens, batch_size=8)
    source = "looping"
    if not loops:  # too few prompts (--quick): all greedy answers, whose repeated tokens still rank the features
        logger.warning("no greedy answer loops; ranking features on all %d answers", len(prompts))
        ids = render_prompts(tokenizer, prompts)
        answers = generate_completions(model, tokenizer, ids, max_new_tokens=args.feature_tokens)
        loops = [Generation(p, c) for p, c in zip(ids, answers)]
        source = "all"
    found = rank_repetition_features(model, sae, loops, hookpoint=args.hookpoint, top=args.candidates)
    unit = steering_unit(model, tokenizer, args.hookpoint)
    checks = []
    for f in found.feature_ids:
        c = steering_check(
            model,
            tokenizer,
            sae,
            f,
            check,
            alpha=args.alpha,
            hookpoint=args.hookpoint,
            unit=unit,
            max_new_tokens=args.feature_tokens,
        )
        checks.append(
            {"feature": f, "score": float(found.scores[f]), "plain": c.plain._asdict(), "steered": c.steered._asdict()}
        )
    best = max(checks, key=lambda c: c["steered"]["repeat_ratio"] - c["plain"]["repeat_ratio"])
    logger.info(
        "repetition feature %d: greedy repeat ratio %.3f -> %.3f when steered at alpha %g",
        best["feature"],
        best["plain"]["repeat_ratio"],
        best["steered"]["repeat_ratio"],
        args.alpha,
    )
    return {
        "feature": best["feature"],
        "unit": unit,
        "looping": len(loops) if source == "looping" else 0,
        "of_prompts": len(prompts),
        "candidates": checks,
    }


# ---------------------------------------------------------------- 2. training
def train_run(base, tokenizer, sae, train: list[dict], args, *, seed: int, steering: GrpoSteerConfig) -> dict:
    model = copy.deepcopy(base)
    cuda = torch.cuda.is_available()
    dataset = Dataset.from_list([{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in train])
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            num_generations=args.group,
            per_device_train_batch_size=args.group * args.prompts_per_step,
            max_completion_length=args.max_new_tokens,
            max_steps=args.steps,
            learning_rate=args.lr,
            temperature=args.temperature,
            seed=seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=cuda,
            use_cpu=not cuda,
            disable_tqdm=True,
        )
        trainer = SteeredGRPOTrainer(
            model,
            reward_funcs=[answer_reward],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            sae=sae,
            steering=steering,
        )
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    keys = (
        "repeat_ratio/plain",
        "loop_share/plain",
        "reward/plain",
        "repeat_ratio/steered",
        "reward/steered",
        "reward",
        "step_time",
        "completions/mean_length",
        "steered/logp_gap",
        "steered/below_clip",
        "clip_ratio/low_mean",
    )
    steps = [
        {"step": h["step"], **{k: h[k] for k in keys if k in h}}
        for h in trainer.state.log_history
        if "repeat_ratio/plain" in h
    ]
    return {"seed": seed, "steps": steps, "wall_s": total, "model": trainer.model}


def held_out(model, tokenizer, rows: list[dict], args) -> dict[str, float]:
    model.eval()
    completions = generate_completions(
        model, tokenizer, render_prompts(tokenizer, [r["prompt"] for r in rows]), max_new_tokens=args.max_new_tokens
    )
    stats = repeat_stats(completions)
    return {
        "repeat_ratio": stats.repeat_ratio,
        "loop_share": stats.loop_share,
        "accuracy": accuracy(tokenizer, rows, completions),
    }


def run_arm(base, tokenizer, sae, args, chosen: dict, seed: int, arm: str) -> tuple[str, dict, dict]:
    """One training run and its held-out measure: (arm, run without the model, held-out after)."""
    train, evaluate = split(args)
    steering = GrpoSteerConfig(
        feature=chosen["feature"],
        hookpoint=args.hookpoint,
        alpha=args.alpha,
        unit=chosen["unit"],
        enabled=arm != "plain",
        old_logprobs="plain" if arm == "steered-ratio1" else "steered",
    )
    run = train_run(base, tokenizer, sae, train, args, seed=seed, steering=steering)
    after = {"seed": seed, **held_out(run.pop("model"), tokenizer, evaluate, args)}
    last = run["steps"][-1]
    logger.info(
        "seed %d %-7s: repeat ratio %.3f, reward %.3f at step %d (%.1f s/step)",
        seed,
        arm,
        last["repeat_ratio/plain"],
        last["reward/plain"],
        last["step"],
        run["wall_s"] / args.steps,
    )
    return arm, run, after


def run_job(job: tuple[Any, dict, int, str]) -> tuple[str, dict, dict]:
    """``run_arm`` in a worker process (``--jobs``): loads the model (from the cache the parent filled) and SAE."""
    args, chosen, seed, arm = job
    logging.basicConfig(level=logging.INFO, format=f"[{arm} {seed}] %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(2 if device == "cuda" else max(1, (os.cpu_count() or 1) // args.jobs))  # no oversubscription
    base, tokenizer = load_model(args.model, device=device, dtype=DTYPE)
    sae = load_sae(args.model, hookpoint=args.hookpoint, device=device)
    return run_arm(base, tokenizer, sae, args, chosen, seed, arm)


ARMS = ("plain", "steered", "steered-ratio1")
LABELS = {
    "plain": "plain GRPO",
    "steered": "steered negatives, off-policy (clipped)",
    "steered-ratio1": "steered negatives, ratio 1",
}
SAME_SETTINGS = (
    "model",
    "hookpoint",
    "alpha",
    "feature",
    "candidates",
    "feature_tokens",
    "steps",
    "seeds",
    "group",
    "prompts_per_step",
    "train_prompts",
    "eval_prompts",
    "max_new_tokens",
    "temperature",
    "lr",
    "max_operand",
    "kinds",
)


def reused_arms(path: Path, args, skip: list[str]) -> tuple[dict[str, list[dict]], dict[str, list[dict]], dict]:
    """(runs, held-out after, held-out before) of the arms of an earlier result that this run does not train."""
    old = json.loads(path.read_text())
    differ = [k for k in SAME_SETTINGS if old["settings"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--reuse {path}: other settings ({', '.join(differ)}); rerun those arms instead")
    if old.get("partial"):
        raise SystemExit(f"--reuse {path}: a partial result (a run was stopped); rerun those arms instead")
    rename = {} if "arms" in old["settings"] else {"steered": "steered-ratio1"}  # written before --arms existed
    runs = {rename.get(a, a): r for a, r in old["runs"].items() if rename.get(a, a) not in skip}
    after = {rename.get(a, a): r for a, r in old["held_out_after"].items() if rename.get(a, a) not in skip}
    return runs, after, old["held_out_before"]


# ---------------------------------------------------------------- 3. summary and plot
def curve(runs: list[dict], key: str) -> np.ndarray:
    """(seeds, steps) of ``key``."""
    return np.array([[s.get(key, np.nan) for s in r["steps"]] for r in runs], dtype=float)


def smooth(x: np.ndarray, w: int = 5) -> np.ndarray:
    return np.array([np.nanmean(x[max(0, i - w + 1) : i + 1]) for i in range(len(x))])


def summarize(arms: dict[str, list[dict]]) -> dict[str, Any]:
    tail = {
        arm: {
            key: float(np.nanmean(curve(runs, key)[:, -5:]))
            for key in ("repeat_ratio/plain", "loop_share/plain", "reward/plain")
        }
        for arm, runs in arms.items()
    }
    target = tail["plain"]["repeat_ratio/plain"]
    reach = {}
    for arm, runs in arms.items():
        mean = smooth(np.nanmean(curve(runs, "repeat_ratio/plain"), 0))
        hit = np.nonzero(mean <= target)[0]
        reach[arm] = int(hit[0]) + 1 if len(hit) else None
    return {
        "final": tail,
        "steps_to_plain_final_repeat_ratio": reach,
        "wall_s_per_step": {arm: float(np.nanmean(curve(runs, "step_time"))) for arm, runs in arms.items()},
        "wall_s_total": {arm: float(sum(r["wall_s"] for r in runs)) for arm, runs in arms.items()},
    }


def plot(arms: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(
        axes,
        ("repeat_ratio/plain", "reward/plain"),
        ("repeat ratio (rep-4) of plain rollouts", "task reward of plain rollouts"),
    ):
        for arm, runs in arms.items():
            c = curve(runs, key)
            steps = np.arange(1, c.shape[1] + 1)
            label = f"{LABELS.get(arm, arm)} ({len(runs)} seeds, moving mean of 5)"
            ax.plot(steps, smooth(np.nanmean(c, 0)), label=label)
            ax.fill_between(steps, np.nanmin(c, 0), np.nanmax(c, 0), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoint", default="resid_post.15")
    parser.add_argument("--alpha", type=float, default=0.5, help="relative steering strength of the negative")
    parser.add_argument("--feature", type=int, default=-1, help="skip the search: steer this feature")
    parser.add_argument("--candidates", type=int, default=3, help="top features whose steering is checked")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--train-prompts", type=int, default=128)
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--feature-tokens", type=int, default=128, help="greedy tokens when looking for loops")
    parser.add_argument("--temperature", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--max-operand", type=int, default=9, help="largest operand of the arithmetic questions")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=list(KINDS[:4]),
        help="question families, drawn in turn (apples: the one smollm2 loops on)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=["plain", "steered"],
        help="plain GRPO; steered negatives as off-policy data; the same with ratio 1",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="an earlier JSON, same settings: keeps its arms that --arms does not name",
    )
    parser.add_argument("--jobs", type=int, default=1, help="run the seed x arm runs in this many processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 seed, few prompts: proves it runs")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.group, args.prompts_per_step = 2, 1, 2, 1
        args.train_prompts, args.eval_prompts, args.max_new_tokens, args.feature_tokens = 8, 4, 16, 32
        args.candidates = 1
    reuse = reused_arms(args.reuse, args, args.arms) if args.reuse is not None else None
    if "plain" not in args.arms and (reuse is None or "plain" not in reuse[0]):
        raise SystemExit("the summary compares against plain GRPO: add plain to --arms or --reuse a result that has it")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()

    base, tokenizer = load_model(args.model, device=device, dtype=DTYPE)
    sae = load_sae(args.model, hookpoint=args.hookpoint, device=device)
    train, evaluate = split(args)
    check = [r["prompt"] for r in evaluate[: min(16, len(evaluate))]]
    if args.feature >= 0:
        chosen = {"feature": args.feature, "unit": steering_unit(base, tokenizer, args.hookpoint)}
    else:
        chosen = pick_feature(base, tokenizer, sae, train, check, args)
    before = held_out(base, tokenizer, evaluate, args)
    logger.info("before training, held out: %s", before)

    arms: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    after: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    jobs = [(args, chosen, seed, arm) for seed in range(args.seeds) for arm in args.arms]
    n_runs = len(jobs)
    if reuse is not None:
        old_runs, old_after, old_before = reuse
        if old_before != before:
            logger.warning("--reuse %s: held-out before training was %s there, %s here", args.reuse, old_before, before)
        arms.update(old_runs)
        after.update(old_after)
        n_runs += sum(map(len, old_runs.values()))

    name = "grpo-quick" if args.quick else "grpo"
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        for runs in (*arms.values(), *after.values()):
            runs.sort(key=lambda r: r["seed"])
        summary = summarize(arms) if sum(map(len, arms.values())) == n_runs else None
        result = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": device,
            "feature": chosen,
            "held_out_before": before,
            "held_out_after": after,
            "summary": summary,
            "runs": arms,
            "partial": summary is None,
            "wall_s": time.perf_counter() - start,
        }
        write_result(args.out / f"{name}.json", result, default=float)

    def collect(arm: str, run: dict, held: dict) -> None:
        arms[arm].append(run)
        after[arm].append(held)
        write()

    if args.jobs > 1:
        del base
        # a kill (SIGTERM) unwinds through the pool's exit, which terminates the workers instead of orphaning them
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with torch.multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for result in pool.imap_unordered(run_job, jobs):
                collect(*result)
    else:
        for job in jobs:
            collect(*run_arm(base, tokenizer, sae, *job))
    summary = summarize(arms)
    plot(arms, args.out / f"{name}.png")
    print(json.dumps({"feature": chosen["feature"], **summary}, indent=1))
    print(f"wrote {args.out / name}.json and .png ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
