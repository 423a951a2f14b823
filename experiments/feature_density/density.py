r"""Measurement: how much a feature's firing says about the token, by how often the feature fires.

The basis of the default ``max_density`` (``qwenscope.features.density``). For every SAE given (one forward for all,
the feature-store pass's scoring: not position 0, not special tokens, not norm outliers), over ``--tokens`` scored
tokens of the store's corpus: each feature's firing frequency p, and the token information of a firing,
``KL(P(token | the feature fires) || P(token))`` in bits: 0 when the feature fires on tokens in their corpus
proportions (its firing says nothing about which token it is), at most ``-log2 p``. Features are grouped in
frequency bands; per band: how many, the median information, and the share with under 1 bit. Features that fired
fewer than ``--min-count`` times are left out (their KL is mostly sampling noise).

    .venv/bin/python experiments/feature_density/density.py --model smollm2-135m --hookpoints \
        resid_post.3,resid_post.15,resid_post.25
    .venv/bin/python experiments/feature_density/density.py --model gemma3-270m --hookpoints resid_post.9
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from qwenscope import load_model, load_sae
from qwenscope.data import chunk_tokens, iter_texts
from qwenscope.experiment import write_result
from qwenscope.features.stats import StatsConfig, batched, encode_chunks_many

HERE = Path(__file__).resolve().parent
BANDS = (0.0, 1e-3, 1e-2, 0.03, 0.1, 0.2, 0.35, 0.5, 1.0 + 1e-9)


def pair_counts(model, tokenizer, saes, hooks, cfg: StatsConfig, n_tokens: int):
    """Per SAE: (feature, token) firing-pair keys (feature * vocab + token), token counts and scored tokens."""
    vocab = len(tokenizer)
    keys: list[list[torch.Tensor]] = [[] for _ in saes]
    token_counts = [torch.zeros(vocab, dtype=torch.long) for _ in saes]
    scored = [0] * len(saes)
    texts = iter_texts(cfg.dataset, split=cfg.split, seed=cfg.seed)
    for ids in batched(chunk_tokens(texts, tokenizer, cfg.seq_len), cfg.batch_size):
        for i, (chunk_ids, acts, indices, n) in enumerate(
            encode_chunks_many(model, tokenizer, saes, hooks, ids, cfg.outlier_m)
        ):
            flat = chunk_ids.reshape(-1)
            keep = acts[:, 0] > 0  # a scored position fires at least one feature (TopK): acts are zeroed elsewhere
            token_counts[i] += torch.bincount(flat[keep], minlength=vocab)
            fire = acts > 0
            keys[i].append(indices[fire] * vocab + flat[:, None].expand_as(indices)[fire])
            scored[i] += n
        if min(scored) >= n_tokens:
            break
    return keys, token_counts, scored


def information(keys: torch.Tensor, token_counts: torch.Tensor, d_sae: int, vocab: int):
    """(frequency (d_sae,), count (d_sae,), KL bits (d_sae,)) from the firing pairs."""
    pairs, counts = torch.unique(keys, return_counts=True)
    feature, token = pairs // vocab, pairs % vocab
    fired = torch.bincount(feature, weights=counts.double(), minlength=d_sae)
    total = token_counts.sum().double()
    p_token = token_counts.double() / total
    p_given = counts.double() / fired[feature]
    terms = p_given * torch.log2(p_given / p_token[token])
    kl = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, feature, terms)
    return fired / total, fired, kl


def bands(freq: torch.Tensor, count: torch.Tensor, kl: torch.Tensor, min_count: int) -> list[dict]:
    rows = []
    for lo, hi in zip(BANDS, BANDS[1:]):
        inside = (freq >= lo) & (freq < hi) & (count >= min_count)
        values = kl[inside].tolist()
        rows.append(
            {
                "band": [lo, min(hi, 1.0)],
                "features": len(values),
                "median_kl_bits": statistics.median(values) if values else None,
                "share_under_1_bit": sum(v < 1 for v in values) / len(values) if values else None,
                "median_max_bits": statistics.median([-math.log2(f) for f in freq[inside].tolist()])
                if values
                else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoints", default="resid_post.3,resid_post.15,resid_post.25")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--min-count", type=int, default=50)
    parser.add_argument("--dataset", default=StatsConfig.dataset)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    hooks = args.hookpoints.split(",")
    saes = [load_sae(args.model, hookpoint=h) for h in hooks]
    cfg = StatsConfig(dataset=args.dataset, progress=False)
    t0 = time.perf_counter()
    keys, token_counts, scored = pair_counts(model, tokenizer, saes, hooks, cfg, args.tokens)
    seconds = time.perf_counter() - t0
    result = {
        "bench": "density",
        "model": args.model,
        "dataset": args.dataset,
        "tokens": scored,
        "min_count": args.min_count,
        "seconds": seconds,
        "saes": {},
    }
    for sae, hook, k, tc in zip(saes, hooks, keys, token_counts):
        freq, count, kl = information(torch.cat(k), tc, sae.d_sae, len(tokenizer))
        rows = bands(freq, count, kl, args.min_count)
        result["saes"][hook] = {
            "d_sae": sae.d_sae,
            "bands": rows,
            "densest": [
                {"feature": int(f), "frequency": float(freq[f]), "kl_bits": float(kl[f])}
                for f in freq.argsort(descending=True)[:10]
            ],
        }
        print(
            f"\n{args.model} {hook}: {scored[hooks.index(hook)]:,} scored tokens of {args.dataset}, features that "
            f"fired >= {args.min_count} times"
        )
        print(f"{'frequency band':>16} {'features':>8} {'median KL bits':>14} {'KL < 1 bit':>10} {'max bits':>8}")
        for r in rows:
            lo, hi = r["band"]
            kl_text = "-" if r["median_kl_bits"] is None else f"{r['median_kl_bits']:.2f}"
            under = "-" if r["share_under_1_bit"] is None else f"{r['share_under_1_bit']:.0%}"
            top = "-" if r["median_max_bits"] is None else f"{r['median_max_bits']:.1f}"
            print(f"{f'[{lo:g}, {hi:g})':>16} {r['features']:>8} {kl_text:>14} {under:>10} {top:>8}")
        print(
            "densest: "
            + ", ".join(
                f"#{d['feature']} p={d['frequency']:.2f} KL={d['kl_bits']:.2f}"
                for d in result["saes"][hook]["densest"][:5]
            )
        )
    out = HERE / "results" / f"density_{args.model}.json"
    out.parent.mkdir(exist_ok=True)
    write_result(out, result)
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
