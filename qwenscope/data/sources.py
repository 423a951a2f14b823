"""Text sources: one iterator of documents over files, folders, Hugging Face datasets and offline corpora.

``iter_texts(source, split="train")`` understands

| source                           | documents                                                              |
|----------------------------------|------------------------------------------------------------------------|
| ``notes.txt``                    | blocks separated by blank lines                                        |
| ``data.jsonl``                   | one JSON object per line, its ``text_field``                           |
| a folder                         | every ``.txt`` / ``.jsonl`` below it, in sorted path order             |
| a ``save_to_disk`` folder        | ``datasets.load_from_disk`` (the ``train`` split of a DatasetDict)     |
| ``hf:NAME[:CONFIG][@SPLIT]``     | ``datasets.load_dataset(..., streaming=True)``, HF split ``train`` by default |
| ``dataset-build:eng``, ``:fra,deu``, ``:all``, ``:code``, ``:multi`` | the PyPI dataset-build corpus (``corpora``) |
| ``fortunes:en``, ``fortunes:de``, ``fortunes:es-off``, ...          | Debian fortune cookies, if installed        |

Held-out split: every document is assigned to ``test`` when a hash of its text falls in the lowest
``TEST_FRACTION`` (5%), else to ``train``. The hash ignores the seed and the source, so training and evaluation
never see the same document, whichever way the corpus is named or mixed. ``split="all"`` keeps everything.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError

logger = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.05
"""Fraction of documents (by hash) that form the held-out ``test`` split."""
_TEXT_SUFFIXES = (".txt", ".jsonl")
_DISK_DATASET_MARKERS = ("dataset_dict.json", "state.json")
_DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".json.gz", ".jsonl.gz")


def iter_texts(source: str, *, split: str = "train", text_field: str = "text", seed: int = 0) -> Iterator[str]:
    """Documents of ``source`` (see the module doc) that fall in ``split`` (``train``, ``test`` or ``all``).

    ``seed`` sets the interleaving order of mixed corpora (``dataset-build:multi``); other sources keep their
    order. Raises QwenscopeError if the source (or the split) holds no document.
    """
    if split not in SPLITS:
        raise QwenscopeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    count = 0
    for text in _documents(source, text_field=text_field, seed=seed):
        if split == "all" or in_test_split(text) == (split == "test"):
            count += 1
            yield text
    if count == 0:
        raise QwenscopeError(f"source {source!r} has no non-empty documents in split {split!r}; check the path or name")


def in_test_split(text: str) -> bool:
    """Whether a document belongs to the held-out ``test`` split (a stable hash of its text)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=b"qs-split").digest()
    return int.from_bytes(digest, "big") < TEST_FRACTION * 2**64


def _documents(source: str, *, text_field: str, seed: int) -> Iterator[str]:
    from qwenscope.data import corpora  # corpora imports this module's readers

    kind, _, rest = source.partition(":")
    if kind in corpora.NAMED and rest:
        return corpora.NAMED[kind](rest, seed=seed)
    if kind == "hf" and rest:
        return _hf_documents(rest, text_field=text_field)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_documents(path, text_field=text_field)
    if path.is_file():
        return _file_documents(path, text_field=text_field)
    raise QwenscopeError(
        f"no text source {source!r}: not a file or folder, and not hf:NAME, "
        f"{', '.join(f'{k}:NAME' for k in corpora.NAMED)}"
    )


def split_blank_lines(text: str) -> list[str]:
    """Blocks of ``text`` separated by one or more blank lines, stripped; empty blocks dropped."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    if current:
        blocks.append("\n".join(current).strip())
    return [b for b in blocks if b]


def _file_documents(path: Path, *, text_field: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field)
    elif path.suffix == ".txt":
        yield from split_blank_lines(read_text(path))
    elif path.name.endswith(_DATA_FILE_SUFFIXES):
        yield from _hf_documents(str(path), text_field=text_field)
    else:
        raise QwenscopeError(f"{path}: unknown text file type; use .txt (blank-line separated) or .jsonl")


def read_text(path: Path) -> str:
    """A file's text: UTF-8, or Latin-1 when it is not valid UTF-8 (old fortune files)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON file holding a list of objects (a UTF-8 byte-order mark allowed); one clear line for an
    unreadable file or another shape."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwenscopeError(f"cannot read {path} ({type(e).__name__}: {e}); pass a readable JSON file") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise QwenscopeError(f"{path} is not a JSON list of objects; pass one, or a JSONL file")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (plain or .gz, a UTF-8 byte-order mark allowed); one clear line for a bad line or
    an unreadable file."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8-sig") as handle:  # type: ignore[operator]
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise QwenscopeError(f"cannot read {path} ({type(e).__name__}: {e}); pass a readable JSONL file") from e
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise QwenscopeError(f"{path}, line {n}: not JSON ({e.msg}); a JSONL file holds one object per line") from e
        if not isinstance(record, dict):
            raise QwenscopeError(
                f"{path}, line {n}: a {type(record).__name__}, not an object; a JSONL file holds one object per line"
            )
        records.append(record)
    return records


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise QwenscopeError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove the line") from None
            yield from _field(row, text_field, f"{path}:{number}")


def _field(row: Any, text_field: str, where: str) -> Iterator[str]:
    if not isinstance(row, dict) or text_field not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise QwenscopeError(f"{where}: no field {text_field!r} (has {keys}); pass text_field= the text column")
    value = row[text_field]
    if not isinstance(value, str):
        raise QwenscopeError(f"{where}: field {text_field!r} is a {type(value).__name__}, expected a string")
    if value.strip():
        yield value


def _folder_documents(path: Path, *, text_field: str) -> Iterator[str]:
    if any((path / marker).is_file() for marker in _DISK_DATASET_MARKERS):
        yield from _disk_dataset_documents(path, text_field)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    if not files:
        if any(p.name.endswith(_DATA_FILE_SUFFIXES) for p in path.rglob("*")):
            yield from _hf_documents(str(path), text_field=text_field)
            return
        raise QwenscopeError(f"folder {path} holds no .txt or .jsonl files and is not a saved dataset")
    for file in files:
        yield from _file_documents(file, text_field=text_field)


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        raise QwenscopeError("the datasets package is not installed; install it with: pip install datasets") from None
    return datasets


def _disk_dataset_documents(path: Path, text_field: str) -> Iterator[str]:
    datasets = _datasets_module()
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise QwenscopeError(f"{path}: the saved DatasetDict has no 'train' split (has {sorted(data)})")
        data = data["train"]
    yield from _rows_text(data, text_field, str(path))


def _hf_documents(spec: str, *, text_field: str) -> Iterator[str]:
    """``NAME[:CONFIG][@SPLIT]``: a hub dataset (streamed) or a local data folder/file."""
    datasets = _datasets_module()
    spec, _, hf_split = spec.partition("@")
    local = Path(spec).expanduser()
    name, config, kwargs = spec, None, {}
    if local.is_file():
        name, kwargs = _builder_for_file(local), {"data_files": str(local)}
    elif local.exists():
        name = str(local)
    else:
        name, _, config_part = spec.partition(":")
        config = config_part or None
    try:
        data = datasets.load_dataset(name, config, split=hf_split or "train", streaming=True, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise QwenscopeError(f"cannot load dataset {spec!r} ({reason}); check the name, config and split") from None
    yield from _rows_text(data, text_field, spec)


def _builder_for_file(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    return {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}.get(suffix, "json")


def _rows_text(rows: Iterable[Any], text_field: str, where: str) -> Iterator[str]:
    for number, row in enumerate(rows):
        yield from _field(row, text_field, f"{where} row {number}")
