"""``qwenscope benchmarks list | footprint | overlap | redundancy | compress``.

    qwenscope benchmarks list
    qwenscope benchmarks footprint gsm8k humaneval --hookpoint resid_post.3,resid_post.15
    qwenscope benchmarks overlap gsm8k my_eval.jsonl --model M --sae S --hookpoint H --template "Q: {question}"
    qwenscope benchmarks redundancy gsm8k gpqa-diamond aime2025 --scores "g.csv;p.csv;a.csv" --json
    qwenscope benchmarks compress gsm8k --target 0.9 --weights rarity --out gsm8k-small.jsonl --html report.html

Benchmarks are bundled names (``list``), natural subsets (``gpqa-diamond/Physics``), files (JSONL, JSON, CSV) or
``hf:NAME[:split]``. ``--json`` prints ``{model, sae, pooling, max_density, benchmarks, hookpoints: {hookpoint:
{...}}}`` where each hookpoint holds the action's measures under their own names: ``footprint`` (|F(D)| per
benchmark), ``items``, ``features_per_item``, ``dropped`` (the always-on features the density filter removed),
``unique`` (features in no other benchmark, with labels, contexts and logit lens from the feature store),
``redundancy`` (R_hat), ``coverage`` ({ns, mean, low, high}), ``performance_redundancy`` (R, with --scores), ``rho``
(Spearman rho(R, R_hat) with its bootstrap interval, three or more benchmarks with scores), ``overlap`` and
``symmetric_overlap`` ({names, matrix}), ``compression`` (greedy subset against random ones).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qwenscope import QwenscopeError
from qwenscope.features import MAX_DENSITY, check_max_density

logger = logging.getLogger(__name__)

Action = Literal["list", "footprint", "overlap", "redundancy", "compress"]


@dataclass
class BenchmarksConfig:
    action: Action
    """list: the bundled benchmarks; footprint: |F(D)| and unique features; overlap: asymmetric and symmetric overlap
    matrices; redundancy: coverage curves and R_hat (R and rho with --scores); compress: the fewest items keeping
    --target of the footprint, against random subsets."""
    benchmarks: tuple[str, ...] = ()
    """Benchmarks: bundled names, name/subset, JSONL/JSON/CSV files or hf:NAME[:split]."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str = ""
    """SAE: a folder, a file or a hub repo id; default the embedded model's shipped SAEs."""
    hookpoint: str = ""
    """Where the SAE reads, several comma-separated (one pass reads them all), e.g. resid_post.3,resid_post.15;
    default the hookpoint the SAE records."""
    template: str = ""
    """Prompt template over the records' fields, e.g. 'Question: {question}\\nAnswer:'; default: the bundled
    benchmark's own, or the --text-field of files."""
    text_field: str = "text"
    """The field holding the text of a file's records (without --template)."""
    id_field: str = ""
    """The field holding a file's item ids; default: <name>/<row>."""
    subsets: bool = False
    """Add the natural subsets of every bundled benchmark (GPQA by domain, GSM8K by answer length, AIME by exam)."""
    pooling: Literal["last", "max"] = "last"
    """F(x): the features at the item's last token (last), or firing on any of its tokens (max)."""
    max_density: float = MAX_DENSITY
    """Drop features firing on more than this share of ordinary text (the SAE's feature store); 1 keeps all."""
    batch_size: int = 16
    """Items per forward."""
    cache: bool = True
    """Reuse cached feature sets (cache_dir()/benchmarks)."""
    scores: str = ""
    """redundancy/compress: per-item scores, a CSV or lm-eval --log_samples JSONL files (one per model),
    comma-separated; with several benchmarks one group per benchmark, in order, separated by ';'."""
    metric: str = ""
    """lm-eval metric to read from sample files (acc, exact_match, ...); default the first present."""
    target: float = 0.9
    """compress: the share of the footprint the subset must keep."""
    weights: Literal["none", "rarity"] = "none"
    """compress: greedy gain per feature: none (each counts 1) or rarity (1/items having it)."""
    out: str = ""
    """compress: write the greedy subset of the (one) benchmark as JSONL with the original ids here."""
    samples: int = 200
    """Random subsets for the Monte-Carlo bands and the random baselines."""
    seed: int = 0
    """Seed of the random subsets."""
    unique: int = 10
    """Unique features listed per benchmark."""
    json: bool = False
    """Print JSON instead of tables."""
    html: str = ""
    """Also write the HTML report (coverage curves, overlap heat map, compression against random) here."""

    def __post_init__(self) -> None:
        check_max_density(self.max_density)
        if self.action != "list" and not self.benchmarks:
            raise QwenscopeError(
                f"benchmarks {self.action} needs benchmarks: bundled names (qwenscope benchmarks list) or files"
            )
        if self.action == "overlap" and len(self.benchmarks) < 2 and not self.subsets:
            raise QwenscopeError("benchmarks overlap needs two or more benchmarks")
        if not 0 < self.target <= 1:
            raise QwenscopeError(f"--target is a share of the footprint in (0, 1], got {self.target}")
        if self.samples < 1 or self.batch_size < 1 or self.unique < 0:
            raise QwenscopeError("--samples and --batch-size must be at least 1, --unique at least 0")


