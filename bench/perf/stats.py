"""Benchmark: feature statistics in one streaming pass vs plain activation capture, and peak memory vs token count.

Throughput: the shipped SAE of smollm2-135m at resid_post.15 (d_sae 9216, k 32). Both variants tokenise and pack the
same documents into the same chunks and run the same early-stopped forwards; ``compute_feature_stats`` also encodes
every token with the SAE and updates counts, histograms and the top-N store (logit lens off: it is a one-off cost
per store, timed once on its own). Interleaved runs in one process; medians. Goal (issue 4): >= 0.8x.

Shared pass: the three shipped SAEs of smollm2-135m (resid_post.3, .15, .25) in one ``compute_feature_stats_many``
pass (one forward up to layer 25 serves all three) against three ``compute_feature_stats`` passes, with capture up to
resid_post.25 as the baseline; same documents, interleaved, medians, in wall time and in CPU time of the process
(stable on a machine shared with other jobs; run with OMP_NUM_THREADS=1 there).

Memory: ``compute_feature_stats`` on a tiny random Llama (``qwenscope.experiment.PROBES["stats"]``, the tests' tiny
Llama, byte tokenizer, d_sae 1024) over two token counts, each in a fresh spawned process; peak RSS must not grow with
the token count.

    .venv/bin/python bench/perf/stats.py [--batch 8] [--seq 256] [--batches 3] [--repeats 3]
        [--rss-tokens 100000,1000000] [--parts throughput,shared,rss]

Writes bench/perf/results/stats.json (parts not rerun keep their last figures).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from qwenscope import get_activations, load_model, load_sae
from qwenscope.data import chunk_tokens, iter_texts
from qwenscope.experiment import (
    add_common_args,
    default_device,
    interleaved,
    medians,
    probe_rss,
    timed,
    timed_cpu,
    write_result,
)
from qwenscope.features.stats import StatsConfig, batched, compute_feature_stats, compute_feature_stats_many, logit_lens

HERE = Path(__file__).resolve().parent


def documents(tokenizer, n_chunks: int, seq: int) -> list[str]:
    """The first documents of dataset-build:multi that pack into at least ``n_chunks`` chunks of ``seq`` tokens."""
    docs: list[str] = []
    packed = 0
    for doc in iter_texts("dataset-build:multi", split="train"):
        docs.append(doc)
        packed += len(tokenizer(doc, add_special_tokens=False)["input_ids"]) + 1  # + the EOS separator
        if packed >= n_chunks * seq:
            return docs
    raise SystemExit("dataset-build:multi is too short for this many chunks")


def throughput(args) -> dict:
    device = default_device()
    model, tokenizer = load_model(args.model, device=device)
    sae = load_sae(args.model, device=device)
    hook = sae.cfg.hookpoint
    docs = documents(tokenizer, args.batches * args.batch, args.seq)
    n_chunks = sum(1 for _ in chunk_tokens(docs, tokenizer, args.seq))
    cfg = StatsConfig(n_tokens=10**12, seq_len=args.seq, batch_size=args.batch, lens_top=0, progress=False)

    def capture() -> None:
        for ids in batched(chunk_tokens(docs, tokenizer, args.seq), args.batch):
            get_activations(model, ids, [hook])

    def stats() -> None:
        compute_feature_stats(model, tokenizer, sae, docs, cfg)

    logging.getLogger("qwenscope.features.stats").setLevel(logging.ERROR)  # "the text ran out": on purpose
    # warm-up, then interleaved, so drift hits both alike
    times = interleaved({"capture": capture, "stats": stats}, args.repeats, warmup=True)
    lens_s = timed(lambda: logit_lens(model, sae, top=10, vocab_size=len(tokenizer)))
    med = medians(times)
    tokens = n_chunks * args.seq
    print(
        f"model {args.model} on {device}, SAE {hook} d_sae {sae.d_sae} k {sae.cfg.k}, {n_chunks} chunks x "
        f"{args.seq} tokens in batches of {args.batch}, median of {args.repeats}"
    )
    print(f"{'variant':<10} {'median s':>9} {'tokens/s':>9} {'vs capture':>10}")
    for name, t in med.items():
        print(f"{name:<10} {t:>9.2f} {tokens / t:>9.0f} {med['capture'] / t:>9.2f}x")
    print(f"logit lens of all {sae.d_sae} features (once per store): {lens_s:.1f} s")
    return {
        "model": args.model,
        "device": device,
        "hookpoint": hook,
        "d_sae": sae.d_sae,
        "k": sae.cfg.k,
        "tokens_per_run": tokens,
        "batch": args.batch,
        "seq": args.seq,
        "repeats": args.repeats,
        "median_s": med,
        "runs_s": times,
        "tokens_per_s": {k: tokens / t for k, t in med.items()},
        "ratio_stats_vs_capture": med["capture"] / med["stats"],
        "logit_lens_s": lens_s,
    }


def shared(args) -> dict:
    device = default_device()
    model, tokenizer = load_model(args.model, device=device)
    hooks = ["resid_post.3", "resid_post.15", "resid_post.25"]
    saes = [load_sae(args.model, hookpoint=h, device=device) for h in hooks]
    docs = documents(tokenizer, args.batches * args.batch, args.seq)
    n_chunks = sum(1 for _ in chunk_tokens(docs, tokenizer, args.seq))
    cfg = StatsConfig(n_tokens=10**12, seq_len=args.seq, batch_size=args.batch, lens_top=0, progress=False)
    variants = {
        "capture": lambda: [
            get_activations(model, ids, hooks) for ids in batched(chunk_tokens(docs, tokenizer, args.seq), args.batch)
        ],
        "shared": lambda: compute_feature_stats_many(model, tokenizer, saes, docs, cfg),
        "separate": lambda: [compute_feature_stats(model, tokenizer, sae, docs, cfg) for sae in saes],
    }
    logging.getLogger("qwenscope.features.stats").setLevel(logging.ERROR)
    variants["shared"]()  # warm-up
    # CPU time is the stable measure on a machine shared with other jobs (with one thread it is the compute alone)
    runs = interleaved(variants, args.repeats, timer=timed_cpu)
    wall = {k: [w for w, _ in v] for k, v in runs.items()}
    cpu = {k: [c for _, c in v] for k, v in runs.items()}
    med_wall, med_cpu = medians(wall), medians(cpu)
    tokens = n_chunks * args.seq
    print(
        f"\nthree SAEs of {args.model} ({', '.join(hooks)}), {tokens} tokens per run, batches of {args.batch}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}"
    )
    print(f"{'variant':<10} {'wall s':>8} {'CPU s':>8} {'tok/CPU s':>10} {'vs capture (CPU)':>17}")
    for name in variants:
        print(
            f"{name:<10} {med_wall[name]:>8.1f} {med_cpu[name]:>8.1f} {tokens / med_cpu[name]:>10.0f} "
            f"{med_cpu['capture'] / med_cpu[name]:>16.2f}x"
        )
    print(
        f"shared pass vs three passes: {med_cpu['separate'] / med_cpu['shared']:.2f}x CPU time, "
        f"{med_wall['separate'] / med_wall['shared']:.2f}x wall time"
    )
    return {
        "hookpoints": hooks,
        "tokens_per_run": tokens,
        "median_wall_s": med_wall,
        "median_cpu_s": med_cpu,
        "runs_wall_s": wall,
        "runs_cpu_s": cpu,
        "tokens_per_cpu_s": {k: tokens / t for k, t in med_cpu.items()},
        "speedup_shared_vs_separate_cpu": med_cpu["separate"] / med_cpu["shared"],
        "ratio_shared_vs_capture_cpu": med_cpu["capture"] / med_cpu["shared"],
    }


def peak_rss(token_counts: list[int]) -> list[dict]:
    rows = []
    for n in token_counts:  # each count in a fresh process (subprocess = fork + exec: nothing inherited)
        r = probe_rss("stats", n)
        rows.append({"n_tokens": r["n"], "seconds": r["seconds"], "peak_rss_mib": r["rss_kb"] / 1024})
    print("\npeak RSS, tiny Llama + byte tokenizer, d_sae 1024, each count in a fresh process")
    print(f"{'tokens':>10} {'seconds':>8} {'tokens/s':>9} {'peak RSS MiB':>13}")
    for r in rows:
        speed = r["n_tokens"] / r["seconds"]
        print(f"{r['n_tokens']:>10} {r['seconds']:>8.1f} {speed:>9.0f} {r['peak_rss_mib']:>13.0f}")
    print(
        f"RSS ratio {rows[-1]['n_tokens'] / rows[0]['n_tokens']:.0f}x tokens: "
        f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.3f}x"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batches", type=int, default=3)
    add_common_args(parser, repeats=3, out=HERE / "results" / "stats.json")
    parser.add_argument("--rss-tokens", default="100000,1000000")
    parser.add_argument("--parts", default="throughput,shared,rss")
    args = parser.parse_args()
    parts = args.parts.split(",")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}  # parts not rerun keep their last results
    result.update(
        {
            "bench": "stats",
        }
    )
    if "throughput" in parts:
        result["throughput"] = throughput(args)
    if "shared" in parts:
        result["shared"] = shared(args)
    if "rss" in parts:
        rss = peak_rss([int(n) for n in args.rss_tokens.split(",")])
        result["peak_rss"] = rss
        result["rss_ratio"] = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
    result.pop("environment", None)  # the environment of this run
    write_result(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
