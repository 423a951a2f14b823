r"""Benchmark: the cost of one ``qwenscope::steer`` call per decoder layer, its torch body against its Triton kernel.

The vLLM plugin calls the op once after each hooked decoder layer, so what it adds to a step is this call's time
times the hooked layers. This script times it alone, without vLLM, at the shapes of Qwen3 models (hidden size d) and
of serving steps (T tokens: decode batches and prefill chunks), against two baselines in the same run:

- ``copy``: ``hidden.clone()``, the floor of any functional op (it must write T x d);
- ``mlp``: the decoder layer's MLP products at that shape (``(T, d) x (d, 2·3d)`` then ``(T, 3d) x (3d, d)``, Qwen3's
  intermediate size being 3d), the order of what one layer costs, so ``op / mlp`` is the op's share of a layer.

Three tables: ``idle`` (every token row 0: the plugin loaded, nothing steered), ``add`` (every token on one of the
table's rows, add only) and ``clamp2`` (every token's row adds and clamps two features). The table has R rows and M
slots as the server's defaults (64, 8). On CUDA each variant runs ``--iters`` calls inside one CUDA graph (as vLLM
replays them), bf16 hidden states and an fp32 table; the Triton kernel's output is checked against the torch body's
(the interpreter on CPU checks bf16 only loosely: ``tests/vllm_plugin/test_kernel.py``). On a CPU only the torch
body runs (Triton needs a GPU). It also times the host's bookkeeping before each step (``Tables.fill``: every
token's row at every hooked layer) for decode steps of 1, 8 and 32 streams.

    python bench/perf/steer_op.py --device cuda     # the device check, ~1 min
    python bench/perf/steer_op.py                   # CPU: the torch body, fp32

Writes bench/perf/results/steer_op_<device>.json.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qwenscope.experiment import add_common_args, interleaved, medians, set_threads, write_result
from qwenscope.vllm_plugin.kernel import HAVE_TRITON, steer_triton
from qwenscope.vllm_plugin.op import steer_body
from qwenscope.vllm_plugin.parse import LayerSteering, RequestSteering
from qwenscope.vllm_plugin.rows import Span, Tables
from qwenscope.vllm_plugin.table import TableConfig, add_only

HERE = Path(__file__).resolve().parent
log = logging.getLogger("steer_op")
MODES = ("idle", "add", "clamp2")


def make_case(d: int, n: int, rows: int, slots: int, mode: str, dtype: torch.dtype, device: str, seed: int) -> tuple:
    """(hidden, rows, *table) for ``mode``: rows 1.. hold random steering (``add``: add only; ``clamp2``: add and two
    clamped features), tokens spread over them in runs of 4 (a request's tokens sit together), row 0 for ``idle``."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    add = torch.randn(rows, d, generator=g) * 0.1
    enc = torch.zeros(rows, slots, d)
    dec = torch.zeros(rows, slots, d)
    bias, threshold, target = torch.zeros(rows, slots), torch.zeros(rows, slots), torch.zeros(rows, slots)
    if mode == "clamp2":
        enc[:, :2] = torch.randn(rows, 2, d, generator=g) / d**0.5
        dec[:, :2] = torch.randn(rows, 2, d, generator=g) / d**0.5
        target[:, :2] = 4.0
    add[0], enc[0], dec[0] = 0, 0, 0
    index = torch.zeros(n, dtype=torch.int32) if mode == "idle" else (torch.arange(n) // 4) % (rows - 1) + 1
    table = (add, enc, bias, threshold, dec, target)
    return (hidden.to(device), index.to(torch.int32).to(device), *(t.to(device) for t in table))


def mlp_baseline(d: int, n: int, dtype: torch.dtype, device: str) -> Callable[[], Tensor]:
    """One decoder layer's MLP products at (n, d): gate_up then down (SiLU-and-mul skipped: products only)."""
    x = torch.randn(n, d, dtype=dtype, device=device)
    gate_up = torch.randn(d, 6 * d, dtype=dtype, device=device) / d**0.5
    down = torch.randn(3 * d, d, dtype=dtype, device=device) / d**0.5
    return lambda: (x @ gate_up)[:, : 3 * d] @ down


def repeated(fn: Callable[[], Any], iters: int, graphs: bool) -> Callable[[], None]:
    """``iters`` calls of ``fn``, captured once in a CUDA graph and replayed where ``graphs``, else a plain loop."""
    if not graphs:

        def loop() -> None:
            for _ in range(iters):
                fn()

        return loop
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph (Triton compiles, cuBLAS picks its kernels)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    return graph.replay


def fill_cost(streams: int, layers: int, repeats: int, iters: int = 200) -> float:
    """Microseconds of the host's per-step bookkeeping (``Tables.fill``: every token's row, all hooked layers) for a
    decode step of ``streams`` requests, each steered by its own row; the median of ``repeats`` timings."""
    hookpoints = [f"resid_post.{i}" for i in range(layers)]
    tables = Tables(dict.fromkeys(hookpoints, 64), TableConfig(rows=max(64, streams + 1), slots=2))
    for i in range(streams):
        content = add_only(torch.full((64,), float(i)))
        tables.acquire(f"r{i}", RequestSteering(dict.fromkeys(hookpoints, LayerSteering(content, content)), []))
    index = tables.new_index(8192)
    spans = [Span(f"r{i}", i, 1, 100, 50) for i in range(streams)]

    def steps() -> None:
        for _ in range(iters):
            tables.fill(index, spans)

    return medians(interleaved({"fill": steps}, repeats, warmup=True))["fill"] / iters * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    bodies: dict[str, Callable[..., Tensor]] = {"torch": steer_body}
    if cuda and HAVE_TRITON:
        bodies["triton"] = steer_triton
    cases = []
    for d in args.d:
        for n in args.tokens:
            mlp = mlp_baseline(d, n, dtype, device)
            for mode in MODES:
                case = make_case(d, n, args.rows, args.slots, mode, dtype, device, args.seed)
                outs = {name: body(*case) for name, body in bodies.items()}
                if mode == "idle":
                    assert all(torch.equal(out, case[0]) for out in outs.values()), "idle must leave hidden as is"
                agree = None
                if "triton" in outs:
                    agree = float((outs["triton"].float() - outs["torch"].float()).abs().max())
                variants = {
                    "copy": repeated(lambda case=case: case[0].clone(), args.iters, cuda),
                    "mlp": repeated(mlp, args.iters, cuda),
                    **{
                        name: repeated(lambda body=body, case=case: body(*case), args.iters, cuda)
                        for name, body in bodies.items()
                    },
                }
                times = medians(interleaved(variants, args.repeats, warmup=True))
                us = {name: t / args.iters * 1e6 for name, t in times.items()}
                row = {"d": d, "tokens": n, "mode": mode, "us_per_call": us, "triton_vs_torch_max_abs": agree}
                row["share_of_mlp"] = {name: us[name] / us["mlp"] for name in bodies}
                cases.append(row)
                log.info(
                    "d %5d  T %5d  %-6s  %s",
                    d,
                    n,
                    mode,
                    "  ".join(f"{name} {value:8.1f} us" for name, value in us.items()),
                )
    fill = [
        {"streams": streams, "hooked_layers": layers, "us_per_step": fill_cost(streams, layers, args.repeats)}
        for streams in (1, 8, 32)
        for layers in (1, 4)
    ]
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "hidden_dtype": str(dtype),
        "table": {"rows": args.rows, "slots": args.slots, "dtype": "torch.float32"},
        "iters_per_timing": args.iters,
        "repeats": args.repeats,
        "cuda_graphs": cuda,
        "bodies": list(bodies),
        "cases": cases,
        "fill": fill,
    }


def table(result: dict[str, Any]) -> str:
    """The result as a text table: microseconds per call, and each body's share of one layer's MLP products."""
    bodies = result["bodies"]
    head = f"{'d':>5} {'T':>5} {'mode':<7}{'copy':>9}{'mlp':>10}" + "".join(f"{b:>10}{b + '/mlp':>11}" for b in bodies)
    lines = [head]
    for c in result["cases"]:
        us = c["us_per_call"]
        line = f"{c['d']:>5} {c['tokens']:>5} {c['mode']:<7}{us['copy']:>9.1f}{us['mlp']:>10.1f}"
        line += "".join(f"{us[b]:>10.1f}{c['share_of_mlp'][b]:>11.3f}" for b in bodies)
        lines.append(line)
    lines.append(
        "host bookkeeping per decode step (Tables.fill), us: "
        + ", ".join(
            f"{f['streams']} streams x {f['hooked_layers']} layers {f['us_per_step']:.1f}" for f in result["fill"]
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[2048, 4096], help="hidden sizes (Qwen3-1.7B, -8B)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 32, 512, 4096], help="tokens per step")
    parser.add_argument("--rows", type=int, default=64, help="table rows (the server's --steering-rows)")
    parser.add_argument("--slots", type=int, default=8, help="feature slots per row (--steering-slots)")
    parser.add_argument("--iters", type=int, default=50, help="calls per timing (one CUDA graph on a GPU)")
    add_common_args(parser, device="auto", threads=0, repeats=5, seed=0)
    parser.add_argument("--out", default=None, help="default: bench/perf/results/steer_op_<device>.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    result = run(args)
    print(table(result))
    out = args.out or HERE / "results" / f"steer_op_{args.device.split(':')[0]}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
