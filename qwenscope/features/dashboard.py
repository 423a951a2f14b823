"""Static HTML dashboards of a feature store: a page per feature and a searchable index, openable offline.

    write_dashboard(store, "dash/")            # dash/index.html and dash/features/<id>.html

Every page is self-contained (inline CSS, inline SVG, a few lines of inline JS on the index; no CDN, no fonts, no
links outside the folder), and every piece of text that comes from a model or a user (tokens, labels, model and
SAE names) goes through ``html.escape``: tokens can contain ``<script>``.

A feature page shows the label and its score when the store has one, its density (the share of tokens it fires on;
"always-on" above ``max_density``, see ``qwenscope.features.density``) / mean / max activation, the activation
histogram (inline SVG), the logit lens (tokens the feature's decoder row promotes and suppresses) and the
top-activating contexts, each token shaded by its activation (opacity = act / the feature's max activation, the
activation itself in the ``title`` tooltip; a character split over several tokens is shown once, with the larger
activation: ``qwenscope.features.text``). The index lists the features at or under ``max_density`` first (most
frequent first), then the always-on ones, marked.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density, density_text
from qwenscope.features.text import join_pieces

if TYPE_CHECKING:
    from qwenscope.features.store import FeatureInfo, FeatureStore

logger = logging.getLogger(__name__)

MAX_FEATURES = 1000
"""Default cap on the number of feature pages (the most frequent alive features)."""

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem auto;max-width:70rem;color:#222;
  padding:0 1rem}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}h3{font-size:.95rem;margin:.3rem 0}
a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}
.meta{color:#666;font-size:.9rem}.nav{margin-bottom:.8rem}
table{border-collapse:collapse;width:100%}th{white-space:nowrap}
th,td{padding:.25rem .5rem;border-bottom:1px solid #eee;text-align:left;
  vertical-align:top}
th.sort{cursor:pointer;user-select:none}th.sort:after{content:" \u2195";color:#aaa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.stats span{display:inline-block;margin-right:1.5rem}.stats b{font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;white-space:pre-wrap;word-break:break-word;
  padding:.35rem .5rem;border-bottom:1px solid #f0f0f0;line-height:1.6}
.ctx .max{color:#888;font-size:.75rem;margin-right:.6rem}
.t{border-radius:2px}.lens{display:flex;gap:2rem}.lens table{width:auto}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f4f4f4;border-radius:3px;padding:0 .25rem;
  white-space:pre}
.pos{color:#137333}.neg{color:#b3261e}
.dense{color:#b3261e;font-size:.8rem;font-weight:600;white-space:nowrap}tr.dense-row td{color:#888}
#q{width:100%;padding:.45rem;font-size:1rem;margin:.6rem 0;box-sizing:border-box}
svg .bar{fill:#f29900}svg .axis{stroke:#999}svg text{font-size:10px;fill:#555}
"""

_INDEX_JS = """
const q=document.getElementById('q'),body=document.getElementById('rows'),count=document.getElementById('count');
function filter(){const w=q.value.toLowerCase().trim().split(/\\s+/).filter(Boolean);let n=0;
  for(const r of body.rows){const hit=w.every(x=>r.dataset.search.includes(x));r.hidden=!hit;n+=hit;}
  count.textContent=n;}
q.addEventListener('input',filter);
document.querySelectorAll('th.sort').forEach((th,i)=>{let up=false;th.addEventListener('click',()=>{
  const col=th.cellIndex,num=th.classList.contains('num');up=!up;
  const rows=[...body.rows].sort((a,b)=>{const x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
    const c=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);return up?c:-c;});
  rows.forEach(r=>body.appendChild(r));});});
filter();
"""


