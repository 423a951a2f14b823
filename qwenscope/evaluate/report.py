"""Write evaluation results: ``eval.json`` (the dict as returned), ``eval.png`` (the core suite: bars per hookpoint,
beside the random-weight baseline when there is one), ``eval_probing.png`` (accuracy against k) and text tables.

The plot uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works headless and
leaves an interactive session's backend alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.util.atomic import atomic_write
from qwenscope.util.htmlpage import figure

JSON_FILE = "eval.json"
PLOT_FILE = "eval.png"
PROBING_PLOT_FILE = "eval_probing.png"
PROBE_METHODS = (("sae", "SAE latents"), ("random", "random-weight SAE"), ("resid_topk", "residual dimensions"))

# (key in a hookpoint's results, panel title, scale applied before plotting, fixed y-range or None)
PANELS: tuple[tuple[str, str, float, tuple[float, float] | None], ...] = (
    ("explained_variance", "explained variance", 1.0, (0.0, 1.0)),
    ("ce_loss_recovered", "CE loss recovered", 1.0, (0.0, 1.0)),
    ("l0", "L0 (active features / token)", 1.0, None),
    ("dead_fraction", "dead features (%)", 100.0, None),
)

# (key, column header, format) for the text table
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("explained_variance", "expl.var", "{:.4f}"),
    ("cosine_similarity", "cos", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_fraction", "dead%", "{:.2%}"),
    ("dense_fraction", "dense%", "{:.2%}"),
    ("ce_clean", "CE clean", "{:.4f}"),
    ("ce_sae", "CE sae", "{:.4f}"),
    ("ce_zero", "CE zero", "{:.4f}"),
    ("ce_loss_recovered", "recovered", "{:.4f}"),
    ("delta_lm_loss", "ΔLM loss", "{:.4f}"),
    ("kl_div", "KL", "{:.4f}"),
)


def _hookpoints(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hps = results.get("hookpoints")
    if not isinstance(hps, dict) or not hps:
        raise QwenscopeError("results hold no hookpoints; pass the dict returned by evaluate_saes")
    return hps


def _core_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The core suite's hookpoints, then their random baselines as "<hookpoint> random"."""
    hps = dict(_hookpoints(results))
    for name, res in results.get("random", {}).get("hookpoints", {}).items():
        hps[f"{name} random"] = res
    return hps


