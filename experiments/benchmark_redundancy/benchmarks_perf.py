"""Performance redundancy R of real benchmarks: per-item scores under six checkpoints that behave differently.

Checkpoints: smollm2-135m and gemma3-270m, and each with a shipped SAE spliced in (reconstruction replacing the
activations, first token left alone) at each of its layers: smollm2 at resid_post.3 / .15 / .25, gemma at
resid_post.9. Score of an item = the mean per-token log-likelihood of its reference answer given its prompt
(``scores.answer_loglik``, teacher forced, fp32 on every device). Benchmarks: HumanEval, GSM8K, GPQA-Diamond and
AIME 2025 with their natural subsets (``data.subsets``: GPQA by domain, GSM8K short/long, AIME I/II).

Writes one wide CSV per checkpoint (``<out>/<checkpoint>.csv``: id = ``<benchmark>::<item id>``, one score column);
a rerun skips the checkpoints whose file already covers the same items (resumable: kill it, start it again). Then
R(D) per benchmark set over the checkpoints (``measures.performance_redundancy``), a table, and the JSON
(``--json``) with the time per checkpoint. The lead combines R with R_hat for rho(R, R_hat).

    # quick: the first 20 items per benchmark
    .venv/bin/python experiments/benchmark_redundancy/benchmarks_perf.py --limit 20
    # all items (~400k tokens each)
    nohup nice -n 5 .venv/bin/python experiments/benchmark_redundancy/benchmarks_perf.py > perf.log 2>&1 &
    # on a GPU (still fp32)
    .venv/bin/python experiments/benchmark_redundancy/benchmarks_perf.py --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwenscope import load_model, load_sae
from qwenscope.apps.benchmarks.data import load_benchmark, subsets
from qwenscope.apps.benchmarks.measures import performance_redundancy
from qwenscope.apps.benchmarks.scores import ScoreMatrix, answer_loglik, encode_items, load_scores
from qwenscope.experiment import write_result
from qwenscope.util import atomic_write

logger = logging.getLogger("benchmarks_perf")

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("humaneval", "gsm8k", "gpqa-diamond", "aime2025")
CHECKPOINTS: dict[str, tuple[str, str | None]] = {  # name -> (model, hookpoint of the spliced SAE or None)
    "smollm2-135m": ("smollm2-135m", None),
    "smollm2-135m+sae@resid_post.3": ("smollm2-135m", "resid_post.3"),
    "smollm2-135m+sae@resid_post.15": ("smollm2-135m", "resid_post.15"),
    "smollm2-135m+sae@resid_post.25": ("smollm2-135m", "resid_post.25"),
    "gemma3-270m": ("gemma3-270m", None),
    "gemma3-270m+sae@resid_post.9": ("gemma3-270m", "resid_post.9"),
}


ESTIMATOR = "qwenscope.apps.benchmarks.measures.performance_redundancy"


# ---------------------------------------------------------------- scoring
def file_name(checkpoint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint) + ".csv"


def load_items(limit: int | None) -> tuple[list[Any], list[str], dict[str, list[str]]]:
    """All items to score (the first ``limit`` of each benchmark), their keys (``<benchmark>::<id>``) and the keys of
    every benchmark set (the benchmarks and their natural subsets with at least two items)."""
    items: list[Any] = []
    keys: list[str] = []
    sets: dict[str, list[str]] = {}
    for name in BENCHMARKS:
        bench = load_benchmark(name)
        chosen = bench.items[:limit] if limit else bench.items
        keep = {item.id for item in chosen}
        items += chosen
        keys += [f"{name}::{item.id}" for item in chosen]
        sets[name] = [f"{name}::{item.id}" for item in chosen]
        for sub_name, sub in subsets(bench).items():
            sub_keys = [f"{name}::{item.id}" for item in sub.items if item.id in keep]
            if len(sub_keys) >= 2:
                sets[sub_name] = sub_keys
    return items, keys, sets


def score_checkpoint(name: str, items: list[Any], keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    model_name, hookpoint = CHECKPOINTS[name]
    model, tokenizer = load_model(model_name, device=args.device, dtype=torch.float32)
    sae = load_sae(model_name, hookpoint=hookpoint).to(args.device) if hookpoint else None
    tokens = sum(len(ids) for ids, _ in encode_items(tokenizer, items))
    start = time.perf_counter()
    scores = answer_loglik(model, tokenizer, items, args.batch_size, sae=sae)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ScoreMatrix([name], keys, scores[None]).to_csv(args.out / file_name(name))
    logger.info(
        "%s: %d items, %d tokens in %.1f s (%.0f tokens/s)", name, len(items), tokens, seconds, tokens / seconds
    )
    timing: dict[str, Any] = {
        "seconds": seconds,
        "items": len(items),
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
    }
    if hookpoint is None and args.baseline_items > 0:  # items spread over the benchmarks
        sample = items[:: max(1, len(items) // args.baseline_items)][: args.baseline_items]
        timing["baseline"] = baseline(model, tokenizer, sample, min(args.batch_size, 4), args.baseline_repeats)
        logger.info("%s: answer_loglik %.2fx faster than plain full logits", name, timing["baseline"]["speedup"])
    return timing


def save_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: write_result(tmp, content))  # with the environment block


@torch.no_grad()
def plain_loglik(model: Any, tokenizer: Any, items: list[Any], batch_size: int) -> np.ndarray:
    """The baseline: full logits at every position of the padded batch (the head over the whole sequence), then
    the answer tokens' log-probabilities; what ``answer_loglik`` computes without its shortcut."""
    device = next(model.parameters()).device
    out = []
    encoded = encode_items(tokenizer, items)
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r, _ in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows], device=device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        for i, (r, n_ctx) in enumerate(rows):
            picked = logp[i, n_ctx - 1 : len(r) - 1].gather(-1, ids[i, n_ctx : len(r), None])
            out.append(picked.mean().item())
    return np.array(out)


