"""`qwenscope stats` and `qwenscope search` end to end on a tiny Llama saved with a byte tokenizer."""

from __future__ import annotations

import json

import pytest
from features_helpers import make_sae
from tiny_models import build_tiny, make_byte_tokenizer

from qwenscope.cli import main
from qwenscope.features.store import FeatureStore


@pytest.fixture(scope="module")
def setup(tmp_path_factory, docs):
    root = tmp_path_factory.mktemp("feature-cli")
    build_tiny("llama", num_layers=2).save_pretrained(root / "model")
    make_byte_tokenizer().save_pretrained(root / "model")
    make_sae().save(root / "sae")
    (root / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    (root / "neg.txt").write_text("0123456789\n\n[1, 2, 3]\nx = y + 2\n", encoding="utf-8")
    return root


def _stats_args(root) -> list[str]:
    return [
        "stats",
        "--model",
        str(root / "model"),
        "--sae",
        str(root / "sae"),
        "--dataset",
        str(root / "docs.txt"),
        "--split",
        "all",
        "--n-tokens",
        "600",
        "--seq-len",
        "32",
        "--top-n",
        "3",
        "--no-progress",
        "--out",
        str(root / "store"),
    ]


def test_stats_builds_labels_and_summarises(setup, capsys):
    assert main([*_stats_args(setup), "--labels", "fallback", "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "alive" in out and "fired at least once" in out and "fires on" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 3
    store = FeatureStore.open(setup / "store")
    assert store.meta["n_tokens"] >= 600 and store.meta["config"]["top_n"] == 3
    assert store.meta["hookpoint"] == "resid_post.1"
    assert store.table()["label"].notna().sum() == (store.table()["count"] > 0).sum()
    assert main(_stats_args(setup)) == 0  # cached: reused, labels kept
    assert FeatureStore.open(setup / "store").table()["label"].notna().any()


def test_search_modes(setup, capsys):
    base = ["search", "--model", str(setup / "model"), "--sae", str(setup / "sae"), "--top", "4"]
    assert main([*base, "--positive", "w1 w2 w3 w4", "--negative-file", str(setup / "neg.txt"), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and set(hits[0]) >= {"feature", "rate_pos", "rate_neg", "rate_diff", "mean_diff"}
    assert hits[0]["rate_diff"] >= hits[-1]["rate_diff"]
    assert (
        main(
            [
                *base,
                "--positive",
                "w1 w2 w3 w4",
                "--negative-file",
                str(setup / "neg.txt"),
                "--by",
                "effect",
                "--candidates",
                "6",
                "--alphas",
                "0.5,1",
                "--json",
            ]
        )
        == 0
    )
    ranked = json.loads(capsys.readouterr().out)
    assert len(ranked) == 4 and set(ranked[0]) >= {"feature", "score", "gain_pos", "gain_neg", "rate_pos"}
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert {r["contrastive_rank"] for r in ranked} <= set(range(6))
    assert main([*base, "--token", "w"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["feature", "logit"] and len(out.splitlines()) == 5
    if not (setup / "store").exists():
        main(_stats_args(setup))
    assert main([*base, "--label", "w1", "--store", str(setup / "store"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {"feature", "label", "frequency", "promotes"} <= set(rows[0])


def test_search_by_diffmeans_saves_a_direction_to_steer_with(setup, capsys):
    base = ["search", "--model", str(setup / "model"), "--sae", str(setup / "sae"), "--top", "3"]
    out = setup / "dim"
    args = ["--positive", "w1 w2 w3 w4", "--negative-file", str(setup / "neg.txt"), "--by", "diffmeans", "--json"]
    assert main([*base, *args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == 3 and [r["cosine"] for r in rows] == sorted((r["cosine"] for r in rows), reverse=True)
    assert f"--sae {out} --features 0:0.5 --relative" in captured.err
    steer_args = ["steer", "--model", str(setup / "model"), "--sae", str(out), "--features", "0:0.5", "--relative"]
    assert main([*steer_args, "--prompt", "w1", "--max-new-tokens", "3"]) == 0
    assert main([*base, *args]) == 2
    assert "--by diffmeans needs --positive/--negative texts and --out FOLDER" in capsys.readouterr().err


def test_search_errors_are_one_line(setup, capsys):
    base = ["search", "--model", str(setup / "model"), "--sae", str(setup / "sae")]
    assert main(base) == 2
    assert "pick one mode" in capsys.readouterr().err
    assert main([*base, "--token", "ab"]) == 2
    assert "is not one token" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*base, "--positive", "some text"]) == 2
    assert "no negative texts" in capsys.readouterr().err
    assert main([*base, "--positive", "a b", "--negative", "c d", "--by", "effect", "--alphas", "0.5,x"]) == 2
    assert "--alphas '0.5,x': pass comma-separated numbers" in capsys.readouterr().err
    assert main([*base, "--label", "x", "--store", str(setup / "nowhere")]) == 2
    assert "no feature store" in capsys.readouterr().err