def _suite_rows(block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(row name, the part to print, its hookpoint's result) of a suite that nests each random baseline under
    ``"random"`` in its hookpoint's result (absorption, autointerp)."""
    for hp, res in block["hookpoints"].items():
        yield hp, res, res
        if res.get("random") is not None:
            yield f"{hp} random", res["random"], res


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width table: one row per hookpoint (and per random baseline), the main metrics as columns ("-" where
    undefined)."""
    hps = _core_rows(results)
    width = max(len("hookpoint"), *(len(h) for h in hps))
    lines = [f"{'hookpoint':<{width}}" + "".join(f"{head:>11}" for _, head, _ in COLUMNS)]
    for name, res in hps.items():
        cells = [fmt.format(res[key]) if res.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def format_probing(probing: dict[str, Any]) -> str:
    """Mean test accuracy over the probing tasks: one row per hookpoint and method, one column per k."""
    ks = probing["ks"]
    lines = [f"k-sparse probing, {len(probing['tasks'])} tasks, {probing['pooling']} pooling: mean test accuracy"]
    width = max(len(h) for h in probing["hookpoints"]) + 22
    lines.append(f"{'hookpoint / method':<{width}}" + "".join(f"{f'k={k}':>8}" for k in ks) + f"{'full':>8}")
    for hp, res in probing["hookpoints"].items():
        summary = res["summary"]
        full = f"{summary['resid_full']['accuracy']:.3f}"
        for method, label in PROBE_METHODS:
            if f"{method}@{ks[0]}" not in summary:
                continue
            cells = "".join(f"{summary[f'{method}@{k}']['accuracy']:>8.3f}" for k in ks)
            lines.append(f"{f'{hp} {label}':<{width}}{cells}{full if method == 'resid_topk' else '':>8}")
    return "\n".join(lines)


def format_absorption(result: dict[str, Any]) -> str:
    """Mean absorption and false-negative rates over letters per hookpoint (and random weights)."""
    note = " (exploratory: a model under 1B parameters)" if result.get("exploratory") else ""
    lines = [
        f"first-letter absorption{note}: mean over letters",
        f"{'hookpoint':<24}{'probe acc':>10}{'absorbed':>10}{'false neg':>10}{'main F1':>9}{'letters':>8}",
    ]
    for name, part, res in _suite_rows(result):
        s = part["summary"]
        cells = [s["mean_absorption_rate"], s["mean_false_negative_rate"], s["mean_main_f1"]]
        text = "".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in cells)
        lines.append(f"{name:<24}{res['probe_accuracy']:>10.3f}{text}{s['letters']:>8}")
    return "\n".join(lines)


def format_autointerp(interp: dict[str, Any]) -> str:
    """Mean detection and fuzzing scores per hookpoint beside their null floors (and random weights): AUROC of p(yes)
    when the scorer answered by logprob, else balanced accuracy."""
    metric = "auroc" if interp.get("scoring") == "logprob" else "balanced_accuracy"
    keys = [f"{name}_{metric}" for name in ("detection", "detection_null", "fuzzing", "fuzzing_null")]
    lines = [
        f"auto-interpretability (explainer {interp.get('explainer', '?')}, scorer {interp.get('scorer', '?')}): "
        f"{metric.replace('_', ' ')}, mean over features",
        f"{'hookpoint':<24}{'detection':>11}{'null':>7}{'fuzzing':>9}{'null':>7}",
    ]
    for name, part, _ in _suite_rows(interp):
        cells = "".join(f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in (part["summary"][k] for k in keys))
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``results`` as indented JSON, atomically."""
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Save a PNG with one bar chart per metric of ``PANELS``, one bar per hookpoint (and per random baseline)."""
    hps = _core_rows(results)
    names = list(hps)
    fig = figure(max(10.0, 2.0 + 0.5 * len(names) * len(PANELS)), 4.0)
    for i, (key, title, scale, ylim) in enumerate(PANELS):
        ax = fig.add_subplot(1, len(PANELS), i + 1)
        values = [hps[n].get(key) for n in names]
        heights = [v * scale if v is not None else 0.0 for v in values]
        colors = ["0.6" if n.endswith(" random") else f"C{i}" for n in names]
        bars = ax.bar(range(len(names)), heights, color=colors)
        for bar, v, h in zip(bars, values, heights):
            ax.annotate(
                "n/a" if v is None else f"{h:.3g}",
                (bar.get_x() + bar.get_width() / 2, h),
                ha="center",
                va="bottom" if h >= 0 else "top",
                fontsize=8,
                xytext=(0, 2 if h >= 0 else -2),
                textcoords="offset points",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        low = min(0.0, *heights)
        high = max(ylim[1] if ylim else 0.0, *heights, 1e-9)
        pad = 0.12 * (high - low)
        ax.set_ylim(low - pad if low < 0 else 0.0, high + pad)
        if low < 0:
            ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    model = results.get("model")
    fig.suptitle(f"SAE evaluation{f' on {model}' if model else ''}: {results.get('n_tokens', '?')} tokens", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_probing(probing: dict[str, Any], path: str | Path) -> Path:
    """Save a PNG: per hookpoint, mean test accuracy against k for each method, the full-width probe as a line."""
    hps = probing["hookpoints"]
    fig = figure(max(5.0, 4.0 * len(hps)), 3.6)
    ks = probing["ks"]
    for i, (hp, res) in enumerate(hps.items()):
        ax = fig.add_subplot(1, len(hps), i + 1)
        summary = res["summary"]
        for j, (method, label) in enumerate(PROBE_METHODS):
            if f"{method}@{ks[0]}" not in summary:
                continue
            acc = [summary[f"{method}@{k}"]["accuracy"] for k in ks]
            low = [summary[f"{method}@{k}"]["accuracy_ci95"][0] for k in ks]
            high = [summary[f"{method}@{k}"]["accuracy_ci95"][1] for k in ks]
            color = "0.5" if method == "random" else f"C{j}"
            ax.plot(ks, acc, marker="o", label=label, color=color)
            ax.fill_between(ks, low, high, color=color, alpha=0.15)
        ax.axhline(summary["resid_full"]["accuracy"], color="black", linestyle="--", label="full residual probe")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel("mean test accuracy")
        ax.set_title(hp, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"k-sparse probing: {len(probing['tasks'])} tasks, {probing['pooling']} pooling", fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, ...]:
    """Write ``eval.json``, and ``eval.png`` / ``eval_probing.png`` for the suites the results hold, into
    ``out_dir`` (created if needed); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(results, out / JSON_FILE)]
    if "hookpoints" in results:
        paths.append(plot_results(results, out / PLOT_FILE))
    if "probing" in results:
        paths.append(plot_probing(results["probing"], out / PROBING_PLOT_FILE))
    return tuple(paths)
