"""write_dashboard on a real FeatureStore (stats of a tiny Llama whose tokenizer has a ``<script>`` token): pages,
index, escaping, no external resources; and the ``qwenscope dashboard`` command."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest
import torch
from tiny_models import tiny_config
from transformers import LlamaForCausalLM

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main
from qwenscope.errors import QwenscopeError
from qwenscope.features.dashboard import default_features, histogram_svg, parse_ids, token_span, write_dashboard
from qwenscope.features.density import MAX_DENSITY, density_text
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import FeatureStore
from qwenscope.features.text import join_pieces

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def evil_tokenizer(byte_tokenizer):
    """The byte tokenizer plus one token whose text is a script tag."""
    tokenizer = copy.deepcopy(byte_tokenizer)
    tokenizer.add_tokens([EVIL])
    return tokenizer


@pytest.fixture(scope="module")
def store(tmp_path_factory, llama, sae, docs, evil_tokenizer):
    texts = [f"{d} {EVIL} {d}" for d in docs]
    cfg = StatsConfig(
        n_tokens=2000,
        seq_len=32,
        batch_size=8,
        top_n=4,
        window_before=5,
        window_after=2,
        hist_bins=8,
        hist_min=0.01,
        hist_max=10.0,
        lens_top=3,
        progress=False,
    )
    stats = compute_feature_stats(llama, evil_tokenizer, sae, texts, cfg)
    meta = {"model": "tiny-llama", "sae": "random-sae", "dataset": "docs"}
    return FeatureStore.write(tmp_path_factory.mktemp("store") / "store", stats, evil_tokenizer, meta)


@pytest.fixture(scope="module")
def site(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("dash")
    return write_dashboard(store, out), out


class _Tags(HTMLParser):
    """Collects start tags and their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def test_a_page_per_alive_feature_by_frequency_and_the_index_links_them(site, store):
    index, out = site
    table = store.table()
    alive = table[table["count"] > 0]
    assert 0 < len(alive) < store.d_sae  # some features are dead, so the default really filters
    pages = sorted(int(p.stem) for p in (out / "features").glob("*.html"))
    assert pages == sorted(alive["feature"].tolist())
    text = index.read_text()
    links = [a["href"] for tag, a in _tags(text) if tag == "a"]
    assert links == [f"features/{i}.html" for i in default_features(store)]
    freqs = [float(table.loc[i, "frequency"]) for i in default_features(store)]
    dense = [f > MAX_DENSITY for f in freqs]
    assert any(dense) and not all(dense) and dense == sorted(dense)  # the always-on ones come last ...
    for part in ([f for f in freqs if f <= MAX_DENSITY], [f for f in freqs if f > MAX_DENSITY]):
        assert part == sorted(part, reverse=True)  # ... each part most frequent first
    rows = [a for tag, a in _tags(text) if tag == "tr" and "data-search" in a]
    assert [a.get("class") == "dense-row" for a in rows] == dense  # ... and marked
    assert [("always-on" in a["data-search"]) for a in rows] == dense
    assert all(f'data-v="{f}">{density_text(f)}' in text for f in freqs)  # every row shows its density


def test_feature_page_shows_stats_histogram_lens_and_shaded_contexts(site, store):
    _, out = site
    fid = default_features(store)[0]
    info = store.feature(fid)
    page = (out / "features" / f"{fid}.html").read_text()
    assert f"Feature {fid}" in page and "<svg" in page and page.count('class="bar"') == len(info.hist)
    assert "promoted" in page and "suppressed" in page and "tiny-llama" in page
    spans = [a for tag, a in _tags(page) if tag == "span" and a.get("class") == "t"]
    assert len(spans) == sum(len(join_pieces(c.tokens, c.acts)) for c in info.contexts) > 0
    assert f"density <b>{density_text(info.frequency)}" in page
    for span in spans:  # opacity = act / the feature's max activation
        alpha = float(re.findall(r"[\d.]+", span["style"])[-1]) if span.get("style") else 0.0
        assert alpha == pytest.approx(max(0.0, float(span["title"])) / info.max_act, abs=0.006)
    assert any(float(s["title"]) == pytest.approx(info.max_act, abs=1e-3) for s in spans)


def test_script_tokens_are_escaped_and_nothing_is_external(site):
    _, out = site
    pages = [out / "index.html", *(out / "features").glob("*.html")]
    texts = [p.read_text() for p in pages]
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in t for t in texts)  # the token is shown ...
    for text in texts:
        assert "alert(1)</script>" not in text and "<script>alert" not in text  # ... but never runs
        assert not re.search(r"https?://|//cdn|@import", text)
        for tag, attrs in _tags(text):
            assert tag not in ("link", "img", "iframe") and not attrs.get("src")
    assert sum(t.count("<script>") for t in texts) == 1  # only the index's own filter script


def test_index_search_data_has_ids_labels_and_tokens(store, tmp_path):
    fid = default_features(store)[0]
    store.set_labels({fid: ("Paris & <France>", 0.87)})
    index = write_dashboard(store, tmp_path, features=[fid]).read_text()
    rows = [a for tag, a in _tags(index) if tag == "tr" and "data-search" in a]
    assert len(rows) == 1 and rows[0]["data-search"].startswith(f"{fid} paris & <france>")
    page = (tmp_path / "features" / f"{fid}.html").read_text()
    assert "Paris &amp; &lt;France&gt;" in page and "score 0.87" in page


def test_pieces():
    span = '<span class="t" style="background:rgba(242,153,0,0.50)" title="5.000">a&lt;b</span>'
    assert token_span("a<b", 5.0, 10.0) == span
    assert "style" not in token_span("x", 0.0, 10.0)
    svg = histogram_svg([0, 2, 1], [0.01, 0.1, 1.0, 10.0])
    assert svg.count('class="bar"') == 3 and 'height="0.0"' in svg
    assert parse_ids(" 3, 1,2 ") == [3, 1, 2]
    with pytest.raises(QwenscopeError, match="cannot read feature ids"):
        parse_ids("1,x")


def test_bad_feature_ids_are_one_line_errors(store, tmp_path):
    with pytest.raises(QwenscopeError, match=r"feature id 999 is outside this SAE \(it has 96 features"):
        write_dashboard(store, tmp_path, features=[1, 999])


def test_dashboard_command(tmp_path, monkeypatch, capsys, evil_tokenizer):
    """End to end: a saved tiny Llama + SAE; the store is built into the cache, the index path printed."""
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    config = tiny_config("llama", num_layers=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    evil_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "docs.txt").write_text("\n".join(f"line {i}: the cat sat on mat {i % 7}" for i in range(200)))
    Sae(SaeConfig(d_in=64, d_sae=32, k=4, hookpoint="resid_post.1")).save(tmp_path / "sae")
    args = [
        "dashboard",
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(tmp_path / "sae"),
        "--out",
        str(tmp_path / "dash"),
        "--n-tokens",
        "300",
        "--dataset",
        str(tmp_path / "docs.txt"),
        "--features",
        "0,5",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dash" / "index.html")
    assert sorted(p.name for p in (tmp_path / "dash" / "features").iterdir()) == ["0.html", "5.html"]
    assert main([*args[:-2], "--features", "0,x"]) == 2
    assert "cannot read feature ids '0,x'" in capsys.readouterr().err
