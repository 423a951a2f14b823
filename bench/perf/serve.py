"""Load test of `qwenscope serve`: N concurrent clients for a fixed time, batched serving against one-at-a-time.

Each configuration starts `qwenscope serve` as its own process on the embedded model (default smollm2-135m with its
default SAE): "batched" (``--max-batch``, default 16, window ``--window-ms``) and "one-at-a-time" (max batch 1, the
same server otherwise). ``--clients`` threads each send greedy completions back to back; after ``--warmup`` seconds,
``--duration`` seconds are measured, ``--repeats`` times per configuration (interleaved). Client i steers request by
request with its own feature (every fourth client none), so batches mix steered and unsteered rows. Measured per
window: requests finished and their completion tokens/s; latency p50/p99 of the requests sent inside the window
(waited for to the end, so queueing counts in full); errors (any non-200 or connection error); and cross-talk: every
response is compared with the text the same request gives when served alone (measured first, one request at a time on
an idle server); any difference counts.

Then the kill check: a batched server under the same load is killed with SIGKILL mid-load, restarted on the same
port, and every reference request is sent again: the outputs must equal the references (nothing the server serves
depends on state a crash can corrupt).

    .venv/bin/python bench/perf/serve.py                       # 16 clients, 3 x 30 s per configuration, ~12 min
    .venv/bin/python bench/perf/serve.py --clients 4 --duration 5 --repeats 1     # a quick check

Writes bench/perf/results/serve.json and serve.png (``--out`` another folder); medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from qwenscope.experiment import write_result

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "The history of the printing press began",
    "Here is a short story about a lighthouse keeper:",
    "The best way to learn a new language is",
    "In the middle of the forest there was",
    "To make bread at home, first",
    "The planets of the solar system are",
    "My favourite thing about winter is",
    "Once upon a time, a small robot",
]
logger = logging.getLogger("bench.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(proc: subprocess.Popen, url: str, name: str, log: str, timeout: float) -> None:
    """Until ``url``/health answers 200; SystemExit naming ``log`` if ``proc`` exits or ``timeout`` s pass first."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{name} did not come up in {timeout:.0f} s; see {log}")


