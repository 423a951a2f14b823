"""The HTML report of ``qwenscope demo``: one self-contained page that links to the dashboard pages it mentions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenscope.features.dashboard import _e, _page, context_html
from qwenscope.features.density import density_text


def _feature_link(fid: int) -> str:
    return f'<a href="features/features/{fid}.html">#{fid}</a>'


def _prompt_section(prompt: str, rows: list[tuple[int, float, str]], store: Any, tokens_acts: Any) -> str:
    from qwenscope.demo import meaning

    tokens, acts = tokens_acts
    top = rows[0][0] if rows else None
    shaded = context_html(tokens, acts, max(acts) if acts else 1.0) if top is not None else _e(prompt)
    items = "".join(
        f"<tr><td>{_feature_link(f)}</td><td class=num>{a:.1f}</td><td><span class=tok>{_e(t)}</span>"
        f"</td><td class=num>{_density(store, f)}</td><td>{_e(meaning(store.feature(f)))}</td></tr>"
        for f, a, t in rows
    )
    return (
        f"<div class=ctx>{shaded}</div><p class=meta>shaded by feature {_feature_link(top) if top else '-'}"
        f" (the prompt's strongest)</p><table><tr><th>feature</th><th class=num>peak</th><th>at token</th>"
        f"<th class=num>density</th><th>what it means</th></tr>{items}</table>"
    )


def _density(store: Any, fid: int) -> str:
    return density_text(float(store.frequencies()[fid]))


def _feature_acts(model, tokenizer, sae, hook: str, text: str, fid: int) -> tuple[list[str], list[float]]:
    import torch

    from qwenscope.features.text import token_text
    from qwenscope.models.capture import get_activations

    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        acts = sae.encode(get_activations(model, batch, [hook])[hook][0].to(sae.device))[:, fid]
    tokens = token_text(tokenizer).pieces(batch["input_ids"][0].tolist())
    values = [float(a) for a in acts]
    values[0] = 0.0  # position 0 is the attention sink, never scored
    return tokens, values


def write_report(
    out: Path,
    cfg: Any,
    store: Any,
    read: list,
    hits: list,
    chosen: Any,
    texts: tuple[str, str],
    model: Any,
    tokenizer: Any,
    sae: Any,
    hook: str,
) -> Path:
    """Write ``out/report.html``; return its path."""
    from qwenscope import demo_texts
    from qwenscope.demo import meaning

    parts = [
        f"<h1>qwenscope demo</h1><p class=meta>model {_e(cfg.model)} · SAE {_e(cfg.sae or 'shipped')} at "
        f"{_e(hook)} · d_sae {sae.d_sae} · feature store: {store.meta.get('n_tokens', 0):,} tokens of "
        f"{_e(store.meta.get('dataset'))} · density: the share of those tokens a feature fires on; features "
        f"denser than {density_text(cfg.max_density)} are left out · "
        "<a href='features/index.html'>all features shown</a></p>",
        "<h2>1. The strongest features of a few prompts</h2>",
    ]
    for prompt, rows in read:
        fid = rows[0][0] if rows else 0
        parts.append(_prompt_section(prompt, rows, store, _feature_acts(model, tokenizer, sae, hook, prompt, fid)))
    rows = "".join(
        f"<tr><td>{_feature_link(h.feature)}{' ★' if h is chosen else ''}</td><td class=num>{h.rate_pos:.1%}</td>"
        f"<td class=num>{h.rate_neg:.1%}</td><td class=num>{h.mean_pos:.2f}</td><td class=num>{h.mean_neg:.2f}</td>"
        f"<td class=num>{_density(store, h.feature)}</td><td>{_e(meaning(store.feature(h.feature)))}</td></tr>"
        for h in hits + ([chosen] if chosen not in hits else [])
    )
    parts.append(
        f"<h2>2. Contrastive search: {_e(demo_texts.CONCEPT)} vs other texts</h2><p class=meta>"
        f"{len(demo_texts.POSITIVE)} positive and {len(demo_texts.NEGATIVE)} negative texts, ranked by "
        "firing-rate difference; ★ the feature steered below (of the first 16, the one whose steering "
        "makes the positive texts most likely against the negative ones)</p><table><tr><th>feature</th>"
        "<th class=num>rate +</th><th class=num>rate −</th><th class=num>mean +</th><th class=num>mean −</th>"
        f"<th class=num>density</th><th>what it means</th></tr>{rows}</table>"
    )
    example = demo_texts.POSITIVE[0]
    parts.append(
        "<p class=meta>the chosen feature on a positive text:</p><div class=ctx>"
        + context_html(
            *_feature_acts(model, tokenizer, sae, hook, example, chosen.feature),
            max(store.feature(chosen.feature).max_act, 1e-6),
        )
        + "</div>"
    )
    plain, steered = texts
    parts.append(
        f"<h2>3. Steering with {_feature_link(chosen.feature)} at {cfg.strength:g}× the residual's "
        f"typical size</h2><p class=meta>prompt: <span class=tok>{_e(demo_texts.STEER_PROMPT)}</span>, "
        f"greedy, {cfg.max_new_tokens} tokens</p><table><tr><th>unsteered</th><th>steered</th></tr>"
        f"<tr><td class=ctx>{_e(plain)}</td><td class=ctx>{_e(steered)}</td></tr></table>"
    )
    path = out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(_page("qwenscope demo", "\n".join(parts)), encoding="utf-8")
    return path
