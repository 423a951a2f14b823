"""Text sources: files, folders, datasets, named corpora, the held-out split, and their errors."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from qwenscope.data import corpora, in_test_split, iter_texts
from qwenscope.data.corpora import DOC_CHARS, dataset_build_languages, merge_blocks
from qwenscope.errors import QwenscopeError

needs_dataset_build = pytest.mark.skipif(
    importlib.util.find_spec("dataset_build") is None, reason="pip install --no-deps dataset-build"
)


def test_txt_documents_are_blank_line_blocks(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\n\n  \nsecond\r\n\r\nthird  \n", encoding="utf-8")
    assert list(iter_texts(str(path), split="all")) == ["first line\nsame doc", "second", "third"]


def test_jsonl_text_field_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"text": "alpha", "body": "x"}, {"text": "beta", "body": "y"}, {"text": "   ", "body": "z"}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n", encoding="utf-8")
    assert list(iter_texts(str(path), split="all")) == ["alpha", "beta"]  # the blank text is skipped
    assert list(iter_texts(str(path), split="all", text_field="body")) == ["x", "y", "z"]


def test_jsonl_errors_name_the_line_and_fix(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text"}\n', encoding="utf-8")
    with pytest.raises(QwenscopeError, match=r"a.jsonl:2: no field 'text' \(has \['content'\]\); pass text_field="):
        list(iter_texts(str(path), split="all"))
    path.write_text('{"text": "ok"}\n{broken\n', encoding="utf-8")
    with pytest.raises(QwenscopeError, match=r"a.jsonl:2: not valid JSON"):
        list(iter_texts(str(path), split="all"))


def test_folder_reads_txt_and_jsonl_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from z", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "from a"}\n', encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not read", encoding="utf-8")
    assert list(iter_texts(str(tmp_path), split="all")) == ["from a", "from z"]


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(QwenscopeError, match="no text source 'nowhere.txt'"):
        list(iter_texts("nowhere.txt"))
    (tmp_path / "x.csv.bak").write_text("a", encoding="utf-8")
    with pytest.raises(QwenscopeError, match="unknown text file type"):
        list(iter_texts(str(tmp_path / "x.csv.bak")))
    with pytest.raises(QwenscopeError, match="unknown split 'dev'"):
        list(iter_texts(str(tmp_path), split="dev"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QwenscopeError, match="holds no .txt or .jsonl"):
        list(iter_texts(str(tmp_path / "empty")))


def test_empty_dataset_error(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(QwenscopeError, match="has no non-empty documents in split 'train'"):
        list(iter_texts(str(path)))


def test_split_is_a_disjoint_stable_partition(corpus):
    path, docs = corpus
    train = list(iter_texts(str(path), split="train"))
    test = [d for d in docs if in_test_split(d)]
    assert sorted(train + test) == sorted(docs)
    assert not set(train) & set(test)
    assert all(in_test_split(d) == in_test_split(d) for d in docs)


def test_hf_saved_dataset_and_data_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["one", "two", "three"], "label": [0, 1, 0]})
    data.save_to_disk(str(tmp_path / "saved"))
    assert list(iter_texts(str(tmp_path / "saved"), split="all")) == ["one", "two", "three"]
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dict"))
    assert list(iter_texts(str(tmp_path / "dict"), split="all")) == ["one", "two", "three"]
    data.to_parquet(str(tmp_path / "data.parquet"))
    assert list(iter_texts(f"hf:{tmp_path / 'data.parquet'}", split="all")) == ["one", "two", "three"]
    (tmp_path / "pq").mkdir()
    data.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    assert list(iter_texts(f"hf:{tmp_path / 'pq'}", split="all")) == ["one", "two", "three"]
    assert list(iter_texts(f"hf:{tmp_path / 'pq'}@train", split="all")) == ["one", "two", "three"]
    with pytest.raises(QwenscopeError, match="no field 'body'"):
        list(iter_texts(str(tmp_path / "saved"), split="all", text_field="body"))


def test_missing_datasets_package_gives_install_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(QwenscopeError, match="pip install datasets"):
        list(iter_texts("hf:some/dataset"))


# dataset-build -------------------------------------------------------------------------------------------------


def test_missing_dataset_build_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dataset_build" else real(name))
    with pytest.raises(QwenscopeError, match=r"pip install --no-deps dataset-build"):
        list(iter_texts("dataset-build:eng"))


def test_merge_blocks_packs_paragraphs_and_cuts_at_rules():
    blocks = ["a" * 900, "b" * 900, "c" * 900, "---", "d", "e" * 5000, "f"]
    assert list(merge_blocks(blocks, 2000)) == ["a" * 900 + "\n\n" + "b" * 900, "c" * 900, "d", "e" * 5000, "f"]


@needs_dataset_build
def test_dataset_build_names():
    langs, code = dataset_build_languages()
    assert len(langs) >= 37 and "eng" in langs and "test" not in langs and "coding" not in langs
    assert "python" in code and "rust" in code
    eng = list(iter_texts("dataset-build:eng", split="all"))
    fra = list(iter_texts("dataset-build:fra", split="all"))
    deu = list(iter_texts("dataset-build:deu", split="all"))
    assert list(iter_texts("dataset-build:fra,deu", split="all")) == fra + deu
    assert len(eng) > 300  # six English files
    assert all(len(d) <= DOC_CHARS or "\n\n" not in d for d in eng)  # a longer document is one long block
    python = list(iter_texts("dataset-build:python", split="all"))
    assert any("def " in d for d in python)
    n_all = sum(1 for _ in iter_texts("dataset-build:all", split="all"))
    n_code = sum(1 for _ in iter_texts("dataset-build:code", split="all"))
    assert n_all > len(eng) + len(fra) and n_code > len(python)
    with pytest.raises(QwenscopeError, match="dataset-build has no language 'xx'; use all, code, multi, one of ara"):
        list(iter_texts("dataset-build:xx"))


@needs_dataset_build
def test_dataset_build_multi_interleaves_deterministically():
    multi = list(iter_texts("dataset-build:multi", split="all", seed=0))
    both = list(iter_texts("dataset-build:all,code", split="all"))
    assert Counter(multi) == Counter(both) and multi != both
    assert multi == list(iter_texts("dataset-build:multi", split="all", seed=0))
    assert multi != list(iter_texts("dataset-build:multi", split="all", seed=1))
    fra = list(iter_texts("dataset-build:fra", split="all"))
    assert [d for d in multi if d in set(fra)] == fra  # each language keeps its order
    code = set(iter_texts("dataset-build:code", split="all"))
    first = {"code" if d in code else "lang" for d in multi[:60]}
    assert first == {"code", "lang"}  # mixed from the start


@needs_dataset_build
def test_dataset_build_split_fraction_and_disjointness():
    train = list(iter_texts("dataset-build:multi", split="train"))
    test = list(iter_texts("dataset-build:multi", split="test"))
    assert not set(train) & set(test)
    assert 0.03 < len(test) / (len(train) + len(test)) < 0.07
    assert set(test) <= set(iter_texts("dataset-build:all,code", split="all"))
    assert set(iter_texts("dataset-build:eng", split="test")) <= set(test)  # same documents, whatever the name


# Debian fortunes -----------------------------------------------------------------------------------------------


@pytest.fixture
def fortunes(tmp_path, monkeypatch):
    """A fake /usr/share/games/fortunes with the Debian layout."""
    root = tmp_path / "fortunes"
    (root / "de").mkdir(parents=True)
    (root / "off" / "es" / "off").mkdir(parents=True)
    (root / "fortunes").write_text("First fortune.\n%\nSecond\n  indented line.\n%\n", encoding="utf-8")
    (root / "fortunes.dat").write_bytes(b"\x00\x01binary")
    (root / "fortunes.u8").symlink_to("fortunes")
    (root / "chinese").write_text("你好\n%\n世界\n", encoding="utf-8")
    (root / "adams").write_bytes("Caffè\n%\nlatin-1\n".encode("latin-1"))  # an Italian file at the top level
    (root / "de" / "zitate").write_text("Ein Zitat.\r\n%\r\nNoch eins.\r\n", encoding="utf-8")
    (root / "de" / "zitate.u8").symlink_to("zitate")
    (root / "off" / "es" / "off" / "x.fortunes").write_text("malo\n%\n", encoding="utf-8")
    monkeypatch.setenv("QWENSCOPE_FORTUNES", str(root))
    return root


def test_fortunes_languages(fortunes):
    assert list(iter_texts("fortunes:en", split="all")) == ["First fortune.", "Second\n  indented line."]
    assert list(iter_texts("fortunes:zh", split="all")) == ["你好", "世界"]
    assert list(iter_texts("fortunes:de", split="all")) == ["Ein Zitat.", "Noch eins."]
    assert list(iter_texts("fortunes:es-off", split="all")) == ["malo"]
    assert list(iter_texts("fortunes:de,es-off", split="all")) == ["Ein Zitat.", "Noch eins.", "malo"]
    with pytest.raises(QwenscopeError, match="no fortunes for 'ru'.*one of en, zh, pt, de, es-off"):
        list(iter_texts("fortunes:ru"))


def test_fortunes_latin1_files_decode(fortunes):
    (fortunes / "it").mkdir()
    (fortunes / "it" / "adams").write_bytes("Caffè\n%\n".encode("latin-1"))
    assert list(iter_texts("fortunes:it", split="all")) == ["Caffè"]


def test_fortunes_stored_rot13_are_decoded_by_their_dat_flag(fortunes):
    import codecs
    import struct

    off = fortunes / "off" / "es" / "off"
    (off / "y.fortunes").write_text(codecs.encode("Texto malo.\n%\nOtro.\n%\n", "rot13"), encoding="utf-8")
    (off / "y.fortunes.dat").write_bytes(struct.pack(">5I", 2, 2, 12, 6, 0x4) + b"%\0\0\0")  # STR_ROTATED
    (off / "x.fortunes.dat").write_bytes(struct.pack(">5I", 2, 1, 5, 5, 0x0) + b"%\0\0\0")  # stored plainly
    assert list(iter_texts("fortunes:es-off", split="all")) == ["malo", "Texto malo.", "Otro."]


def test_ordinary_fortunes_leave_out_the_offensive_ones_installed_beside_them(fortunes):
    (fortunes / "es" / "off").mkdir(parents=True)
    (fortunes / "es" / "amistad").write_text("Un amigo.\n%\n", encoding="utf-8")
    (fortunes / "es" / "off" / "x.fortunes").write_text("malo\n%\n", encoding="utf-8")  # as fortunes-es-off does
    assert list(iter_texts("fortunes:es", split="all")) == ["Un amigo."]


def test_fortunes_missing_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENSCOPE_FORTUNES", str(tmp_path / "none"))
    with pytest.raises(QwenscopeError, match="apt-get install fortunes"):
        list(iter_texts("fortunes:en"))


@pytest.mark.skipif(not corpora.Path(corpora.FORTUNES_DIR).is_dir(), reason="apt-get install fortunes")
def test_installed_fortunes_english(monkeypatch):
    monkeypatch.delenv("QWENSCOPE_FORTUNES", raising=False)
    assert sum(1 for _ in iter_texts("fortunes:en", split="all")) > 1000


# gettext catalogs, the Debian Reference, SWORD Bibles, the mix --------------------------------------------------


def _write_mo(path, messages: dict[str, str]) -> None:
    """A GNU .mo catalog (the format msgfmt writes): header, two string tables, no hash table."""
    import struct

    keys = sorted(messages)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(messages[k].encode() + b"\0" for k in keys)
    n = len(keys)
    start = 7 * 4 + 16 * n
    id_table, str_table, offset = [], [], start
    for k in keys:
        id_table += [len(k.encode()), offset]
        offset += len(k.encode()) + 1
    for k in keys:
        str_table += [len(messages[k].encode()), offset]
        offset += len(messages[k].encode()) + 1
    header = struct.pack("Iiiiiii", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    path.write_bytes(header + struct.pack(f"{4 * n}i", *id_table, *str_table) + ids + strs)


@pytest.fixture
def locale(tmp_path, monkeypatch):
    root = tmp_path / "locale"
    meta = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n > 1);\n"
    words_of = {"fr": ("Ouvrir le fichier", "Enregistrer sous"), "de": ("Datei öffnen", "Speichern unter")}
    for lang, words in words_of.items():
        (root / lang / "LC_MESSAGES").mkdir(parents=True)
        _write_mo(
            root / lang / "LC_MESSAGES" / "app.mo",
            {"": meta, "Open the file": words[0], "Save as...": words[1], "x": "y"},
        )
    monkeypatch.setenv("QWENSCOPE_LOCALE", str(root))
    return root


def test_gettext_catalogs(locale):
    assert list(iter_texts("gettext:fr", split="all")) == ["Ouvrir le fichier\nEnregistrer sous"]  # header, "y" dropped
    assert list(iter_texts("gettext:en", split="all")) == ["Open the file\nSave as..."]
    assert list(iter_texts("gettext:all", split="all")) == [
        "Datei öffnen\nSpeichern unter",
        "Ouvrir le fichier\nEnregistrer sous",
    ]
    with pytest.raises(QwenscopeError, match="no gettext catalogs for 'xx'.*one of de, fr"):
        list(iter_texts("gettext:xx"))


def test_debian_reference_html_to_text(tmp_path, monkeypatch):
    (tmp_path / "ch01.en.html").write_text(
        "<html><head><style>p {}</style><title>Intro</title></head><body><h1>1. Tutorials</h1>"
        "<p>Debian is a <b>free</b> operating\n system.</p><script>var x;</script><pre>$ ls</pre></body></html>"
    )
    monkeypatch.setenv("QWENSCOPE_DEBIAN_REFERENCE", str(tmp_path))
    assert list(iter_texts("debian-doc:en", split="all")) == [
        "Intro\n\n1. Tutorials\n\nDebian is a free operating\n system.\n\n$ ls"
    ]
    with pytest.raises(QwenscopeError, match="apt-get install debian-reference-fr"):
        list(iter_texts("debian-doc:fr"))


@pytest.mark.skipif(not corpora.Path(corpora.SWORD_DIR, "modules").is_dir(), reason="apt-get install sword-text-web")
def test_installed_bible_chapters_read_cleanly():
    import itertools

    first = list(itertools.islice(iter_texts("bible:en", split="all"), 2))
    assert first[0].startswith("In the beginning, God created the heavens and the earth.")  # no glued words
    assert "<" not in first[0] and "Elohim" not in first[0]  # markup and footnotes dropped
    assert next(iter_texts("bible:es", split="all")).startswith("EN el principio crió Dios")


def test_mix_gives_each_source_its_share_of_characters(fortunes, locale, monkeypatch):
    (fortunes / "de" / "zitate").write_text("\n%\n".join(f"Zitat {i}." * 3 for i in range(200)), encoding="utf-8")
    (fortunes / "fortunes").write_text("\n%\n".join(f"Fortune {i}." for i in range(300)), encoding="utf-8")
    monkeypatch.setitem(corpora.MIX, "test", {"fortunes:en": 0.5, "fortunes:de": 0.25, "gettext:fr": 0.25})
    docs = list(iter_texts("mix:test", split="all"))
    assert docs == list(iter_texts("mix:test", split="all"))  # deterministic
    en = set(iter_texts("fortunes:en", split="all"))
    assert en <= set(docs) and "Ouvrir le fichier\nEnregistrer sous" in docs  # whole documents, every source
    de = set(iter_texts("fortunes:de", split="all"))
    chars = Counter("en" if d in en else "de" for d in docs[:100] if d in en | de for _ in d)
    assert 1.8 < chars["en"] / chars["de"] < 2.2  # while both last, their characters keep the 0.5 : 0.25 shares
    assert set(iter_texts("mix:test", split="test")) & en == set(iter_texts("fortunes:en", split="test"))
    with pytest.raises(QwenscopeError, match="no text mix 'nope'; use one of"):
        list(iter_texts("mix:nope"))
