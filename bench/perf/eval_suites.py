r"""Benchmark: the wall-clock time of every ``qwenscope eval`` suite on one Qwen-Scope-size layer (a device check).

No Qwen weights are reachable here, so the model is a Qwen3-1.7B-shaped ``Qwen3ForCausalLM`` (28 layers, d 2048,
the real Qwen3 tokenizer) with random weights, and the SAE has a Qwen-Scope layer's shape (2048 -> 32768, TopK
k = 50) with random weights, written as ``layer14.sae.pt`` in a folder named like the release
(``SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``) so it loads through the Qwen-Scope path. Random weights give meaningless
figures but the real cost: every suite does the same work on them. Each suite runs through ``run_eval`` with its
random baseline (``--suite <suite>,random``), timed alone; the model loads once per run and its load time is
reported apart. Defaults are the suites' own (probing: every task on a GPU, the CPU subset with ``--tiny``;
autointerp: 20 features, 50 + 50 examples, the model scoring itself by p(yes)).

    python bench/perf/eval_suites.py --device cuda        # the device check (Qwen3-1.7B shape)
    python bench/perf/eval_suites.py --tiny               # on a CPU: 2 layers, d 64 -> 512, a few tokens

Writes bench/perf/results/eval_suites.json (eval_suites_tiny.json with --tiny).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from qwenscope.evaluate import EvalConfig, run_eval
from qwenscope.experiment import add_common_args, set_threads, write_result
from qwenscope.models.tokenizers import qwen3_tokenizer

HERE = Path(__file__).resolve().parent
SUITES = ("core", "probing", "absorption", "autointerp")
FULL = {"hidden_size": 2048, "num_hidden_layers": 28, "intermediate_size": 6144, "heads": 16, "kv_heads": 8}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "heads": 4, "kv_heads": 2}


def write_model(folder: Path, shape: dict[str, int], dtype: torch.dtype, seed: int) -> None:
    """A random-weight Qwen3 of ``shape`` with the real tokenizer, saved as a model folder."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        intermediate_size=shape["intermediate_size"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=128 if shape["hidden_size"] >= 1024 else 16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_sae(path: Path, d_model: int, d_sae: int, seed: int) -> None:
    """A random Qwen-Scope layer file of the real layout: W_enc (d_sae, d), W_dec (d, d_sae), b_enc, b_dec."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_sae, d_model, generator=g) / d_model**0.5
    tensors = {"W_enc": w, "W_dec": w.T.contiguous(), "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_model)}
    torch.save(tensors, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer d-64 model and a 64 -> 512 SAE (CPU check)")
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--dataset", default="dataset-build:multi")
    parser.add_argument("--n-tokens", type=int, default=0, help="core: tokens (default 65,536; 512 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--probe-tasks", default="", help="default: all (cpu with --tiny)")
    parser.add_argument("--interp-features", type=int, default=0, help="default 20 (2 with --tiny)")
    add_common_args(parser, device="auto", threads=0, seed=0, out="")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    shape, d_sae, layer = (TINY, 512, 1) if args.tiny else (FULL, 32768, 14)
    dtype = torch.float32 if args.tiny or args.device == "cpu" else torch.bfloat16
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / ("eval_suites_tiny.json" if args.tiny else "eval_suites.json")
    )
    suites = [s for s in args.suites.split(",") if s]
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_model(Path(tmp) / "model", shape, dtype, args.seed)
        name = "SAE-Res-Tiny-W1K-L0_50" if args.tiny else "SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"  # k = 50 from the name
        release = Path(tmp) / name
        release.mkdir()
        write_sae(release / f"layer{layer}.sae.pt", shape["hidden_size"], d_sae, args.seed)
        setup = time.perf_counter() - t0
        for suite in suites:
            extra: dict[str, Any] = {}
            if suite == "core":
                extra["n_tokens"] = args.n_tokens or (512 if args.tiny else 65_536)
            if suite == "probing":
                extra["probe_tasks"] = args.probe_tasks or ("cpu" if args.tiny else "all")
                if args.tiny:
                    extra |= {"probe_train": 16, "probe_test": 8}
            if suite == "autointerp":
                extra["interp_features"] = args.interp_features or (2 if args.tiny else 20)
                if args.tiny:
                    extra["interp_examples"] = 4
            if suite == "absorption" and args.tiny:
                extra["absorption_words"] = 100
            cfg = EvalConfig(
                sae=str(release / f"layer{layer}.sae.pt"),
                model=str(Path(tmp) / "model"),
                hookpoints=f"resid_post.{layer}",
                dataset=args.dataset,
                device=args.device,
                batch_size=args.batch_size,
                suite=f"{suite},random",
                out=str(Path(tmp) / "eval" / suite),
                seed=args.seed,
                **extra,
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run_eval(cfg)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[suite] = time.perf_counter() - t0
            logging.getLogger(__name__).info("%s with random: %.1f s", suite, times[suite])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {threads} threads"
    print(f"\n{'suite (with random)':<24}{'seconds':>10}   on {device}")
    for suite, seconds in times.items():
        print(f"{suite:<24}{seconds:>10.1f}")
    print(f"{'set-up (write model, SAE)':<24}{setup:>10.1f}")
    result = {
        "model_shape": shape,
        "sae": {"d_in": shape["hidden_size"], "d_sae": d_sae, "k": 50, "hookpoint": f"resid_post.{layer}"},
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "seconds": times,
        "setup_seconds": setup,
        "note": "each suite's time includes loading the model and the SAE once (run_eval)",
    }
    write_result(out, result)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
