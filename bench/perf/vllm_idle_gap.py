"""Why the plugin's vLLM server, unsteered, ran faster than plain vLLM: the same unsteered load on servers that differ
in one thing each (``vllm_serve.py`` measured plugin idle / plain at 1.06-1.12). The answer (results page vllm-plugin):
identical servers differ that much on a shared CPU host, so server-to-server ratios hold to about +-10% there.

- ``plain``: vLLM's OpenAI server as ``vllm_serve.py`` starts it;
- ``v1``: plain with ``VLLM_USE_V2_MODEL_RUNNER=0``, which the plugin sets in every process it registers in;
- ``engine``: plain with the plugin's engine side (``QWENSCOPE_VLLM_SAES``: the op after the hooked layer, the
  scheduler's gate), no front end;
- ``direct``: the plugin's full command (engine side and the ``--middleware`` front end), started directly;
- ``plugin``: ``qwenscope serve --engine vllm``, which starts that command as its child (``vllm_serve.py``'s).

Each server is its own process, all up at once; the load (``--streams`` streams of unsteered greedy completions,
``serve.load``'s ``stream_tokens_per_s``) runs on each in turn, the order turned every repeat. Ratios to ``plain``.

    .venv/bin/python bench/perf/vllm_idle_gap.py --vllm-python .venv-vllm/bin/python      # ~25 min on this CPU

Writes bench/perf/results/vllm_idle_gap.json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from serve import load
from vllm_serve import METRIC, RESULTS, Server, alone, body, measured, model_and_sae, rotated, start_all

from qwenscope.experiment import write_result
from qwenscope.vllm_plugin.launch import MIDDLEWARE, vllm_env

logger = logging.getLogger("bench.vllm_idle_gap")
VARIANTS = ("plain", "v1", "engine", "direct", "plugin")


def commands(args: argparse.Namespace, folder: str, sae: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv without the port, environment)."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("QWENSCOPE_VLLM_", "VLLM_USE_V2"))}
    base["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)
    engine = ["--dtype", "float32", "--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.streams)]
    entry = [args.vllm_python, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", folder]
    plain = [*entry, "--served-model-name", args.name, *engine]
    steered = vllm_env({args.hookpoint: Path(sae)}, rows=64, slots=8, api_key=None, base=base)
    ours = [sys.executable, "-m", "qwenscope", "serve", "--model", args.name, "--sae", sae, "--engine", "vllm"]
    return {
        "plain": (plain, base),
        "v1": (plain, base | {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
        "engine": (plain, steered),
        "direct": ([*plain, "--host", "127.0.0.1", "--middleware", MIDDLEWARE], steered),
        "plugin": ([*ours, "--vllm-python", args.vllm_python, "--vllm-args", shlex.join(engine)], base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", default=sys.executable, help="the Python of vLLM's venv (make vllm-venv)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE of each server")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "vllm_idle_gap.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwenscope-bench-vllm-gap"))
    args = parser.parse_args()
    args.device = "cpu"
    args.features, args.strength, args.clamp = [0], 0.0, 0.0  # read by vllm_serve.steering; every request unsteered
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    args.name, folder, sae, args.hookpoint = model_and_sae(args)

    wanted = commands(args, folder, sae)
    result = measured(args, start_all({name: wanted[name] for name in args.variants}, args.work), measure)
    write_result(args.out, result)
    print(f"\nunsteered, {args.streams} streams, {METRIC}: medians of {args.repeats}")
    print(f"{'server':<8} {'tokens/s':>9} {'/ plain':>8}")
    for name in args.variants:
        ratio = result["ratios"].get(f"{name}/plain", float("nan"))
        print(f"{name:<8} {result['tokens_per_s'][name]:>9.1f} {ratio:>8.3f}")


def measure(args: argparse.Namespace, up: dict[str, Server]) -> dict[str, Any]:
    """The same texts on every server first (they must not differ), then the loads, the order turned each repeat."""
    bodies = [body(args, "idle", 0, k) for k in range(8)]
    refs = {name: alone(s.url, bodies) for name, s in up.items()}
    first = next(iter(refs.values()))
    differ = [name for name, texts in refs.items() if texts != first]
    if differ:
        logger.warning("texts differ from %s's on: %s", next(iter(refs)), ", ".join(differ))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in up}
    loads = [(name, "idle", args.streams) for name in up]
    for r in range(args.repeats):
        for name, _, _ in rotated(loads, r):
            run = load(
                up[name].url,
                args,
                refs[name],
                args.duration,
                args.warmup,
                body_of=lambda i, k: body(args, "idle", i, k),
                clients=args.streams,
            )
            runs[name].append(run)
            logger.info("run %d %-7s %7.1f tokens/s  errors %d", r, name, run[METRIC], run["errors"])
    median = {name: statistics.median(x[METRIC] for x in rs) for name, rs in runs.items()}
    ratios = {f"{n}/plain": median[n] / median["plain"] for n in up if "plain" in median}
    return {"texts_differ": differ, "tokens_per_s": median, "ratios": ratios, "runs": runs}


if __name__ == "__main__":
    main()