class ServerProcess:
    """`qwenscope serve` in a child process."""

    def __init__(self, args: argparse.Namespace, max_batch: int, port: int) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "qwenscope",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--batch-window-ms",
            str(args.window_ms),
            "--max-queue",
            str(4 * args.clients),
            "--max-new-tokens",
            str(args.max_tokens),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
        self.log = open(args.work / f"server-{port}-{max_batch}.log", "a")  # noqa: SIM115 (closed in stop)
        start = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_healthy(self.proc, self.url, "the server", self.log.name, 300.0)
        self.startup_seconds = time.perf_counter() - start
        logger.info("server (max batch %d) up on %s in %.1f s", max_batch, self.url, self.startup_seconds)

    def stop(self, kill: bool = False) -> None:
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def request_body(args: argparse.Namespace, client: int, k: int) -> dict[str, Any]:
    """Client ``client``'s k-th request: a prompt of the pool, greedy, its own steering (none for every fourth)."""
    body: dict[str, Any] = {
        "model": args.model,
        "prompt": PROMPTS[(client + k) % len(PROMPTS)],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    if client % 4:
        feature = args.features[client % len(args.features)]
        body["steering"] = [
            {"sae": args.sae_id, "features": {str(feature): args.strength * (1 + client % 3)}, "relative": True}
        ]
    return body


def key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def references(url: str, args: argparse.Namespace) -> dict[str, str]:
    """The text of every distinct request of the load, each served alone."""
    out: dict[str, str] = {}
    with httpx.Client(timeout=300) as http:
        for client in range(args.clients):
            for k in range(len(PROMPTS)):
                body = request_body(args, client, k)
                if key(body) not in out:
                    response = http.post(f"{url}/v1/completions", json=body)
                    response.raise_for_status()
                    out[key(body)] = response.json()["choices"][0]["text"]
    return out


def load(
    url: str,
    args: argparse.Namespace,
    refs: dict[str, str],
    duration: float,
    warmup: float = 0.0,
    stop_at: threading.Event | None = None,
    body_of: Callable[[int, int], dict[str, Any]] | None = None,
    clients: int | None = None,
) -> dict[str, Any]:
    """``clients`` (default ``args.clients``) clients sending back to back; measured over ``duration`` seconds after
    ``warmup``. Client i's k-th request is ``body_of(i, k)`` (default ``request_body(args, i, k)``).

    Throughput: completion tokens of the requests that finished inside the window, over its length; and, free of the
    window's steps of one round of requests, ``stream_tokens_per_s``: each client's completion tokens over the time
    its requests took, summed over the clients (every client sends back to back, so that is its rate), for the
    requests it started inside the window. Latency: every request that started inside the window, waited for to the
    end (clients send no new request after the window, so queued requests drain). Errors and cross-talk: every
    request."""
    latencies: list[float] = []
    per_client: dict[int, list[float]] = {}  # client -> [its tokens, its seconds] for requests started in the window
    tokens, errors, crosstalk, completed = [0], [0], [0], [0]
    messages: list[str] = []
    lock = threading.Lock()
    begin = time.perf_counter() + warmup
    end = begin + duration

    def client(i: int) -> None:
        k = 0
        with httpx.Client(timeout=900) as http:
            while time.perf_counter() < end and not (stop_at and stop_at.is_set()):
                body = body_of(i, k) if body_of else request_body(args, i, k)
                k += 1
                sent = time.perf_counter()
                try:
                    response = http.post(f"{url}/v1/completions", json=body)
                except httpx.HTTPError as e:
                    with lock:
                        errors[0] += 1
                        messages.append(f"{type(e).__name__}: {e}")
                    time.sleep(0.2)
                    continue
                done = time.perf_counter()
                with lock:
                    if response.status_code != 200:
                        errors[0] += 1
                        messages.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    data = response.json()
                    if begin <= done <= end:
                        tokens[0] += data["usage"]["completion_tokens"]
                        completed[0] += 1
                    if begin <= sent <= end:
                        latencies.append(done - sent)
                        mine = per_client.setdefault(i, [0.0, 0.0])
                        mine[0] += data["usage"]["completion_tokens"]
                        mine[1] += done - sent
                    if data["choices"][0]["text"] != refs.get(key(body)):
                        crosstalk[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients or args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "requests": completed[0],
        "tokens": tokens[0],
        "tokens_per_s": tokens[0] / duration,
        "stream_tokens_per_s": sum(t / s for t, s in per_client.values() if s > 0),
        "requests_per_s": completed[0] / duration,
        "latencies_measured": len(latencies),
        "latency_p50": statistics.median(latencies) if latencies else None,
        "latency_p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
        "errors": errors[0],
        "crosstalk": crosstalk[0],
        "error_messages": messages[:5],
    }


def kill_check(args: argparse.Namespace, refs: dict[str, str]) -> dict[str, Any]:
    """Kill a loaded server with SIGKILL, restart it on the same port, and replay the reference requests."""
    port = free_port()
    server = ServerProcess(args, args.max_batch, port)
    stop = threading.Event()
    result: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: result.update(load(server.url, args, refs, 30.0, 0.0, stop)))
    loader.start()
    time.sleep(args.kill_after)
    server.stop(kill=True)
    restarted = ServerProcess(args, args.max_batch, port)
    stop.set()
    loader.join()
    replay = references(restarted.url, args)
    restarted.stop()
    same = sum(replay[k] == refs[k] for k in refs)
    logger.info(
        "kill check: %d/%d reference requests identical after the restart (%.1f s to restart)",
        same,
        len(refs),
        restarted.startup_seconds,
    )
    return {
        "killed_after_s": args.kill_after,
        "restart_seconds": restarted.startup_seconds,
        "requests_during_kill": result.get("requests"),
        "client_errors_during_kill": result.get("errors"),
        "replayed": len(refs),
        "identical_after_restart": same,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["configs"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, label in (
        (axes[0], "tokens_per_s", "completion tokens / s"),
        (axes[1], "latency_p50", "latency p50 (s)"),
    ):
        for j, name in enumerate(names):
            runs = [r[metric] for r in results["configs"][name]["runs"] if r[metric] is not None]
            ax.scatter([j] * len(runs), runs, color="grey", s=12, zorder=3)
            ax.bar(j, results["configs"][name]["median"][metric] or 0, color=("#4c72b0", "#dd8452")[j % 2])
        ax.set_xticks(range(len(names)), names)
        ax.set_title(label)
    fig.suptitle(
        f"{results['config']['model']}, {results['config']['clients']} clients, "
        f"{results['config']['max_tokens']} tokens per request (bars: medians, dots: runs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae-id", default="smollm2-135m", help="the SAE the server loads by default (its id)")
    parser.add_argument(
        "--features",
        type=int,
        nargs="+",
        default=[3904, 1000, 2000, 5000],
        help="features the clients steer (client i: features[i %% len])",
    )
    parser.add_argument("--strength", type=float, default=0.3, help="relative strength (times 1..3 by client)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each measured window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the server (0: unset)")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds of load before the SIGKILL")
    parser.add_argument("--no-kill-check", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwenscope-bench-serve"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    configs = {"batched": args.max_batch, "one-at-a-time": 1}
    servers = {name: ServerProcess(args, batch, free_port()) for name, batch in configs.items()}
    try:
        refs = references(servers["batched"].url, args)
        logger.info("%d distinct requests served alone as references", len(refs))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        for r in range(args.repeats):
            for name, server in servers.items():
                run = load(server.url, args, refs, args.duration, args.warmup)
                runs[name].append(run)
                logger.info(
                    "run %d %-14s %6.1f tokens/s  p50 %.2f s  p99 %.2f s  %d requests  errors %d  cross-talk %d",
                    r,
                    name,
                    run["tokens_per_s"],
                    run["latency_p50"] or -1,
                    run["latency_p99"] or -1,
                    run["requests"],
                    run["errors"],
                    run["crosstalk"],
                )
    finally:
        for server in servers.values():
            server.stop()

    def median(name: str, metric: str) -> float | None:
        values = [run[metric] for run in runs[name] if run[metric] is not None]
        return statistics.median(values) if values else None

    metrics = ("tokens_per_s", "requests_per_s", "latency_p50", "latency_p99")
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "references": len(refs),
        "configs": {
            name: {
                "max_batch": configs[name],
                "runs": runs[name],
                "median": {m: median(name, m) for m in metrics},
                "errors": sum(r["errors"] for r in runs[name]),
                "crosstalk": sum(r["crosstalk"] for r in runs[name]),
            }
            for name in configs
        },
    }
    batched, single = (results["configs"][n]["median"]["tokens_per_s"] for n in ("batched", "one-at-a-time"))
    results["throughput_ratio"] = batched / single if single else None
    if not args.no_kill_check:
        results["kill_check"] = kill_check(args, refs)
    write_result(args.out / "serve.json", results)
    plot(results, args.out / "serve.png")
    print(f"\n{'':16}{'tokens/s':>10}{'p50 s':>8}{'p99 s':>8}{'errors':>8}{'x-talk':>8}")
    for name, c in results["configs"].items():
        m = c["median"]
        print(
            f"{name:16}{m['tokens_per_s']:10.1f}{m['latency_p50'] or 0:8.2f}{m['latency_p99'] or 0:8.2f}"
            f"{c['errors']:8d}{c['crosstalk']:8d}"
        )
    ratio = results["throughput_ratio"]
    print(f"batched / one-at-a-time throughput: {ratio if ratio else float('nan'):.2f}x (medians of {args.repeats})")
    if "kill_check" in results:
        k = results["kill_check"]
        print(f"kill check: {k['identical_after_restart']}/{k['replayed']} identical after a SIGKILL and restart")
    print(f"wrote {args.out / 'serve.json'} and serve.png")


if __name__ == "__main__":
    main()