# ---------------------------------------------------------------- list
def list_rows() -> list[dict[str, Any]]:
    """One row per bundled benchmark: name, items, package, subsets, template, description (or the load error)."""
    from qwenscope.apps.benchmarks.data import BUNDLED, load_benchmark, subsets

    rows = []
    for name, b in BUNDLED.items():
        row: dict[str, Any] = {"name": name, "package": b.pip, "template": b.template, "description": b.description}
        try:
            bench = load_benchmark(name)
            row |= {"items": len(bench), "subsets": {k: len(v) for k, v in subsets(bench).items()}}
        except QwenscopeError as e:
            row |= {"items": None, "subsets": {}, "error": str(e)}
        rows.append(row)
    return rows


def print_list(rows: list[dict[str, Any]]) -> None:
    print(f"{'benchmark':<14} {'items':>5}  {'package':<24} subsets")
    for r in rows:
        items = "-" if r["items"] is None else str(r["items"])
        parts = ", ".join(f"{k.split('/', 1)[1]} ({n})" for k, n in r["subsets"].items()) or r.get("error", "-")
        print(f"{r['name']:<14} {items:>5}  {r['package']:<24} {parts}")
        print(f"{'':<14} {'':>5}  template: {r['template']!r}")


# ---------------------------------------------------------------- loading
def load_all(cfg: BenchmarksConfig) -> tuple[list[Any], list[Any]]:
    """The benchmarks named in ``cfg`` plus their natural subsets with --subsets (unique names), and those named."""
    from qwenscope.apps.benchmarks.data import load_benchmark, subsets

    out, tops, names = [], [], set()
    for spec in cfg.benchmarks:
        bench = load_benchmark(
            spec, template=cfg.template or None, text_field=cfg.text_field, id_field=cfg.id_field or None
        )
        tops.append(bench)
        for b in [bench, *(subsets(bench).values() if cfg.subsets else [])]:
            name, n = b.name, 2
            while name in names:
                name, n = f"{b.name}#{n}", n + 1
            b.name = name
            names.add(name)
            out.append(b)
    return out, tops


def load_score_groups(cfg: BenchmarksConfig, benches: list[Any], tops: list[Any]) -> dict[str, Any]:
    """{benchmark name: ScoreMatrix} from --scores (see its help); a subset takes its columns of its benchmark's."""
    if not cfg.scores.strip():
        return {}
    from qwenscope.apps.benchmarks.scores import load_scores

    groups = [[p.strip() for p in g.split(",") if p.strip()] for g in cfg.scores.split(";")]
    if len(groups) != len(cfg.benchmarks):
        raise QwenscopeError(
            f"--scores has {len(groups)} group(s) for {len(cfg.benchmarks)} benchmark(s); give one "
            "group of files per benchmark, separated by ';'"
        )
    loaded = {
        top.name: load_scores(paths, top.ids, metric=cfg.metric or None) for top, paths in zip(tops, groups) if paths
    }  # an empty group: no scores for that benchmark
    out = {}
    for bench in benches:
        whole = next((loaded.get(top.name) for top in tops if set(bench.ids) <= set(top.ids)), None)
        if whole is not None:
            out[bench.name] = whole.select(bench.ids)
    return out


