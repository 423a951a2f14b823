r"""Recipe: evaluate a Qwen-Scope release layer by layer (core + probing + random baselines) and write one table.

Each layer's SAE goes through ``qwenscope eval`` (``run_eval``) at ``resid_post.<layer>``, ``--layers-per-run``
layers per run (one forward serves them all), with the suites of ``--suite``. One row per layer: explained variance
and CE loss recovered beside the random-weight SAE's, k-sparse probing accuracy at k = 1 and 20 beside the random
SAE's and the full residual probe. On a GPU (the Qwen-Scope backbones are 1.7B-35B parameters):

    python experiments/sae_evaluation/evaluate_release.py --release Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50 \
        --device cuda --probe-tasks all
    # a local copy of a release (a folder named like the release, layer<N>.sae.pt files) and its backbone:
    python experiments/sae_evaluation/evaluate_release.py --release path/to/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50 \
        --model path/to/Qwen3-1.7B-Base --layers 0,7,14,21,27

Writes results/<release name>/table.json, table.md and each run's eval.json under results/<release name>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate import EvalConfig, run_eval
from qwenscope.experiment import write_result
from qwenscope.sae.releases import find_release

HERE = Path(__file__).resolve().parent
COLUMNS = (
    ("explained_variance", "EV"),
    ("explained_variance_random", "EV random"),
    ("ce_loss_recovered", "CE recovered"),
    ("ce_loss_recovered_random", "CE rec. random"),
    ("sae@1", "k=1 SAE"),
    ("random@1", "k=1 random"),
    ("sae@20", "k=20 SAE"),
    ("random@20", "k=20 random"),
    ("resid_full", "full probe"),
)


def layer_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """hookpoint -> the table's figures, from one run_eval result (missing suites give None)."""
    rows: dict[str, dict[str, Any]] = {}
    core, rand = results.get("hookpoints", {}), results.get("random", {}).get("hookpoints", {})
    probing = results.get("probing", {}).get("hookpoints", {})
    for hp in {**core, **probing}:
        row: dict[str, Any] = {
            "explained_variance": core.get(hp, {}).get("explained_variance"),
            "explained_variance_random": rand.get(hp, {}).get("explained_variance"),
            "ce_loss_recovered": core.get(hp, {}).get("ce_loss_recovered"),
            "ce_loss_recovered_random": rand.get(hp, {}).get("ce_loss_recovered"),
        }
        summary = probing.get(hp, {}).get("summary", {})
        for key in ("sae@1", "random@1", "sae@20", "random@20", "resid_full"):
            row[key] = summary.get(key, {}).get("accuracy")
        rows[hp] = row
    return rows


def markdown(name: str, rows: dict[str, dict[str, Any]]) -> str:
    head = "| layer | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [f"# {name}", "", head, "|" + "---|" * (len(COLUMNS) + 1)]
    for hp, row in sorted(rows.items(), key=lambda kv: int(kv[0].rsplit(".", 1)[-1])):
        cells = " | ".join("-" if row[k] is None else f"{row[k]:.3f}" for k, _ in COLUMNS)
        lines.append(f"| {hp.rsplit('.', 1)[-1]} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="a Qwen-Scope repo id or a local folder named like one")
    parser.add_argument("--model", default="", help="the backbone (default: the release's, from the hub)")
    parser.add_argument("--layers", default="all", help="comma-separated layers, or all")
    parser.add_argument("--layers-per-run", type=int, default=4)
    parser.add_argument("--suite", default="core,probing,random")
    parser.add_argument("--dataset", default="dataset-build:multi")
    parser.add_argument("--n-tokens", type=int, default=16_384)
    parser.add_argument("--probe-tasks", default="cpu")
    parser.add_argument("--probe-train", type=int, default=512)
    parser.add_argument("--probe-test", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    name = Path(args.release.rstrip("/")).name
    release = find_release(name)  # None: a folder of the release layout that is no published release
    if release is None and (args.layers == "all" or not args.model):
        raise QwenscopeError(
            f"{name} is not a published Qwen-Scope release: pass --model (its backbone) and --layers (which layers)"
        )
    model = args.model or release.backbone  # release is known here unless --model and --layers are given
    layers = [int(x) for x in args.layers.split(",")] if args.layers != "all" else list(range(release.n_layers))
    out = Path(args.out) if args.out else HERE / "results" / name
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(layers), args.layers_per_run):
        group = layers[start : start + args.layers_per_run]
        cfg = EvalConfig(
            sae=args.release,
            model=model,
            hookpoints=",".join(f"resid_post.{layer}" for layer in group),
            dataset=args.dataset,
            n_tokens=args.n_tokens,
            suite=args.suite,
            probe_tasks=args.probe_tasks,
            probe_train=args.probe_train,
            probe_test=args.probe_test,
            device=args.device,
            out=str(out / f"layers-{group[0]}-{group[-1]}"),
        )
        rows.update(layer_rows(run_eval(cfg)))
        (out / "table.md").write_text(markdown(name, rows))
    result = {"release": args.release, "model": model, "suite": args.suite, "rows": rows}
    write_result(out / "table.json", result)
    print(markdown(name, rows))
    return result


if __name__ == "__main__":
    main()
