"""Steered serving at engine speed: vLLM with the qwenscope plugin against plain vLLM and ``qwenscope serve`` (HF).

Three servers, each its own process, all up at once and measured in turn (interleaved, ``--repeats`` times):

- ``plain``: vLLM's OpenAI server without the plugin;
- ``plugin``: ``qwenscope serve --engine vllm`` (vLLM, the plugin in the engine, its front end);
- ``hf``: ``qwenscope serve`` (HF ``generate``, dynamic batching up to ``--hf-max-batch`` rows).

Loads: S streams, each sending greedy completions of ``--max-tokens`` tokens back to back; after ``--warmup`` seconds,
``--duration`` seconds are measured. The figure is ``stream_tokens_per_s`` (``serve.load``): each stream's completion
tokens over the time its requests took, summed over the streams. The window's own count (the tokens of the requests
that finished inside it) moves in steps of one round of S requests, 17 tokens/s at 8 streams of 32 tokens in 15 s on
the CPU, which is the size of the differences to be measured; it is kept in the runs as ``tokens_per_s``.
``plain`` and ``idle`` (the plugin's server, unsteered requests) are the baselines; ``add`` (stream i adds its own
feature) and ``clamp2`` (stream i clamps two features, ``acts="own"``) steer every request; all at each of
``--streams``; ``hf`` (every request adds, as ``add``) and ``add`` at ``--hf-streams``. Ratios: idle, add and
clamp2 / plain per stream count, add and clamp2 / idle (steering's own cost, on the same server), add / hf at
``--hf-streams``.

Exactness first: every distinct request of the loads (8 prompts x 8 steerings per mode) goes alone to the plugin's
server and to ``hf``; the texts must be equal in fp32 (on CUDA both serve bf16, and the first differing request is
reported, not failed). During the loads every response is compared with its alone text (cross-talk: any difference).

    .venv/bin/python bench/perf/vllm_serve.py --vllm-python .venv-vllm/bin/python          # CPU, smollm2-135m, ~25 min
    python bench/perf/vllm_serve.py --device cuda                 # the GPU check: a random Qwen3-1.7B-shaped model

With ``--device cuda`` no weights are needed: a Qwen3-1.7B-shaped model with random weights and the real Qwen3
tokenizer (``bench/perf/eval_suites.py``) and a random SAE of a Qwen-Scope layer's shape (2048 -> 32768, k 50) at
resid_post.14 are written to ``--work``; the texts mean nothing, the speed does. Writes
bench/perf/results/vllm_serve[_cuda].json and .png; medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from serve import PROMPTS, free_port, load, wait_healthy  # bench/perf/serve.py's prompts and helpers

from qwenscope.experiment import write_result

RESULTS = Path(__file__).resolve().parent / "results"
METRIC = "stream_tokens_per_s"
"""What the medians and ratios are of (see the module doc)."""
N_STEERINGS = 8
"""Distinct steerings per mode: stream i uses steering i % 8 (so the rows in use stay within the table)."""
logger = logging.getLogger("bench.vllm_serve")


class Server:
    """A server in a child process, up once its /health answers."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], work: Path, port: int) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log = open(work / f"{name}.log", "w")  # noqa: SIM115 (closed in stop)
        logger.info("starting %s: %s", name, shlex.join(command))
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_healthy(self.proc, self.url, name, self.log.name, 900.0)
        except SystemExit:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start
        logger.info("%s up on %s in %.0f s", name, self.url, self.startup_seconds)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def steering(args: argparse.Namespace, mode: str, i: int) -> list[dict[str, Any]] | None:
    """Steering i (of ``N_STEERINGS``) of ``mode``: add one feature, clamp two, or none (idle)."""
    f = args.features
    j = i % N_STEERINGS
    if mode == "add":
        return [{"sae": args.hookpoint, "features": {str(f[j % len(f)]): args.strength * (1 + j % 3)}}]
    if mode == "clamp2":
        pair = {str(f[j % len(f)]): args.clamp, str(f[(j + 1) % len(f)]): 0.0}
        return [{"sae": args.hookpoint, "features": pair, "mode": "clamp", "acts": "own"}]
    return None