def describer(model, tokenizer, spec, hookpoint: str):
    """Feature id -> {label, density, contexts, logit_lens} from the SAE's feature store (None without one)."""
    from qwenscope.features import find_store
    from qwenscope.models import model_name

    store = find_store(model, tokenizer, spec.sae, model_name(model), spec.sae_id, hookpoint)
    if store is None:
        return None

    def describe(i: int) -> dict[str, Any]:
        info = store.feature(i)
        return {
            "label": info.label,
            "density": info.frequency,
            "contexts": ["".join(c.tokens) for c in info.contexts[:3]],
            "logit_lens": [t for t, _ in info.promoted[:8]],
        }

    return describe


# ---------------------------------------------------------------- the command
def analyse(cfg: BenchmarksConfig) -> dict[str, Any]:
    """Feature sets of every benchmark at every hookpoint, and the measures the action asks for (JSON-ready)."""
    from qwenscope.apps.benchmarks.features import FeatureSetConfig, SaeSpec, feature_sets
    from qwenscope.apps.benchmarks.report import build_results, write_report
    from qwenscope.models import load_model_and_saes

    benches, tops = load_all(cfg)
    scores = load_score_groups(cfg, benches, tops) if cfg.action in ("redundancy", "compress") else {}
    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoint)
    model, tokenizer = parts.model, parts.tokenizer
    specs = [SaeSpec(sae, source, hook) for source, (hook, sae) in zip(parts.sources, parts.saes.items())]
    fcfg = FeatureSetConfig(
        pooling=cfg.pooling, max_density=cfg.max_density, batch_size=cfg.batch_size, cache=cfg.cache
    )
    per_bench = [feature_sets(model, tokenizer, b, specs, fcfg) for b in benches]  # one pass per benchmark
    out: dict[str, Any] = {
        "model": cfg.model,
        "sae": specs[0].sae_id,
        "pooling": cfg.pooling,
        "max_density": cfg.max_density,
        "benchmarks": [b.name for b in benches],
        "hookpoints": {},
    }
    for j, spec in enumerate(specs):
        sets = {b.name: fs[j] for b, fs in zip(benches, per_bench)}
        hook = next(iter(sets.values())).hookpoint
        named = {name: fs.matrix for name, fs in sets.items()}
        meta = {
            "model": cfg.model,
            "sae": spec.sae_id,
            "hookpoint": hook,
            "pooling": cfg.pooling,
            "max_density": cfg.max_density,
        }
        results = build_results(
            named,
            target=cfg.target,
            n_samples=cfg.samples,
            seed=cfg.seed,
            scores=scores,
            n_unique=cfg.unique,
            describe=describer(model, tokenizer, spec, hook),
            meta=meta,
            title=f"Benchmarks at {hook} ({cfg.model}, {spec.sae_id})",
        )
        if cfg.html:
            path = Path(cfg.html)
            if len(specs) > 1:
                path = path.with_name(f"{path.stem}.{hook}{path.suffix}")
            logger.info("wrote the report %s", write_report(path, results))
        measures = _measures(cfg.action, results, sets)
        measures["dropped"] = next(iter(sets.values())).meta["dropped"]
        measures["features_per_item"] = {n: float(np.asarray(m.sum(1)).mean()) for n, m in named.items()}
        out["hookpoints"][hook] = measures
        if cfg.action == "compress" and cfg.out:
            _export(cfg, benches, results, len(specs))
    return out


