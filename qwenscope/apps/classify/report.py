"""The classification results as one self-contained HTML page, and the comparison as a plain-text table.

``write_report(results, path)`` draws the comparison table (the feature rule and every baseline on the same test
split), F1 as K grows (the best baseline as a horizontal line), the data-efficiency curve and the cross-lingual
transfer table. Plots are matplotlib PNGs embedded as base64 (Agg canvas, no pyplot), in the house style of the
benchmark report. ``format_table(rows)`` prints the comparison for the CLI.

The results dict (JSON-ready; every key but ``comparison`` optional)::

    title: str;  meta: {model, sae, hookpoint, data, split, ...: shown as one line}
    comparison: [{method, k?, features?, precision, recall, f1, precision_ci?, recall_ci?, f1_ci?, auroc?,
                  auroc_ci?, n?}]
        one row per method, e.g. {"method": "feature rule", "k": 5} | classification_scores(...);
        k: the number of SAE features of a feature rule (rows without k are baselines);
        features: what a baseline reads, shown in the same column (an int such as 16384, or a phrase);
        *_ci: [lo, hi]; auroc None where a method has no score
    k_curve: {k: [1..10], f1: [...], f1_ci?: [[lo, hi], ...], method?: label of the line,
              baseline?: {method, f1, f1_ci?}: the horizontal line; default: the comparison row without k with the
              highest F1}
    efficiency: {fractions: [0.01, 0.1, 0.5, 1.0] (share of the discovery data), methods: {name: [f1 per fraction]},
                 f1_ci?: {name: [[lo, hi] per fraction]}, n_train?: [rows per fraction]}
    transfer: [{train, test, method, f1, f1_ci?}]: one row per (train language -> test language, method),
              drawn as a table with a row per method and a column per direction
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import QwenscopeError
from qwenscope.util import escape, figure, num, png_img, write_page

__all__ = ["format_table", "write_report"]

_METRICS = ("precision", "recall", "f1", "auroc")


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = results.get("comparison")
    if not isinstance(rows, list) or not rows:
        raise QwenscopeError(
            "results hold no comparison rows: give results['comparison'] as a list of "
            "{method, precision, recall, f1, ...}"
        )
    for row in rows:
        if not isinstance(row, dict) or "method" not in row or "f1" not in row:
            raise QwenscopeError(f"a comparison row needs at least 'method' and 'f1', got {row!r:.80}")
    return rows


def _used(row: dict[str, Any]) -> str:
    if row.get("k") is not None:
        return f"K = {row['k']}"
    return "-" if row.get("features") is None else str(row["features"])


def _with_ci(row: dict[str, Any], key: str) -> str:
    value, ci = row.get(key), row.get(f"{key}_ci")
    text = num(value)
    return text if value is None or not ci else f"{text} [{num(ci[0])}, {num(ci[1])}]"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison rows as a plain-text table with aligned columns (method, K / features, each metric with its
    interval)."""
    rows = _rows({"comparison": rows})
    head = ["method", "K / features", "precision", "recall", "F1", "AUROC"]
    body = [[str(r["method"]), _used(r), *(_with_ci(r, m) for m in _METRICS)] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


# ---------------------------------------------------------------- plots


def _best_baseline(results: dict[str, Any], curve: dict[str, Any]) -> dict[str, Any] | None:
    if curve.get("baseline"):
        return dict(curve["baseline"])
    baselines = [r for r in _rows(results) if r.get("k") is None and r.get("f1") is not None]
    return max(baselines, key=lambda r: r["f1"]) if baselines else None


def _k_plot(curve: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    k, f1 = np.asarray(curve["k"], dtype=float), np.asarray(curve["f1"], dtype=float)
    if k.shape != f1.shape or not len(k):
        raise QwenscopeError(f"k_curve has {len(k)} K values and {len(f1)} F1 values: give one F1 per K")
    fig = figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    if ci := curve.get("f1_ci"):
        lo_hi = np.asarray(ci, dtype=float)
        ax.fill_between(k, lo_hi[:, 0], lo_hi[:, 1], color="C0", alpha=0.2, linewidth=0)
    ax.plot(k, f1, "o-", color="C0", label=curve.get("method") or "feature rule")
    if baseline is not None:
        label = f"best baseline: {baseline['method']} (F1 {baseline['f1']:.3f})"
        ax.axhline(baseline["f1"], color="C3", linestyle="--", label=label)
        if bci := baseline.get("f1_ci"):
            ax.axhspan(bci[0], bci[1], color="C3", alpha=0.1, linewidth=0)
    ax.set_xticks(k)
    ax.set_xlabel("K (features kept)")
    ax.set_ylabel("F1 on the test split")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("F1 as K grows (band: bootstrap interval)", fontsize=10)
    return png_img(fig)


def _efficiency_plot(eff: dict[str, Any]) -> str:
    x = 100 * np.asarray(eff["fractions"], dtype=float)
    fig = figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, f1) in enumerate(eff["methods"].items()):
        if len(f1) != len(x):
            raise QwenscopeError(f"efficiency: {name!r} has {len(f1)} F1 values for {len(x)} fractions")
        ax.plot(x, np.asarray(f1, dtype=float), "o-", color=f"C{i % 10}", label=name)
        if ci := (eff.get("f1_ci") or {}).get(name):
            lo_hi = np.asarray(ci, dtype=float)
            ax.fill_between(x, lo_hi[:, 0], lo_hi[:, 1], color=f"C{i % 10}", alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}%" for v in x])
    ax.set_xlabel("share of the discovery data used (log)")
    ax.set_ylabel("F1 on the test split")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Data efficiency", fontsize=10)
    return png_img(fig)


# ---------------------------------------------------------------- tables


def _cells(cells: list[Any], bold: bool = False) -> str:
    tag = ("<b>", "</b>") if bold else ("", "")
    return (
        "<tr>"
        + "".join(f"<td{'' if j == 0 else ' class=num'}>{tag[0]}{v}{tag[1]}</td>" for j, v in enumerate(cells))
        + "</tr>"
    )


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    best = max((r["f1"] for r in rows if r.get("f1") is not None), default=None)
    head = (
        "<tr><th>method</th><th>K / features</th><th>precision</th><th>recall</th><th>F1</th><th>AUROC</th>"
        "<th>n</th></tr>"
    )
    body = "".join(
        _cells(
            [escape(r["method"]), escape(_used(r)), *(_with_ci(r, m) for m in _METRICS), num(r.get("n"), "{}")],
            bold=r.get("f1") is not None and r["f1"] == best,
        )
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _efficiency_table(eff: dict[str, Any]) -> str:
    fracs = list(eff["fractions"])
    n_train = eff.get("n_train") or [None] * len(fracs)
    head = (
        "<tr><th>method</th>"
        + "".join(f"<th>{f * 100:g}%{'' if n is None else f' ({n})'}</th>" for f, n in zip(fracs, n_train))
        + "</tr>"
    )
    body = "".join(_cells([escape(name), *(num(v) for v in f1)]) for name, f1 in eff["methods"].items())
    return f"<table>{head}{body}</table>"


def _transfer_table(rows: list[dict[str, Any]]) -> str:
    pairs = list(dict.fromkeys((str(r["train"]), str(r["test"])) for r in rows))
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    cell = {(str(r["method"]), str(r["train"]), str(r["test"])): _with_ci(r, "f1") for r in rows}
    head = "<tr><th>method</th>" + "".join(f"<th>{escape(a)} → {escape(b)}</th>" for a, b in pairs) + "</tr>"
    body = "".join(_cells([escape(m), *(cell.get((m, a, b), "-") for a, b in pairs)]) for m in methods)
    return f"<table>{head}{body}</table>"


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``results`` (layout in the module doc) as one self-contained HTML file; returns its path."""
    rows = _rows(results)
    title = results.get("title") or "Toxicity classification"
    parts = [f"<h1>{escape(title)}</h1>"]
    if meta := results.get("meta"):
        parts.append("<p class=meta>" + " · ".join(f"{escape(k)}: {escape(v)}" for k, v in meta.items()) + "</p>")
    parts += [
        "<h2>Comparison on the test split</h2>",
        _comparison_table(rows),
        "<p class=meta>Intervals: percentile bootstrap over the test examples. Bold: the highest F1.</p>",
    ]
    if curve := results.get("k_curve"):
        parts += ["<h2>F1 as K grows</h2>", _k_plot(curve, _best_baseline(results, curve))]
    if eff := results.get("efficiency"):
        parts += ["<h2>Data efficiency</h2>", _efficiency_plot(eff), _efficiency_table(eff)]
    if transfer := results.get("transfer"):
        missing = [r for r in transfer if not {"train", "test", "method", "f1"} <= set(r)]
        if missing:
            raise QwenscopeError(f"a transfer row needs train, test, method and f1, got {missing[0]!r:.80}")
        parts += [
            "<h2>Cross-lingual transfer</h2><p class=meta>F1 on the test language of methods fit on the "
            "train language.</p>",
            _transfer_table(transfer),
        ]
    return write_page(path, title, parts)