def baseline(model: Any, tokenizer: Any, items: list[Any], batch_size: int, repeats: int) -> dict[str, Any]:
    """``answer_loglik`` against ``plain_loglik`` on the same items, interleaved, medians (this CPU is shared)."""
    runs = {
        "answer_loglik": lambda: answer_loglik(model, tokenizer, items, batch_size),
        "plain": lambda: plain_loglik(model, tokenizer, items, batch_size),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            last[name] = run()
            times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "items": len(items),
        "batch_size": batch_size,
        "repeats": repeats,
        "median_s": med,
        "speedup": med["plain"] / med["answer_loglik"],
        "max_abs_diff": float(np.abs(last["answer_loglik"] - last["plain"]).max()),
    }


def already_scored(path: Path, keys: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        load_scores(path, keys)
    except Exception as error:  # another item set (another --limit) or a broken file: score again
        logger.info("rescoring %s (%s)", path.name, error)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="score the first N items of each benchmark")
    parser.add_argument(
        "--checkpoints", default=",".join(CHECKPOINTS), help="comma-separated, of: " + ", ".join(CHECKPOINTS)
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=200, help="random subsets per size n for R")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline-items",
        type=int,
        default=16,
        help="items timed against plain full logits (per model, in the same run; 0 skips)",
    )
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="score files (default results/benchmark_scores, results/benchmark_scores_limit<N> with --limit)",
    )
    parser.add_argument("--json", type=Path, default=None, help="default results/benchmarks_perf[_limit<N>].json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suffix = f"_limit{args.limit}" if args.limit else ""
    args.out = args.out or RESULTS / f"benchmark_scores{suffix}"
    args.json = args.json or RESULTS / f"benchmarks_perf{suffix}.json"
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()]
    unknown = [c for c in checkpoints if c not in CHECKPOINTS]
    if unknown:
        parser.error(f"unknown checkpoints {unknown}; choose from {list(CHECKPOINTS)}")

    items, keys, sets = load_items(args.limit)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    timing: dict[str, Any] = {c: t for c, t in previous.get("timing", {}).items() if c in checkpoints}
    for name in checkpoints:
        if already_scored(args.out / file_name(name), keys):
            logger.info("%s: already scored, skipped", name)
            continue
        timing[name] = score_checkpoint(name, items, keys, args)
        save_json(args.json, {**previous, "timing": timing})  # a killed run keeps the times measured so far

    matrix = load_scores([args.out / file_name(c) for c in checkpoints], keys)
    results = {}
    print(f"{'benchmark set':<24} {'items':>6} {'R':>7}   mean score per checkpoint ({', '.join(checkpoints)})")
    for set_name, set_keys in sets.items():
        sub = matrix.select(set_keys)
        means = sub.scores.mean(1)
        r = performance_redundancy(sub.scores, n_samples=args.n_samples, seed=args.seed)
        results[set_name] = {"items": len(set_keys), "R": r, "mean_score": dict(zip(checkpoints, means.tolist()))}
        print(f"{set_name:<24} {len(set_keys):>6} {r:>7.3f}   " + " ".join(f"{m:.3f}" for m in means))
    for name, t in timing.items():  # scored in this run or, when it skipped them, the run before
        base = t.get("baseline")
        versus = f"  {base['speedup']:.2f}x plain full logits ({base['items']} items)" if base else ""
        speed = f"{t['seconds']:>8.1f} s  {t['tokens']:>8d} tokens  {t['tokens_per_s']:>7.0f} tokens/s"
        print(f"{name:<32} {speed}{versus}")
    save_json(
        args.json,
        {
            "bench": "benchmarks_perf",
            "limit": args.limit,
            "device": args.device,
            "dtype": "float32",
            "batch_size": args.batch_size,
            "n_samples": args.n_samples,
            "seed": args.seed,
            "checkpoints": checkpoints,
            "score": "mean per-token log-likelihood of the reference answer (nats)",
            "timing": timing,
            "sets": results,
            "estimator": ESTIMATOR,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
    )
    print(f"wrote {args.json} and the score files in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
