"""The benchmark-analysis results as one dict (JSON-ready) and as one self-contained HTML page.

``build_results`` runs every measure over named feature matrices; ``write_report`` draws the page: coverage curves
with their Monte-Carlo bands, the asymmetric overlap heat map, greedy compression against random subsets, and tables
of the measures and of each benchmark's unique features (with labels, contexts and logit lens when given). The
plots are matplotlib PNGs embedded as base64 (Agg canvas, no pyplot), so the file needs nothing beside it.

The results dict (every key but ``benchmarks`` optional)::

    title: str;  meta: {model, sae, hookpoint, pooling, max_density, ...: shown as one line}
    benchmarks: {name: {n_items, footprint, redundancy, coverage: {ns, mean, low, high}, performance_redundancy?}}
    overlap: {names: [...], matrix: [[O(row -> col)]]};  symmetric_overlap: {names, matrix}
    compression: {name: {target, greedy_items, greedy_curve: [share of |F(D)| after 1..k greedy items],
                         random_needed: {median, low, high}, comparison: Comparison.as_dict()}}
    unique: {name: [{feature, items, label?, density?, contexts?: [str], logit_lens?: [str]}]}
    rho: {rho, low, high, n}: Spearman rho(R, R_hat) across benchmarks (performance redundancy given)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks.compress import compare_with_random, greedy_cover, random_needed
from qwenscope.apps.benchmarks.measures import (
    as_matrix,
    coverage_mc,
    feature_counts,
    footprint_curve,
    overlap_matrix,
    performance_redundancy,
    redundancy,
    spearman_interval,
    unique_features,
)
from qwenscope.util import escape, figure, num, png_img, write_page

__all__ = ["build_results", "write_report"]


# ---------------------------------------------------------------- results


def build_results(
    named: dict[str, Any],
    target: float = 0.9,
    n_samples: int = 200,
    seed: int = 0,
    scores: dict[str, Any] | None = None,
    n_unique: int = 20,
    describe: Callable[[int], dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    title: str = "Benchmark analysis",
) -> dict[str, Any]:
    """Every measure for the named feature matrices (one SAE), as the dict ``write_report`` draws.

    ``scores``: per-item score matrices for some benchmarks (``(n_models, n_items)`` or ``ScoreMatrix``), adding R,
    the ranking kept by the greedy subset, and rho(R, R_hat) when three or more benchmarks have them.
    ``describe(feature_id)`` returns extra columns for the unique-features table (label, density, contexts,
    logit_lens), e.g. read from the feature store.
    """
    if not named:
        raise QwenscopeError("no benchmarks given: pass at least one named feature matrix")
    scores = scores or {}
    for name in scores:
        if name not in named:
            raise QwenscopeError(f"scores given for {name!r}, which is not among the benchmarks {sorted(named)}")
    mats = {name: as_matrix(m, name) for name, m in named.items()}
    out: dict[str, Any] = {"title": title, "meta": dict(meta or {}), "benchmarks": {}, "compression": {}, "unique": {}}
    for name, m in mats.items():
        out["benchmarks"][name] = _benchmark(m, n_samples, seed, scores.get(name))
        out["compression"][name] = _compression(m, target, n_samples, seed, scores.get(name))
        others = [o for k, o in mats.items() if k != name]
        out["unique"][name] = _unique(m, others, n_unique, describe) if others else []
    if len(mats) > 1:
        names, asym = overlap_matrix(mats)
        out["overlap"] = {"names": names, "matrix": asym.tolist()}
        out["symmetric_overlap"] = {"names": names, "matrix": overlap_matrix(mats, symmetric=True)[1].tolist()}
    with_r = [b for b in out["benchmarks"].values() if "performance_redundancy" in b]
    if len(with_r) >= 3:
        rho, low, high = spearman_interval(
            [b["performance_redundancy"] for b in with_r], [b["redundancy"] for b in with_r], seed=seed
        )
        out["rho"] = {"rho": rho, "low": low, "high": high, "n": len(with_r)}
    return out


def _benchmark(m: Any, n_samples: int, seed: int, scores: Any) -> dict[str, Any]:
    cov = coverage_mc(m, n_samples=n_samples, seed=seed)
    res = {
        "n_items": int(m.shape[0]),
        "footprint": int(np.count_nonzero(feature_counts(m))),
        "redundancy": redundancy(m),
        "coverage": cov.as_dict(),
    }
    if scores is not None:
        res["performance_redundancy"] = performance_redundancy(scores, n_samples=n_samples, seed=seed)
    return res


def _compression(m: Any, target: float, n_samples: int, seed: int, scores: Any) -> dict[str, Any]:
    order = greedy_cover(m, target=1.0)  # greedy never looks at the target: its prefixes are the smaller covers
    curve = footprint_curve(m, order) / np.count_nonzero(feature_counts(m))
    k = len(greedy_cover(m, target=target))
    needed = random_needed(m, target, n_samples=n_samples, seed=seed)
    comparison = compare_with_random(m, order[:k], n_samples=n_samples, seed=seed, scores=scores)
    return {
        "target": float(target),
        "greedy_items": k,
        "greedy_order": [int(i) for i in order[:k]],
        "greedy_curve": curve.tolist(),
        "random_needed": {
            "median": float(np.median(needed)),
            "low": float(np.percentile(needed, 2.5)),
            "high": float(np.percentile(needed, 97.5)),
        },
        "comparison": comparison.as_dict(),
    }


def _unique(
    m: Any, others: list[Any], n_unique: int, describe: Callable[[int], dict[str, Any]] | None
) -> list[dict[str, Any]]:
    counts = feature_counts(m)
    rows = []
    for fid in unique_features(m, others)[:n_unique]:
        row: dict[str, Any] = {"feature": int(fid), "items": int(counts[fid])}
        if describe is not None:
            row |= describe(int(fid))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- plots


def _coverage_plot(benchmarks: dict[str, Any]) -> str:
    fig = figure(11.0, 4.2)
    axes = fig.subplots(1, 2)
    for i, (name, b) in enumerate(benchmarks.items()):
        cov = b["coverage"]
        ns, n_items = np.asarray(cov["ns"], dtype=float), float(b["n_items"])
        for ax, x in zip(axes, (ns, ns / n_items)):
            ax.plot(x, cov["mean"], color=f"C{i % 10}", label=f"{name} (R̂ {b['redundancy']:.3f})")
            ax.fill_between(x, cov["low"], cov["high"], color=f"C{i % 10}", alpha=0.2, linewidth=0)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("items in a random subset, n (log)")
    axes[1].set_xlabel("share of the benchmark's items, n / N")
    for ax in axes:
        ax.set_ylabel("coverage c_n = |F(S)| / |F(D)|")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Coverage curves (mean of random subsets; band: 95% of single subsets)", fontsize=11)
    return png_img(fig)


def _overlap_plot(ov: dict[str, Any]) -> str:
    names, mat = list(ov["names"]), np.asarray(ov["matrix"], dtype=float)
    if mat.shape != (len(names), len(names)):
        raise QwenscopeError(
            f"the overlap matrix is {mat.shape} but names {len(names)} benchmarks: rebuild the results"
        )
    side = 2.5 + 0.8 * len(names)
    fig = figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    for (r, c), v in np.ndenumerate(mat):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("D2")
    ax.set_ylabel("D1")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Overlap O(D1 → D2) = |F(D1) ∩ F(D2)| / |F(D1)|", fontsize=10)
    return png_img(fig)


def _compression_plot(compression: dict[str, Any], benchmarks: dict[str, Any]) -> str:
    cols = min(3, len(compression))
    rows = math.ceil(len(compression) / cols)
    fig = figure(4.2 * cols, 3.4 * rows)
    for i, (name, c) in enumerate(compression.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        cov = benchmarks[name]["coverage"]
        ax.fill_between(cov["ns"], cov["low"], cov["high"], color="C7", alpha=0.3, linewidth=0)
        ax.plot(cov["ns"], cov["mean"], color="C7", label="random subsets")
        ax.plot(np.arange(1, len(c["greedy_curve"]) + 1), c["greedy_curve"], color="C3", label="greedy")
        ax.axhline(c["target"], color="black", linewidth=0.7, linestyle=":")
        ax.axvline(c["greedy_items"], color="C3", linewidth=0.7, linestyle="--")
        ax.axvline(c["random_needed"]["median"], color="C7", linewidth=0.7, linestyle="--")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(
            f"{name}: {c['greedy_items']} vs {c['random_needed']['median']:.0f} items for {c['target']:.0%}", fontsize=9
        )
        ax.set_xlabel("items (log)", fontsize=8)
        ax.set_ylabel("share of |F(D)| kept", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, loc="lower right")
    return png_img(fig)


# ---------------------------------------------------------------- HTML


def _measures_table(results: dict[str, Any]) -> str:
    head = (
        "<tr><th>benchmark</th><th>items</th><th>|F(D)|</th><th>R̂</th><th>R</th><th>c at 10% of items</th>"
        "<th>greedy items</th><th>random items (median)</th><th>greedy / random</th><th>kept by greedy</th>"
        "<th>random same size</th><th>τ greedy</th><th>τ random</th></tr>"
    )
    rows = []
    for name, b in results["benchmarks"].items():
        c = results.get("compression", {}).get(name)
        cov = b["coverage"]
        at10 = cov["mean"][min(len(cov["mean"]) - 1, max(0, math.ceil(0.1 * b["n_items"]) - 1))]
        cells = [
            escape(name),
            b["n_items"],
            b["footprint"],
            num(b["redundancy"]),
            num(b.get("performance_redundancy")),
            num(at10),
        ]
        if c:
            cmp, med = c["comparison"], c["random_needed"]["median"]
            band = f"{num(cmp['random_kept_mean'])} [{num(cmp['random_kept_low'])}, {num(cmp['random_kept_high'])}]"
            cells += [
                c["greedy_items"],
                num(med, "{:.0f}"),
                num(c["greedy_items"] / med, "{:.2f}"),
                num(cmp["kept"]),
                band,
                num(cmp.get("tau")),
                num(cmp.get("random_tau_mean")),
            ]
        else:
            cells += ["-"] * 7
        rows.append(
            "<tr>" + "".join(f"<td{'' if j == 0 else ' class=num'}>{v}</td>" for j, v in enumerate(cells)) + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _matrix_table(ov: dict[str, Any]) -> str:
    names = ov["names"]
    head = "<tr><th>D1 \\ D2</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    rows = "".join(
        f"<tr><th>{escape(n)}</th>" + "".join(f"<td class=num>{v:.3f}</td>" for v in row) + "</tr>"
        for n, row in zip(names, ov["matrix"])
    )
    return f"<table>{head}{rows}</table>"


def _unique_table(name: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"<h3>{escape(name)}</h3><p class=meta>no feature unique to this benchmark</p>"
    body = "".join(
        f"<tr><td class=num>{r['feature']}</td><td class=num>{r['items']}</td><td class=num>"
        f"{num(r.get('density'), '{:.2e}')}</td><td>{escape(r.get('label') or '-')}</td>"
        f"<td class=ctx>{'<br>'.join(escape(c) for c in r.get('contexts') or []) or '-'}</td>"
        f"<td>{escape(', '.join(str(t) for t in r.get('logit_lens') or [])) or '-'}</td></tr>"
        for r in rows
    )
    return (
        f"<h3>{escape(name)}: {len(rows)} shown</h3><table><tr><th>feature</th><th>items</th><th>density</th>"
        f"<th>label</th><th>top contexts</th><th>logit lens</th></tr>{body}</table>"
    )


def write_report(path: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` (as built by ``build_results``) as one self-contained HTML file; returns its path."""
    benchmarks = results.get("benchmarks")
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise QwenscopeError("results hold no benchmarks: pass the dict returned by build_results")
    title = results.get("title") or "Benchmark analysis"
    meta = results.get("meta") or {}
    parts = [f"<h1>{escape(title)}</h1>"]
    if meta:
        parts.append("<p class=meta>" + " · ".join(f"{escape(k)}: {escape(v)}" for k, v in meta.items()) + "</p>")
    parts += ["<h2>Measures</h2>", _measures_table(results)]
    if rho := results.get("rho"):
        parts.append(
            f"<p>Spearman ρ(R, R̂) over {rho['n']} benchmarks: <b>{num(rho['rho'])}</b> "
            f"(95% bootstrap interval {num(rho['low'])} to {num(rho['high'])})</p>"
        )
    parts += ["<h2>Coverage</h2>", _coverage_plot(benchmarks)]
    if ov := results.get("overlap"):
        parts += ["<h2>Overlap</h2>", _overlap_plot(ov)]
        if sym := results.get("symmetric_overlap"):
            parts += ["<p>Symmetric overlap |F(D1) ∩ F(D2)| / min(|F(D1)|, |F(D2)|):</p>", _matrix_table(sym)]
    if comp := results.get("compression"):
        missing = [n for n in comp if n not in benchmarks]
        if missing:
            raise QwenscopeError(f"compression results for {missing[0]!r}, which is not among the benchmarks")
        parts += ["<h2>Compression against random subsets</h2>", _compression_plot(comp, benchmarks)]
    if unique := results.get("unique"):
        parts.append("<h2>Features unique to each benchmark</h2>")
        parts += [_unique_table(name, rows) for name, rows in unique.items()]
    return write_page(path, title, parts)