@dataclass
class DashboardConfig:
    out: str
    """Folder to write the dashboard to (index.html and features/<id>.html)."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str | None = None
    """SAE: a folder, a file, a hub repo id or an embedded model name; default: the model's embedded SAE."""
    hookpoint: str | None = None
    """Where the SAE reads, e.g. resid_post.15; default: the hookpoint the SAE records."""
    features: str | None = None
    """Feature ids to write, comma-separated (e.g. 1,2,3); default: the most frequent alive features."""
    max_features: int = MAX_FEATURES
    """At most this many feature pages when --features is not given."""
    n_tokens: int | None = None
    """Tokens to compute the feature statistics over, when the store is built; default: the store's default."""
    dataset: str | None = None
    """Text for the statistics, when the store is built (a named corpus, a .txt/.jsonl file or folder, hf:NAME)."""
    max_density: float = MAX_DENSITY
    """Features firing on more than this share of tokens are always-on: marked, and listed after the others."""

    def __post_init__(self) -> None:
        check_max_density(self.max_density)
        if self.max_features < 1:
            raise QwenscopeError(f"--max-features must be at least 1, got {self.max_features}")
        if self.n_tokens is not None and self.n_tokens < 1:
            raise QwenscopeError(f"--n-tokens must be at least 1, got {self.n_tokens}")
        if self.features is not None:
            parse_ids(self.features)  # a typo fails before the model loads


def parse_ids(spec: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]."""
    try:
        ids = [int(p) for p in (s.strip() for s in spec.split(",")) if p]
    except ValueError:
        fix = "write them comma-separated, e.g. --features 1,2,3"
        raise QwenscopeError(f"cannot read feature ids {spec!r}; {fix}") from None
    if not ids:
        raise QwenscopeError("--features is empty; write feature ids comma-separated, e.g. --features 1,2,3")
    return ids


# ---------------------------------------------------------------- pieces
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n{js}</body></html>\n"
    )


def token_span(token: str, act: float, scale: float) -> str:
    """One token shaded by ``act / scale`` with the activation in its tooltip."""
    alpha = min(1.0, max(0.0, act / scale)) if scale > 0 else 0.0
    style = f' style="background:rgba(242,153,0,{alpha:.2f})"' if alpha > 0 else ""
    shown = token.replace("\n", "\u21b5\n")
    return f'<span class="t"{style} title="{act:.3f}">{_e(shown)}</span>'


def context_html(tokens: Sequence[str], acts: Sequence[float], scale: float) -> str:
    """A context with every token shaded by its activation (the pieces of a split character joined)."""
    return "".join(token_span(t, a, scale) for t, a in join_pieces(tokens, acts))


def histogram_svg(hist: Sequence[float], edges: Sequence[float], width: int = 560, height: int = 140) -> str:
    """The activation histogram as an inline SVG bar chart (tooltips give each bin's range and count)."""
    if not hist:
        return '<p class="meta">no histogram</p>'
    top, pad = max(max(hist), 1e-12), 18
    bar_w = (width - 2) / len(hist)
    bars = []
    for i, h in enumerate(hist):
        bh = (height - pad) * h / top
        lo, hi = (edges[i], edges[i + 1]) if len(edges) > i + 1 else (i, i + 1)
        bars.append(
            f'<rect class="bar" x="{1 + i * bar_w:.1f}" y="{height - pad - bh:.1f}" width="{bar_w * 0.9:.1f}"'
            f' height="{bh:.1f}"><title>{_num(lo)} to {_num(hi)}: {h:g}</title></rect>'
        )
    lo_label, hi_label = (_num(edges[0]), _num(edges[-1])) if edges else ("", "")
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="activation histogram">{"".join(bars)}'
        f'<line class="axis" x1="0" y1="{height - pad}" x2="{width}" y2="{height - pad}"/>'
        f'<text x="2" y="{height - 4}">{lo_label}</text>'
        f'<text x="{width - 2}" y="{height - 4}" text-anchor="end">{hi_label}</text></svg>'
    )


def _lens_table(title: str, rows: Sequence[tuple[str, float]], cls: str) -> str:
    cells = "".join(
        f'<tr><td><span class="tok">{_e(t)}</span></td><td class="num {cls}">{v:+.3f}</td></tr>' for t, v in rows
    )
    return f"<div><h3>{title}</h3><table>{cells or '<tr><td>-</td></tr>'}</table></div>"


def top_tokens(info: FeatureInfo, n: int = 5) -> list[str]:
    """The tokens where the feature fires hardest in its top contexts (distinct, strongest first)."""
    seen: dict[str, float] = {}
    for ctx in info.contexts:
        for tok, act in join_pieces(ctx.tokens, ctx.acts):
            if act > 0 and act > seen.get(tok, 0.0):
                seen[tok] = act
    return [t for t, _ in sorted(seen.items(), key=lambda kv: -kv[1])[:n]]


