"""Labelled data for classification: files and label spellings, clear errors, the hash split, stratified subsamples,
the offensive fortunes (on a fake Debian folder, and the installed one when present) and hf: datasets saved locally."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from qwenscope.apps.classify.data import (
    Example,
    LabelledSet,
    check_binary,
    fortunes_offensive,
    hash_fraction,
    load_labelled,
    split,
    subsample,
)
from qwenscope.data import corpora
from qwenscope.errors import QwenscopeError


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _synthetic(n: int, positive_every: int = 2) -> LabelledSet:
    examples = [Example(f"synthetic text number {i}", int(i % positive_every == 0), {"row": i}) for i in range(n)]
    return LabelledSet("synthetic", examples, "memory")


# ---------------------------------------------------------------- files and labels
def test_jsonl_labels_in_every_spelling(tmp_path):
    values = [
        1,
        0,
        True,
        False,
        "yes",
        "No",
        "toxic",
        "clean",
        " Offensive ",
        "neutral",
        "non-toxic",
        "1",
        "0",
        "TRUE",
        "false",
        1.0,
    ]
    path = _jsonl(tmp_path / "comments.jsonl", [{"text": f"t{i}", "label": v} for i, v in enumerate(values)])
    data = load_labelled(str(path))
    assert data.labels.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]
    assert data.labels.dtype == np.int64
    assert data.texts[:2] == ["t0", "t1"] and len(data) == 16
    assert data.name == "comments" and data.counts() == {1: 8, 0: 8}
    assert data.examples[3].meta == {"source": str(path), "row": 3}


def test_csv_tsv_and_json_with_other_column_names(tmp_path):
    (tmp_path / "a.csv").write_text('comment,toxic\n"Hello, you",0\nyou idiot,1\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text("comment\ttoxic\nHello, you\tclean\nyou idiot\ttoxic\n", encoding="utf-8")
    records = [{"comment": "Hello, you", "toxic": False}, {"comment": "you idiot", "toxic": True}]
    (tmp_path / "a.json").write_text(json.dumps(records), encoding="utf-8")
    for name in ("a.csv", "a.tsv", "a.json"):
        data = load_labelled(str(tmp_path / name), text_column="comment", label_column="toxic")
        assert data.texts == ["Hello, you", "you idiot"] and data.labels.tolist() == [0, 1], name


def test_positive_values_make_every_other_value_clean(tmp_path):
    rows = [
        {"text": "a", "label": "hate"},
        {"text": "b", "label": "Insult"},
        {"text": "c", "label": "none"},
        {"text": "d", "label": "toxic"},
    ]
    data = load_labelled(str(_jsonl(tmp_path / "x.jsonl", rows)), positive=["hate", "insult"])
    assert data.labels.tolist() == [1, 1, 0, 0]


def test_bad_label_names_the_row_and_the_value(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "maybe"}])
    with pytest.raises(QwenscopeError, match=r"x.jsonl row 1: the label 'maybe' is not one of .*--positive") as e:
        load_labelled(str(path))
    assert "\n" not in str(e.value)
    with pytest.raises(QwenscopeError, match="row 0: the label None"):
        load_labelled(str(_jsonl(tmp_path / "y.jsonl", [{"text": "a", "label": None}])))


def test_missing_columns_list_the_columns_and_the_flags(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"comment": "a", "toxic": 1}])
    with pytest.raises(
        QwenscopeError,
        match=r"has no column 'text' \(its columns: comment, toxic\); .*"
        r"--text-column/--label-column",
    ):
        load_labelled(str(path))
    with pytest.raises(QwenscopeError, match=r"has no column 'label' \(its columns: comment, toxic\)"):
        load_labelled(str(path), text_column="comment")
    (tmp_path / "x.csv").write_text("body,y\nhi,1\n", encoding="utf-8")
    with pytest.raises(QwenscopeError, match=r"no column 'text' \(its columns: body, y\)"):
        load_labelled(str(tmp_path / "x.csv"))


def test_empty_texts_are_skipped_with_a_count_unless_all_are(tmp_path, caplog):
    texts = ["a", "  ", None, "b"]
    rows = [{"text": text, "label": int(i == 0)} for i, text in enumerate(texts)]
    with caplog.at_level(logging.WARNING, logger="qwenscope.apps.classify.data"):
        data = load_labelled(str(_jsonl(tmp_path / "x.jsonl", rows)))
    assert data.texts == ["a", "b"] and [e.meta["row"] for e in data.examples] == [0, 3]
    assert "skipped 2 of 4 rows" in caplog.text
    with pytest.raises(QwenscopeError, match="every row of .* has an empty 'text'"):
        load_labelled(str(_jsonl(tmp_path / "y.jsonl", rows[1:3])))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(QwenscopeError, match="no labelled data at '.*nope.jsonl'"):
        load_labelled(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(QwenscopeError, match=r"name it .jsonl, .json, .csv or .tsv"):
        load_labelled(str(tmp_path / "x.txt"))


def test_check_binary_single_class_and_empty():
    only_toxic = LabelledSet("mine", [Example("a", 1), Example("b", 1)], "memory")
    with pytest.raises(QwenscopeError, match=r"^mine holds only label 1 \(2 examples\); a classifier needs both"):
        check_binary(only_toxic, "mine")
    with pytest.raises(QwenscopeError, match=r"^the test split of mine is empty; "):
        check_binary(only_toxic.subset([]), "the test split of mine")
    check_binary(_synthetic(4), "ok")  # both classes: no error
    with pytest.raises(QwenscopeError, match="labels are 1 .* or 0"):
        LabelledSet("bad", [Example("a", 2)], "memory")


# ---------------------------------------------------------------- split and subsample
def test_split_is_deterministic_by_text_and_near_the_fraction():
    data = _synthetic(1000)
    discovery, test = split(data)
    assert len(discovery) + len(test) == 1000 and 0.26 < len(test) / 1000 < 0.34
    for part in (discovery, test):  # both classes on both sides, each near its share
        assert 0.4 < part.counts()[1] / len(part) < 0.6
    assert {e.meta["split"] for e in test.examples} == {"test"}
    assert {e.meta["split"] for e in discovery.examples} == {"discovery"}
    assert "split" not in data.examples[0].meta  # the input is left alone
    again = split(LabelledSet("shuffled", data.examples[::-1], "memory"))[1]
    assert sorted(again.texts) == sorted(test.texts)  # the side depends on the text alone
    # the same text (up to whitespace) lands on the same side, even with another label or name
    twin = Example("  synthetic   text number 7 ", 0)
    assert (hash_fraction(twin.text) < 0.3) == ("synthetic text number 7" in test.texts)
    other_salt = split(data, salt="another")[1]
    assert set(other_salt.texts) != set(test.texts)
    assert test.name == "synthetic/test" and discovery.name == "synthetic/discovery"


def test_split_is_stable_across_runs_and_machines():
    # pinned: a change to the hash (or its salt) would silently move texts between discovery and test
    assert [i for i in range(20) if hash_fraction(f"synthetic text number {i}") < 0.3] == PINNED_TEST_ROWS
    assert hash_fraction("") == pytest.approx(PINNED_EMPTY_FRACTION)


PINNED_TEST_ROWS = [1, 2, 4, 8, 10, 11, 14, 18]
PINNED_EMPTY_FRACTION = 0.2205201538207053


def test_split_needs_both_classes_on_both_sides():
    data = LabelledSet("tiny", [Example(f"clean {i}", 0) for i in range(30)] + [Example("the only toxic one", 1)], "m")
    with pytest.raises(
        QwenscopeError,
        match=r"the (test|discovery) split of tiny holds only label 0 .*another test "
        r"fraction",
    ):
        split(data)
    with pytest.raises(QwenscopeError, match="test fraction 1.0 is outside"):
        split(_synthetic(10), test_fraction=1.0)


def test_subsample_is_stratified_nested_and_seeded():
    data = _synthetic(300, positive_every=3)  # 100 positive, 200 clean
    tenth = subsample(data, 0.1)
    assert tenth.counts() == {1: 10, 0: 20}
    assert subsample(data, 0.001).counts() == {1: 1, 0: 1}  # at least one of each
    half = subsample(data, 0.5)
    assert set(tenth.texts) <= set(half.texts) and half.counts() == {1: 50, 0: 100}
    assert subsample(data, 0.1).texts == tenth.texts  # deterministic
    assert subsample(data, 0.1, seed=1).texts != tenth.texts
    rows = [e.meta["row"] for e in tenth.examples]
    assert rows == sorted(rows)  # original order kept
    assert len(subsample(data, 1.0)) == 300
    with pytest.raises(QwenscopeError, match="outside"):
        subsample(data, 0.0)


# ---------------------------------------------------------------- the offensive fortunes
@pytest.fixture
def fortunes(tmp_path, monkeypatch):
    """A fake fortunes folder with the Debian layout: es/ (with the es/off/ copy fortunes-es-off installs),
    off/es/off/, it/ and off/it/."""
    root = tmp_path / "fortunes"
    for folder in ("es/off", "off/es/off", "it", "off/it"):
        (root / folder).mkdir(parents=True)

    def write(relative: str, entries: list[str]) -> None:
        (root / relative).write_text("\n%\n".join(entries) + "\n%\n", encoding="utf-8")

    clean = [f"Refrán limpio número {i}." for i in range(10)]
    write("es/vida.fortunes", [*clean[:6], "Compartido con los ofensivos.", "", clean[0]])
    write("es/varios.fortunes", [*clean[6:], "Refrán   limpio número 1."])  # a repeat up to whitespace
    (root / "es/vida.fortunes.dat").write_bytes(b"\x00\x01")
    offensive = ["Insulto uno.", "Insulto dos.", "Compartido con los ofensivos.", "Insulto tres.", "Insulto uno."]
    write("off/es/off/camioneros.fortunes", offensive)
    write("es/off/camioneros.fortunes", offensive)  # the duplicate copy under es/off: not ordinary
    write("it/adams", ["Pulito.", "Anche pulito.", "Anche\npulito."])
    write("off/it/obsc-o", ["Parolaccia.", "Bestemmia."])
    monkeypatch.setenv("QWENSCOPE_FORTUNES", str(root))
    return root


def test_fortunes_offensive_dedups_drops_overlap_and_balances(fortunes, caplog):
    with caplog.at_level(logging.INFO, logger="qwenscope.apps.classify.data"):
        data = fortunes_offensive("es")
    assert "4 offensive and 11 ordinary unique entries, 1 in both dropped; 3 of each kept" in caplog.text
    positives = [e for e in data.examples if e.label == 1]
    negatives = [e for e in data.examples if e.label == 0]
    assert [e.text for e in positives] == ["Insulto uno.", "Insulto dos.", "Insulto tres."]
    assert len(negatives) == 3 and len({e.text for e in negatives}) == 3
    assert all(e.text.startswith("Refrán limpio") for e in negatives)  # no es/off entry, no shared text
    assert data.counts() == {1: 3, 0: 3} and data.name == "fortunes-off:es"
    assert positives[2].meta == {
        "source": "fortunes-off:es",
        "package": "fortunes-es-off",
        "file": "off/es/off/camioneros.fortunes",
        "index": 3,
        "lang": "es",
    }
    assert {e.meta["package"] for e in negatives} == {"fortunes-es"}
    assert {e.meta["file"] for e in negatives} <= {"es/vida.fortunes", "es/varios.fortunes"}
    entries = {(f.relative_to(fortunes).as_posix(), i): text for f, i, text in corpora.fortune_entries("es")}
    assert all(entries[e.meta["file"], e.meta["index"]] == e.text for e in negatives)  # provenance finds the entry
    assert fortunes_offensive("es").texts == data.texts  # seeded
    assert fortunes_offensive("es", seed=3).texts != data.texts
    assert load_labelled("fortunes-off:es").texts == data.texts


def test_fortunes_offensive_other_language_and_small_sets(fortunes):
    data = fortunes_offensive("it")  # two of each: nothing sampled
    assert data.texts == ["Parolaccia.", "Bestemmia.", "Pulito.", "Anche pulito."]
    assert data.examples[0].meta["package"] == "fortunes-it-off" and data.examples[3].meta["file"] == "it/adams"
    with pytest.raises(QwenscopeError, match=r"no offensive fortunes in 'de'; Debian has them in es, it"):
        fortunes_offensive("de")


@pytest.mark.skipif(not (Path(corpora.FORTUNES_DIR) / "off" / "it").is_dir(), reason="apt-get install fortunes-it-off")
@pytest.mark.parametrize("lang", ["es", "it"])
def test_installed_offensive_fortunes(lang, monkeypatch):
    monkeypatch.delenv("QWENSCOPE_FORTUNES", raising=False)
    data = fortunes_offensive(lang)
    counts = data.counts()
    assert counts[1] == counts[0] > 100
    positives = {e.text for e in data.examples if e.label == 1}
    assert not positives & {e.text for e in data.examples if e.label == 0}
    discovery, test = split(data)
    assert 0.2 < len(test) / len(data) < 0.4


# ---------------------------------------------------------------- hf: datasets, read locally
def test_hf_saved_dataset_in_the_textdetox_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = {
        lang: datasets.Dataset.from_dict({"text": [f"{lang} bueno", f"{lang} malo", ""], "toxic": [0, 1, 0]})
        for lang in ("es", "it")
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "textdetox"))
    data = load_labelled(f"hf:{tmp_path / 'textdetox'}@it", label_column="toxic")
    assert data.texts == ["it bueno", "it malo"] and data.labels.tolist() == [0, 1]
    assert data.name == "textdetox@it" and data.examples[1].meta == {"source": data.source, "row": 1}
    with pytest.raises(QwenscopeError, match=r"has the splits es, it; pick one: hf:.*@SPLIT"):
        load_labelled(f"hf:{tmp_path / 'textdetox'}", label_column="toxic")
    with pytest.raises(QwenscopeError, match=r"has no split 'fr'; its splits: es, it"):
        load_labelled(f"hf:{tmp_path / 'textdetox'}@fr", label_column="toxic")
    with pytest.raises(QwenscopeError, match=r"no column 'label' \(its columns: text, toxic\)"):
        load_labelled(f"hf:{tmp_path / 'textdetox'}@es")


def test_hf_local_json_file(tmp_path):
    pytest.importorskip("datasets")
    path = _jsonl(tmp_path / "rows.jsonl", [{"text": "fine", "label": "clean"}, {"text": "rude", "label": "toxic"}])
    data = load_labelled(f"hf:{path}")
    assert data.texts == ["fine", "rude"] and data.labels.tolist() == [0, 1]
