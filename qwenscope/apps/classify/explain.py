"""Why the rule said toxic: which kept feature fired on which token, as records and as an HTML view.

    records = explain(clf, model, tokenizer, saes, ["..."])
    records[0] = {"text", "prediction", "score", "tokens": [{"token", "features": [{"hookpoint", "id", "act"}]}]}
    write_html(records, "why.html")

The tokens are those the rule read (the same cut at ``max_tokens``, special tokens listed but never counted), so a
text is toxic exactly when some token here lists a feature (tested against ``Classifier.predict``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qwenscope import Sae, get_activations
from qwenscope.apps.classify.classifier import Classifier
from qwenscope.data import special_token_ids
from qwenscope.features import token_text, tokenize_texts
from qwenscope.util import atomic_write


def _token_hits(
    model: Any, clf: Classifier, saes: dict[str, Sae], ids: list[int], special: set[int]
) -> list[list[dict[str, Any]]]:
    """Per token, the kept features active there as {hookpoint, id, act}."""
    hooks = clf.rule.hookpoints
    device = next(model.parameters()).device
    acts = get_activations(model, torch.tensor([ids], device=device), hooks)
    hits: list[list[dict[str, Any]]] = [[] for _ in ids]
    counted = [t not in special for t in ids]
    if not any(counted):
        counted[0] = True  # as the pooled pass: a text of special tokens only keeps its first token
    for hook in hooks:
        kept = torch.tensor([f.id for f in clf.rule.features if f.hookpoint == hook])
        with torch.no_grad():
            z = saes[hook].encode(acts[hook][0].to(saes[hook].device))[:, kept].float().cpu()  # (tokens, kept)
        for pos, row in enumerate(z):
            if counted[pos]:
                hits[pos] += [
                    {"hookpoint": hook, "id": int(f), "act": round(float(v), 4)} for f, v in zip(kept, row) if v > 0
                ]
    return hits


def explain(
    clf: Classifier, model: Any, tokenizer: Any, saes: dict[str, Sae], texts: Sequence[str]
) -> list[dict[str, Any]]:
    """One record per text: the prediction, the score and, per token, the kept features that fired there."""
    clf.check_parts(model, saes)
    special = set(special_token_ids(tokenizer))  # the pooled pass's rule (qwenscope.features.encode_texts)
    pieces = token_text(tokenizer)
    out = []
    for text, ids in zip(texts, tokenize_texts(tokenizer, texts, clf.max_tokens)):
        hits = _token_hits(model, clf, saes, ids, special)
        fired = {(h["hookpoint"], h["id"]) for row in hits for h in row}
        tokens = [{"token": p, "features": row} for p, row in zip(pieces.pieces(ids), hits)]
        out.append({"text": text, "prediction": int(bool(fired)), "score": len(fired), "tokens": tokens})
    return out


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}
.t{white-space:pre-wrap;line-height:1.9;border:1px solid #ddd;padding:.6em;border-radius:4px}
mark{background:#f8b4b4;border-radius:3px}.pos{color:#b00020;font-weight:600}.neg{color:#2e7d32;font-weight:600}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}"""


def _text_html(record: dict[str, Any]) -> str:
    parts = []
    for tok in record["tokens"]:
        piece = html.escape(tok["token"])
        if tok["features"]:
            tip = html.escape(", ".join(f"{f['hookpoint']}#{f['id']} {f['act']:.2f}" for f in tok["features"]))
            piece = f'<mark title="{tip}">{piece}</mark>'
        parts.append(piece)
    return "".join(parts)


def render_html(
    records: Sequence[dict[str, Any]], features: Sequence[dict[str, Any]] = (), title: str = "Why toxic"
) -> str:
    """A self-contained page: each text with the tokens where a kept feature fired highlighted (hover for which)."""
    rows = "".join(
        f"<tr><td>{html.escape(str(f['hookpoint']))}#{f['id']}</td><td>{f['delta']:+.3f}</td>"
        f"<td>{f['p_pos']:.3f}</td><td>{f['p_neg']:.3f}</td>"
        f"<td>{html.escape(str(f.get('label', '')))}</td></tr>"
        for f in features
    )
    table = (
        (
            "<h2>Kept features</h2><table><tr><th>feature</th><th>Δ</th><th>P(fires|toxic)</th>"
            f"<th>P(fires|clean)</th><th>label</th></tr>{rows}</table>"
        )
        if rows
        else ""
    )
    body = "".join(
        f'<h3>text {i + 1}: <span class="{"pos" if r["prediction"] else "neg"}">'
        f"{'toxic' if r['prediction'] else 'clean'}</span> ({r['score']} feature(s) fired)</h3>"
        f'<div class="t">{_text_html(r)}</div>'
        for i, r in enumerate(records)
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{table}{body}</body></html>"
    )


def write_html(records: Sequence[dict[str, Any]], path: str | Path, features: Sequence[dict[str, Any]] = ()) -> Path:
    path = Path(path)
    page = render_html(records, features)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