def _label_html(info: FeatureInfo) -> str:
    if not info.label:
        return '<p class="meta">no label</p>'
    score = f' <span class="meta">(score {_num(info.label_score, 2)})</span>' if info.label_score is not None else ""
    return f"<p><b>{_e(info.label)}</b>{score}</p>"


def density_html(frequency: float, max_density: float) -> str:
    """The density, marked always-on above ``max_density``."""
    mark = f' <span class="dense" title="fires on more than {density_text(max_density)} of tokens: says little about '
    mark += 'any of them">always-on</span>'
    return f"{density_text(frequency)}{mark if frequency > max_density else ''}"


def feature_body(
    info: FeatureInfo, edges: Sequence[float], meta: dict[str, Any] | None = None, max_density: float = MAX_DENSITY
) -> str:
    """Everything shown about one feature, as an HTML fragment (the styles it uses are ``STYLE``)."""
    scale = max(info.max_act, 1e-12)
    contexts = "".join(
        f'<div class="ctx"><span class="max">{c.max_act:.2f}</span>{context_html(c.tokens, c.acts, scale)}</div>'
        for c in info.contexts
    )
    contexts = contexts or '<p class="meta">no contexts</p>'
    subtitle = f'<p class="meta">{_e(_meta_line(meta))}</p>' if meta else ""
    return (
        f"<h1>Feature {info.id}</h1>{subtitle}{_label_html(info)}"
        f'<div class="stats"><span>density <b>{density_html(info.frequency, max_density)}</b> of tokens</span>'
        f"<span>count <b>{info.count}</b></span><span>mean act <b>{_num(info.mean_act)}</b></span>"
        f"<span>max act <b>{_num(info.max_act)}</b></span></div>"
        f"<h2>Activation histogram</h2>{histogram_svg(info.hist, edges)}"
        f'<h2>Logit lens</h2><div class="lens">{_lens_table("promoted", info.promoted, "pos")}'
        f"{_lens_table('suppressed', info.suppressed, 'neg')}</div>"
        f"<h2>Top contexts</h2>{contexts}"
    )


def feature_page(
    info: FeatureInfo,
    edges: Sequence[float],
    meta: dict[str, Any],
    nav: tuple[int | None, ...],
    max_density: float = MAX_DENSITY,
) -> str:
    """The HTML page of one feature; ``nav`` = (previous id, next id) among the written pages."""
    prev_id, next_id = nav
    links = ['<a href="../index.html">index</a>']
    links += [
        f'<a href="{i}.html">{word} #{i}</a>' for i, word in ((prev_id, "&larr;"), (next_id, "&rarr;")) if i is not None
    ]
    body = f'<div class="nav">{" &middot; ".join(links)}</div>{feature_body(info, edges, meta, max_density)}'
    return _page(f"Feature {info.id}", body)


def _meta_line(meta: dict[str, Any]) -> str:
    keys = ("model", "sae", "hookpoint", "n_tokens", "dataset")
    return " | ".join(f"{k} {meta[k]}" for k in keys if meta.get(k) is not None)


def _index_row(info: FeatureInfo, max_density: float) -> str:
    tokens = top_tokens(info)
    dense = info.frequency > max_density
    search = " ".join([str(info.id), info.label or "", *tokens, "always-on" if dense else ""]).lower()
    toks = " ".join(f'<span class="tok">{_e(t)}</span>' for t in tokens)
    cells = [
        f'<td class="num" data-v="{info.id}"><a href="features/{info.id}.html">{info.id}</a></td>',
        f'<td data-v="{_e(info.label or "")}">{_e(info.label or "")}</td>',
        f'<td class="num" data-v="{info.frequency}">{density_html(info.frequency, max_density)}</td>',
        f'<td class="num" data-v="{info.mean_act}">{_num(info.mean_act)}</td>',
        f'<td class="num" data-v="{info.max_act}">{_num(info.max_act)}</td>',
        f'<td data-v="{_e(" ".join(tokens))}">{toks}</td>',
    ]
    return f'<tr{" class=dense-row" if dense else ""} data-search="{_e(search)}">{"".join(cells)}</tr>'


