"""Pieces of the self-contained HTML reports (benchmarks, classify): a page style, escaping, numbers, and matplotlib
figures embedded as base64 PNGs (an Agg canvas, no pyplot, so nothing global changes and the file needs nothing
beside it)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.util.atomic import atomic_write

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
    "vertical-align:top;font-size:14px}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:"
    "tabular-nums}img{max-width:100%}.meta{color:#666}.ctx{font-family:monospace;font-size:12px;"
    "white-space:pre-wrap;max-width:520px}"
)
"""The reports' CSS."""


def write_page(path: str | Path, title: str, parts: Sequence[str]) -> Path:
    """Write a self-contained HTML page (``STYLE``, ``title``, the HTML ``parts`` in order) atomically; its path."""
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{''.join(parts)}\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def escape(text: Any) -> str:
    """``text`` as HTML text or attribute value (tokens and labels can hold ``<script>``)."""
    return html.escape(str(text), quote=True)


def num(x: Any, fmt: str = "{:.3f}") -> str:
    """A number for a table cell; "-" for None or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (a one-line error when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise QwenscopeError("plotting needs matplotlib; pip install matplotlib") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_img(fig: Any) -> str:
    """An ``<img>`` tag holding ``fig`` as a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'