def body(args: argparse.Namespace, mode: str, i: int, k: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": args.name,
        "prompt": PROMPTS[(i + k) % len(PROMPTS)],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    if (s := steering(args, mode, i)) is not None:
        out["steering"] = s
    return out


def key(b: dict[str, Any]) -> str:
    return json.dumps(b, sort_keys=True)


def alone(url: str, bodies: list[dict[str, Any]]) -> dict[str, str]:
    """Each body's text, sent one at a time (greedy; a request ends at EOS or ``max_tokens``)."""
    out = {}
    with httpx.Client(timeout=900) as http:
        for b in bodies:
            reply = http.post(f"{url}/v1/completions", json=b)
            if reply.status_code != 200:
                raise SystemExit(f"{url}: {reply.status_code} {reply.text[:300]}")
            out[key(b)] = reply.json()["choices"][0]["text"]
    return out


def model_and_sae(args: argparse.Namespace) -> tuple[str, str, str, str]:
    """(the model as qwenscope serve names it, its HF folder, the SAE's folder, its hookpoint): the embedded smollm2
    and its resid_post.15 SAE on CPU, random Qwen3-1.7B-shaped weights on CUDA."""
    if args.device == "cpu":
        import qwenscope
        from qwenscope.models.load import model_source

        sae = Path(qwenscope.__file__).parent / "assets" / "saes" / "smollm2-135m" / "resid_post.15"
        return "smollm2-135m", model_source("smollm2-135m"), str(sae), "resid_post.15"
    import torch
    from eval_suites import FULL, write_model

    from qwenscope import Sae, SaeConfig

    folder, sae_dir = args.work / "qwen3-1.7b-random", args.work / "sae-w32k-l14"
    if not (folder / "config.json").exists():
        write_model(folder, FULL, torch.bfloat16, seed=0)
    if not (sae_dir / "cfg.json").exists():
        torch.manual_seed(0)
        cfg = SaeConfig(d_in=2048, d_sae=32768, k=50, activation="topk", hookpoint="resid_post.14")
        Sae(cfg).save(sae_dir)
    return str(folder), str(folder), str(sae_dir), "resid_post.14"


def servers(args: argparse.Namespace, folder: str, sae: str) -> dict[str, Server]:
    """The three servers, all serving the model as ``args.name``."""
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    seqs = max([*args.streams, args.hf_streams])
    engine = f"--dtype {dtype} --max-model-len {args.max_model_len} --max-num-seqs {seqs}"
    env = dict(os.environ)
    env.pop("QWENSCOPE_VLLM_SAES", None)  # plain vLLM: the plugin's entry point stays a no-op
    if args.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "2"  # GiB per vLLM server
    else:  # two vLLM servers and HF serve share one GPU
        engine += " --gpu-memory-utilization 0.4"
    entry = "vllm.entrypoints.launchers.api_server.entry"  # what `vllm serve` runs (it fails in vllm-cpu)
    plain = [args.vllm_python, "-m", entry, "--model", folder, "--served-model-name", args.name]
    ours = [sys.executable, "-m", "qwenscope", "serve", "--model", args.name, "--sae", sae]
    commands = {
        "plain": plain + shlex.split(engine),
        "plugin": ours + ["--engine", "vllm", "--vllm-python", args.vllm_python, "--vllm-args", engine],
        "hf": ours + ["--max-batch", str(args.hf_max_batch), "--max-new-tokens", str(args.max_tokens)],
    }
    return start_all({name: (command, env) for name, command in commands.items()}, args.work)


def start_all(commands: dict[str, tuple[list[str], dict[str, str]]], work: Path) -> dict[str, Server]:
    """name -> (argv without the port, environment): each server started on a free port and up; if one fails, those
    already up are stopped."""
    out: dict[str, Server] = {}
    try:
        for name, (command, env) in commands.items():
            port = free_port()
            out[name] = Server(name, [*command, "--port", str(port)], env, work, port)
    except BaseException:
        for s in out.values():
            s.stop()
        raise
    return out


def measured(
    args: argparse.Namespace, up: dict[str, Server], run: Callable[[argparse.Namespace, dict[str, Server]], dict]
) -> dict[str, Any]:
    """``run(args, up)``'s result with the run's config and the servers' start-up times; the servers are stopped
    afterwards, whatever happens."""
    try:
        result = run(args, up)
    finally:
        for s in up.values():
            s.stop()
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["startup_seconds"] = {name: s.startup_seconds for name, s in up.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vllm-python", default=sys.executable, help="the Python of vLLM's venv (make vllm-venv)")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--hf-streams", type=int, default=16)
    parser.add_argument("--hf-max-batch", type=int, default=16)
    parser.add_argument("--features", type=int, nargs="+", default=[1234, 77, 500, 2048, 4096, 6000, 7000, 8000])
    parser.add_argument("--strength", type=float, default=20.0, help="add: times 1..3 by steering")
    parser.add_argument("--clamp", type=float, default=30.0, help="clamp2: the first feature's target (the second: 0)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--duration", type=float, default=None, help="seconds per window (15 on CPU, 6 on CUDA)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwenscope-bench-vllm"))
    args = parser.parse_args()
    args.streams = args.streams or [1, 8, 32]
    args.duration = args.duration or (15.0 if args.device == "cpu" else 6.0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.name, folder, sae, args.hookpoint = model_and_sae(args)
    result = measured(args, servers(args, folder, sae), measure)
    stem = "vllm_serve" + ("_cuda" if args.device == "cuda" else "")
    write_result(args.out / f"{stem}.json", result)
    report(result)
    plot(result, args.out / f"{stem}.png")


def measure(args: argparse.Namespace, up: dict[str, Server]) -> dict[str, Any]:
    """Exactness (each request alone), then the loads, interleaved over the repeats."""
    bodies = [body(args, m, i, k) for m in ("idle", "add", "clamp2") for i in range(N_STEERINGS) for k in range(8)]
    bodies = list({key(b): b for b in bodies}.values())
    plugin, hf = alone(up["plugin"].url, bodies), alone(up["hf"].url, bodies)
    differ = [b for b in bodies if plugin[key(b)] != hf[key(b)]]
    logger.info("alone: %d of %d requests give hf's text through the plugin", len(bodies) - len(differ), len(bodies))
    plain = alone(up["plain"].url, [body(args, "idle", 0, k) for k in range(len(PROMPTS))])
    loads = [
        (server, mode, s)
        for s in args.streams
        for server, mode in (("plain", "idle"), ("plugin", "idle"), ("plugin", "add"), ("plugin", "clamp2"))
    ]
    loads = list(dict.fromkeys([*loads, ("plugin", "add", args.hf_streams), ("hf", "add", args.hf_streams)]))
    refs = {"plain": plain, "plugin": plugin, "hf": hf}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.repeats):
        for server, mode, streams in rotated(loads, r):
            label = f"{server if server != 'plugin' else mode}@{streams}"
            run = load(
                up[server].url,
                args,
                refs[server],
                args.duration,
                args.warmup,
                body_of=lambda i, k, m=mode: body(args, m, i, k),
                clients=streams,
            )
            runs.setdefault(label, []).append(run)
            logger.info(
                "run %d %-10s %7.1f tokens/s (window %.1f)  errors %d  cross-talk %d",
                r,
                label,
                run[METRIC],
                run["tokens_per_s"],
                run["errors"],
                run["crosstalk"],
            )
    return summarize(args, runs, len(bodies), differ)


def rotated(loads: list[tuple[str, str, int]], r: int) -> list[tuple[str, str, int]]:
    """Repeat ``r``'s order: the loads of each stream count turned by ``r`` places, so that no load always runs first
    in its group (with a fixed order, plain vLLM, always first, came out 5-10% below the idle plugin; turned, it
    still did, so that was not the order)."""
    groups: dict[int, list[tuple[str, str, int]]] = {}
    for item in loads:
        groups.setdefault(item[2], []).append(item)
    return [g[(j + r) % len(g)] for g in groups.values() for j in range(len(g))]


def summarize(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], n_bodies: int, differ: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over the repeats, the ratios, the exactness check and every run."""
    median = {label: statistics.median(x[METRIC] for x in rs) for label, rs in runs.items()}
    ratios = {}
    for s in args.streams:
        for mode in ("idle", "add", "clamp2"):
            ratios[f"{mode}/plain@{s}"] = median[f"{mode}@{s}"] / median[f"plain@{s}"]
        for mode in ("add", "clamp2"):  # steering's own cost: the same server, unsteered
            ratios[f"{mode}/idle@{s}"] = median[f"{mode}@{s}"] / median[f"idle@{s}"]
    ratios[f"add/hf@{args.hf_streams}"] = median[f"add@{args.hf_streams}"] / median[f"hf@{args.hf_streams}"]
    return {
        "exactness": {
            "requests": n_bodies,
            "equal_to_hf": n_bodies - len(differ),
            "first_differing": differ[0] if differ else None,
            "dtype": "float32" if args.device == "cpu" else "bfloat16",
        },
        "tokens_per_s": median,
        "ratios": ratios,
        "crosstalk": {label: sum(x["crosstalk"] for x in rs) for label, rs in runs.items()},
        "errors": {label: sum(x["errors"] for x in rs) for label, rs in runs.items()},
        "runs": runs,
    }


def report(result: dict[str, Any]) -> None:
    ex = result["exactness"]
    print(f"\nexactness ({ex['dtype']}): {ex['equal_to_hf']} of {ex['requests']} requests give hf's text alone")
    print(f"{'load':<12}{'tokens/s':>10}{'cross-talk':>12}{'errors':>8}")
    for label, tps in result["tokens_per_s"].items():
        print(f"{label:<12}{tps:>10.1f}{result['crosstalk'][label]:>12}{result['errors'][label]:>8}")
    print(f"\n{'ratio':<18}{'':>8}")
    for label, r in result["ratios"].items():
        print(f"{label:<18}{r:>8.2f}")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["tokens_per_s"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 3.6))
    for j, label in enumerate(labels):
        runs = [r[METRIC] for r in result["runs"][label]]
        ax.scatter([j] * len(runs), runs, color="grey", s=12, zorder=3)
        colour = {"plain": "0.6", "idle": "C0", "add": "C1", "clamp2": "C2", "hf": "C3"}[label.split("@")[0]]
        ax.bar(j, result["tokens_per_s"][label], color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("completion tokens / s")
    ax.set_title(f"{result['config']['device']}: plain vLLM, the plugin (idle / add / clamp2) and hf (bars: medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