def index_page(infos: Sequence[FeatureInfo], meta: dict[str, Any], d_sae: int, max_density: float = MAX_DENSITY) -> str:
    """The index: one row per written feature, filtered by the search box, sortable by clicking a header."""
    heads = [
        ("feature", "num"),
        ("label", ""),
        ("density", "num"),
        ("mean act", "num"),
        ("max act", "num"),
        ("top tokens", ""),
    ]
    head = "".join(f'<th class="sort {cls}">{name}</th>' for name, cls in heads)
    rows = "\n".join(_index_row(i, max_density) for i in infos)
    dense = sum(i.frequency > max_density for i in infos)
    body = (
        f'<h1>SAE features</h1><p class="meta">{_e(_meta_line(meta))} | d_sae {d_sae}</p>'
        f'<p class="meta">density: the share of the tokens a feature fires on. {dense} of these features fire on '
        f"more than {density_text(max_density)} of tokens: <span class=dense>always-on</span>, listed last "
        "(they say little about any token; type always-on to list them)</p>"
        f'<input id="q" type="search" placeholder="filter by feature id, label or token" autofocus>'
        f'<p class="meta"><span id="count">{len(infos)}</span> of {len(infos)} features shown</p>'
        f'<table><thead><tr>{head}</tr></thead><tbody id="rows">\n{rows}\n</tbody></table>'
    )
    return _page("SAE features", body, _INDEX_JS)


# ---------------------------------------------------------------- writing
def default_features(
    store: FeatureStore, max_features: int = MAX_FEATURES, max_density: float = MAX_DENSITY
) -> list[int]:
    """The alive features (they fired at least once), most frequent first, those above ``max_density`` (always-on)
    after the others; at most ``max_features``."""
    table = store.table()
    table["dense"] = table["frequency"] > max_density
    alive = table[table["count"] > 0].sort_values(["dense", "frequency", "feature"], ascending=[True, False, True])
    return [int(f) for f in alive["feature"].head(max_features)]


def write_dashboard(
    store: FeatureStore,
    out_dir: str | Path,
    features: Sequence[int] | None = None,
    max_features: int = MAX_FEATURES,
    max_density: float = MAX_DENSITY,
) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/features/<id>.html``; returns the index's path. Given
    ``features`` keep their order; always-on ones (above ``max_density``) are marked."""
    check_max_density(max_density)
    ids = list(dict.fromkeys(features)) if features is not None else default_features(store, max_features, max_density)
    bad = [i for i in ids if not 0 <= i < store.d_sae]
    if bad:
        d = store.d_sae
        raise QwenscopeError(f"feature id {bad[0]} is outside this SAE (it has {d} features: 0..{d - 1})")
    if not ids:
        raise QwenscopeError("no feature fired in the store's statistics; compute them over more tokens (--n-tokens)")
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    infos = [store.feature(i) for i in ids]
    edges = list(store.hist_edges)
    for n, info in enumerate(infos):
        nav = (ids[n - 1] if n > 0 else None, ids[n + 1] if n + 1 < len(ids) else None)
        page = feature_page(info, edges, store.meta, nav, max_density)
        (out / "features" / f"{info.id}.html").write_text(page, encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_page(infos, store.meta, store.d_sae, max_density), encoding="utf-8")
    logger.info("wrote %d feature pages to %s", len(infos), out)
    return index


def cached_store(
    model: Any,
    tokenizer: Any,
    sae: Any,
    sae_id: str,
    hookpoint: str | None = None,
    n_tokens: int | None = None,
    dataset: str | None = None,
) -> FeatureStore:
    """The SAE's cached feature store (``get_or_build_store``), built from ``n_tokens`` of ``dataset`` if needed;
    None for either means the StatsConfig default."""
    from qwenscope.features.stats import StatsConfig
    from qwenscope.features.store import get_or_build_store
    from qwenscope.models.load import model_name

    given = {"n_tokens": n_tokens, "dataset": dataset}
    cfg = StatsConfig(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    return get_or_build_store(model, tokenizer, sae, model_name(model), sae_id, cfg, hookpoint=hookpoint)


def run_dashboard(cfg: DashboardConfig) -> None:
    from qwenscope.models.load import load_model
    from qwenscope.sae.load import load_sae

    model, tokenizer = load_model(cfg.model)
    sae = load_sae(cfg.sae or cfg.model, hookpoint=cfg.hookpoint)
    store = cached_store(model, tokenizer, sae, cfg.sae or cfg.model, cfg.hookpoint, cfg.n_tokens, cfg.dataset)
    features = parse_ids(cfg.features) if cfg.features else None
    print(write_dashboard(store, cfg.out, features, cfg.max_features, cfg.max_density))
