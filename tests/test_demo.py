"""`qwenscope demo` end to end on a tiny Qwen3 with the real Qwen3 tokenizer and a random SAE given by folder."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main
from qwenscope.demo import pick_concept_feature, prompt_features
from qwenscope.demo_texts import PROMPTS
from qwenscope.errors import QwenscopeError
from qwenscope.features.search import ContrastiveHit, EffectHit


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    save_tiny_qwen3(root / "model")
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.0"))
    with torch.no_grad():
        sae.b_enc[[7, 40]] = 50.0  # two always-on features that top every token, as real SAEs have
    sae.save(root / "sae")
    return root


def test_demo_runs_end_to_end_and_writes_a_linked_report(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    args = [
        "demo",
        "--model",
        str(folders / "model"),
        "--sae",
        str(folders / "sae"),
        "--n-tokens",
        "1000",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5."):
        assert step in printed
    chosen = int(re.search(r"== 4\. steering #(\d+)", printed).group(1))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"features/features/{chosen}.html" in html and "unsteered" in html
    links = set(re.findall(r'href="(features/[^"]+)"', html))
    assert links and all((out / link).is_file() for link in links)  # every link opens offline
    assert (tmp_path / "cache" / "features").is_dir()  # the feature store is cached for the next run
    _first_screen_hides_always_on_features(printed, tmp_path / "cache", folders, html)


def _first_screen_hides_always_on_features(printed: str, cache, folders, html: str) -> None:
    """Sections 2 and 3 list no feature above MAX_DENSITY and give every listed feature's density; without the
    filter, always-on features would top the prompts (so the filter is what keeps them out)."""
    from qwenscope import load_model, load_sae
    from qwenscope.features.density import MAX_DENSITY, density_text
    from qwenscope.features.store import FeatureStore

    store = FeatureStore.open(next(cache.glob("features/**/meta.json")).parent)
    frequency = store.frequencies()
    screen = printed.split("== 4.")[0].split("== 2.")[1]
    listed = [(int(m[1]), m[2]) for m in re.finditer(r"#(\d+) .*?density\s+(\S+?)[\s:]", screen)]
    lines = [line for line in screen.splitlines() if line.strip().startswith("#")]
    assert len(listed) == len(lines) >= 3 * 3  # every listed feature shows a density
    for fid, shown in listed:
        assert frequency[fid] <= MAX_DENSITY and shown == density_text(frequency[fid]), (fid, frequency[fid])
    model, tokenizer = load_model(str(folders / "model"))
    sae = load_sae(str(folders / "sae"))
    unfiltered = {f for prompt in PROMPTS for f, _, _ in prompt_features(model, tokenizer, sae, "resid_post.0", prompt)}
    assert any(frequency[f] > MAX_DENSITY for f in unfiltered)  # the random SAE has always-on features that would show
    assert "always-on" in printed and ">density<" in html


def test_demo_without_sae_for_an_unknown_model_is_one_line(folders, capsys):
    assert main(["demo", "--model", str(folders / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no SAE ships for" in err[0] and "--sae" in err[0]  # before any loading


def _hit(feature: int, pos: float, neg: float) -> ContrastiveHit:
    return ContrastiveHit(feature, pos, neg, pos, neg, pos - neg, pos - neg)


def test_pick_concept_feature_prefers_features_silent_on_negatives():
    hits = [_hit(1, 0.9, 0.5), _hit(2, 0.3, 0.0), _hit(3, 0.4, 0.01)]
    assert pick_concept_feature(hits).feature == 3
    assert pick_concept_feature([_hit(1, 0.9, 0.5), _hit(4, 0.2, 0.1)]).feature == 1  # none silent: largest diff
    with pytest.raises(QwenscopeError, match="no feature fires on the positive texts"):
        pick_concept_feature([_hit(1, 0.0, 0.0)])


def test_pick_concept_feature_follows_the_steering_probe():
    hits = [_hit(1, 0.9, 0.5), _hit(2, 0.3, 0.0), _hit(3, 0.4, 0.01), _hit(5, 0.0, 0.0)]
    effects = [EffectHit(f, 1.0 / (i + 1), 0.1, -0.2, 0.3, 0.0, i) for i, f in enumerate([5, 1, 2])]
    assert pick_concept_feature(hits, effects) is hits[0]  # #5 never fires on the positives: skipped
    assert pick_concept_feature(hits, []).feature == 3
