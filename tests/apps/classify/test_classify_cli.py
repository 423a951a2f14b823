"""``qwenscope classify fit | predict | eval | compare`` end to end on a tiny Qwen3 (real tokenizer) with random SAEs at
two hookpoints; and the analyses (comparison, efficiency, transfer) on its pooled features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.apps.classify.analysis import RULE, Part, compare, efficiency, stratified, transfer
from qwenscope.cli import main

BAD = ["idiot", "stupid", "moron", "fool", "dumb", "jerk"]
GOOD = ["garden", "river", "music", "bread", "cloud", "friend"]


def rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bad = i % 2 == 0
        words = list(rng.choice(GOOD, 4)) + ([str(rng.choice(BAD))] if bad else [])
        out.append({"text": "you " + " ".join(rng.permutation(words)), "label": int(bad)})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls-cli")
    model = save_tiny_qwen3(root / "model")
    for layer in (0, 1):
        torch.manual_seed(layer)
        sae = Sae(SaeConfig(d_in=64, d_sae=256, k=8, hookpoint=f"resid_post.{layer}"))
        with torch.no_grad():
            sae.b_enc.uniform_(-0.5, 0.0)
        sae.save(root / "saes" / f"resid_post.{layer}")
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows(40, 0)) + "\n")
    (root / "test.csv").write_text("content,toxic\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows(20, 1)))
    return model, root / "saes", root


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["classify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_predict_eval_compare(setup, capsys, tmp_path):
    model, saes, root = setup
    common = ["--model", str(model), "--sae", str(saes), "--hookpoint", "resid_post.0,resid_post.1"]
    clf = tmp_path / "clf.json"
    code, out, err = run(["fit", "--data", str(root / "train.jsonl"), *common, "--k", "3", "--out", str(clf)], capsys)
    assert code == 0, err
    saved = json.loads(clf.read_text())
    assert len(saved["rule"]["features"]) == 3 and saved["model"] == str(model)
    code, out, err = run(
        ["predict", str(clf), "--text", "you stupid idiot", "--json", "--html", str(tmp_path / "why.html")], capsys
    )
    assert code == 0, err
    [record] = json.loads(out)
    assert record["prediction"] in (0, 1) and (tmp_path / "why.html").is_file()
    assert record["prediction"] == int(any(t["features"] for t in record["tokens"]))
    test_args = ["--data", str(root / "test.csv"), "--text-column", "content", "--label-column", "toxic"]
    code, out, err = run(["eval", str(clf), *test_args, "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert {"precision", "recall", "f1", "f1_ci", "auroc"} <= set(scores) and scores["n"] == 20
    code, out, err = run(
        [
            "compare",
            "--data",
            str(root / "train.jsonl"),
            "--test",
            str(root / "test.csv"),
            "--text-column",
            "content",
            "--label-column",
            "toxic",
            *common,
            "--json",
        ],
        capsys,
    )
    # the two files name their columns differently: compare reads both with the same flags, so one of them fails
    assert code == 2 and "column" in err and err.count("error:") == 1
    (root / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows(20, 1)) + "\n")
    code, out, err = run(
        [
            "compare",
            "--data",
            str(root / "train.jsonl"),
            "--test",
            str(root / "test.jsonl"),
            *common,
            "--json",
            "--html",
            str(tmp_path / "report.html"),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    methods = [r["method"] for r in result["comparison"]]
    assert methods.count(RULE) == 10 and {"sae-probe", "act-probe", "diff-means", "tfidf"} <= set(methods)
    assert (tmp_path / "report.html").read_text().count("<img") >= 1


def test_bad_input_gets_one_clear_line(setup, capsys, tmp_path):
    model, saes, root = setup
    common = ["--model", str(model), "--sae", str(saes), "--hookpoint", "resid_post.0"]
    (tmp_path / "one.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    (tmp_path / "cols.jsonl").write_text('{"body": "a", "y": 1}\n')
    cases = [
        (["fit", "--data", str(tmp_path / "one.jsonl"), *common, "--out", str(tmp_path / "c.json")], "only label 1"),
        (["fit", "--data", str(tmp_path / "cols.jsonl"), *common, "--out", str(tmp_path / "c.json")], "--text-column"),
        (["predict", str(tmp_path / "missing.json"), "--text", "hi"], "no classifier at"),
        (["fit", "--data", str(root / "train.jsonl"), *common], "--out"),
    ]
    for args, message in cases:
        code, _, err = run(args, capsys)
        assert code == 2 and message in err and err.count("error:") == 1, err
    clf = tmp_path / "clf.json"
    assert run(["fit", "--data", str(root / "train.jsonl"), *common, "--out", str(clf)], capsys)[0] == 0
    torch.manual_seed(9)
    Sae(SaeConfig(d_in=64, d_sae=256, k=8, hookpoint="resid_post.0")).save(tmp_path / "other" / "resid_post.0")
    code, _, err = run(["predict", str(clf), "--text", "hi", "--sae", str(tmp_path / "other")], capsys)
    assert code == 2 and "not the one this classifier was fit with" in err


def test_analyses_on_pooled_features(setup):
    from qwenscope import load_model, load_sae
    from qwenscope.apps.classify.pooled import pool_texts

    model_dir, saes, root = setup
    model, tokenizer = load_model(str(model_dir))
    data = rows(40, 0) + rows(20, 1)
    texts, labels = [r["text"] for r in data], np.array([r["label"] for r in data])
    hooks = ["resid_post.0", "resid_post.1"]
    pooled = pool_texts(model, tokenizer, texts, [load_sae(str(saes), hookpoint=h) for h in hooks], hooks)
    whole = Part(texts, labels, dict(zip(hooks, pooled)))
    train, test = whole.rows(range(40)), whole.rows(range(40, 60))
    result = compare(train, test, n_boot=50)
    rule_rows = [r for r in result["comparison"] if r["method"] == RULE]
    assert [r["k"] for r in rule_rows] == list(range(1, 11)) and sum(r["chosen"] for r in rule_rows) == 1
    assert result["k_curve"]["f1"] == [r["f1"] for r in rule_rows]
    eff = efficiency(train, test, fractions=(0.25, 1.0), seeds=(0, 1))
    assert set(eff["methods"]) == {RULE, "sae-probe", "act-probe", "diff-means", "tfidf"}
    assert all(len(v) == 2 for v in eff["methods"].values())
    assert eff["methods"][RULE][1] == next(r["f1"] for r in rule_rows if r["chosen"])  # 100% = the full fit
    rows_t = transfer(train, test, "a", "b", n_boot=50)
    assert rows_t[0]["method"] == RULE and all(r["train"] == "a" for r in rows_t)
    keep = stratified(labels, 0.1, 0)
    assert set(labels[keep]) == {0, 1} and len(keep) == 6