def _measures(action: str, results: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    b = results["benchmarks"]
    out: dict[str, Any] = {
        "items": {n: r["n_items"] for n, r in b.items()},
        "footprint": {n: r["footprint"] for n, r in b.items()},
    }
    if action == "footprint":
        out["unique"] = results["unique"]
    elif action == "overlap":
        out["overlap"], out["symmetric_overlap"] = results["overlap"], results["symmetric_overlap"]
        out["unique"] = results["unique"]
    elif action == "redundancy":
        out["redundancy"] = {n: r["redundancy"] for n, r in b.items()}
        out["coverage"] = {n: r["coverage"] for n, r in b.items()}
        if any("performance_redundancy" in r for r in b.values()):
            out["performance_redundancy"] = {
                n: r["performance_redundancy"] for n, r in b.items() if "performance_redundancy" in r
            }
        if "rho" in results:
            out["rho"] = results["rho"]
    elif action == "compress":
        out["compression"] = {
            n: {**c, "subset_ids": [sets[n].ids[i] for i in c["greedy_order"]]}
            for n, c in results["compression"].items()
        }
    return out


def _export(cfg: BenchmarksConfig, benches: list[Any], results: dict[str, Any], n_hooks: int) -> None:
    from qwenscope.apps.benchmarks.compress import export_subset

    if len(benches) != 1 or n_hooks != 1:
        raise QwenscopeError("--out exports the subset of one benchmark at one hookpoint; pass just one of each")
    order = results["compression"][benches[0].name]["greedy_order"]
    logger.info(
        "wrote %d of %d items to %s", len(order), len(benches[0]), export_subset(benches[0].items, order, cfg.out)
    )


def run_benchmarks(cfg: BenchmarksConfig) -> None:
    if cfg.action == "list":
        rows = list_rows()
        print(json.dumps(rows, indent=1)) if cfg.json else print_list(rows)
        return
    out = analyse(cfg)
    if cfg.json:
        print(json.dumps(out))
        return
    for hook, m in out["hookpoints"].items():
        print(
            f"{cfg.model} at {hook} ({out['sae']}), pooling {cfg.pooling}, max density {cfg.max_density}: "
            f"{len(m['dropped'])} always-on features dropped"
        )
        print_tables(cfg.action, m)


def print_tables(action: str, m: dict[str, Any]) -> None:
    names = list(m["items"])
    width = max(12, *map(len, names))
    head = f"  {'benchmark':<{width}} {'items':>6} {'|F(D)|':>7} {'|F(x)|':>7}"
    extra = {
        "redundancy": f" {'R_hat':>6} {'c_n at 10%':>10} {'R':>6}",
        "compress": f" {'greedy':>6} {'random (95%)':>16} {'kept':>5} {'random kept':>11} {'tau':>5}",
    }
    print(head + extra.get(action, ""))
    for n in names:
        row = f"  {n:<{width}} {m['items'][n]:>6} {m['footprint'][n]:>7} {m['features_per_item'][n]:>7.1f}"
        if action == "redundancy":
            cov = m["coverage"][n]
            at = int(np.searchsorted(cov["ns"], max(1, round(0.1 * m["items"][n]))))
            r = m.get("performance_redundancy", {}).get(n)
            row += f" {m['redundancy'][n]:>6.3f} {cov['mean'][min(at, len(cov['mean']) - 1)]:>10.3f} "
            row += f"{'-' if r is None else f'{r:.3f}':>6}"
        if action == "compress":
            c = m["compression"][n]
            rn, cmp = c["random_needed"], c["comparison"]
            band = f"{rn['median']:.0f} ({rn['low']:.0f}-{rn['high']:.0f})"
            tau = "-" if cmp.get("tau") is None else f"{cmp['tau']:.2f}"
            row += f" {c['greedy_items']:>6} {band:>16} {cmp['kept']:>5.2f} {cmp['random_kept_mean']:>11.2f} {tau:>5}"
        print(row)
    if "rho" in m:
        r = m["rho"]
        print(f"  Spearman rho(R, R_hat) over {r['n']} benchmarks: {r['rho']:.3f} ({r['low']:.3f} to {r['high']:.3f})")
    if action == "overlap":
        for key, title in (("overlap", "overlap O(row -> col)"), ("symmetric_overlap", "symmetric overlap")):
            ov = m[key]
            print(f"\n  {title}")
            print("  " + " " * width + "".join(f" {n[:10]:>10}" for n in ov["names"]))
            for n, row in zip(ov["names"], ov["matrix"]):
                print(f"  {n:<{width}}" + "".join(f" {v:>10.3f}" for v in row))
    if action in ("footprint", "overlap"):
        for n, rows in m.get("unique", {}).items():
            if rows:
                print(f"\n  features only {n} has (items having it; label / top context):")
                for r in rows:
                    what = r.get("label") or (r.get("contexts") or [""])[0]
                    print(f"    #{r['feature']:<6} {r['items']:>5}  {what!r:.90}")
