"""Labelled text for toxicity classification: any JSONL, JSON, CSV, TSV or ``hf:`` dataset, and Debian's offensive
fortunes against the ordinary ones; a deterministic discovery/test split and stratified subsamples.

    data = load_labelled("comments.csv", label_column="toxic")       # LabelledSet: name, examples, source
    data = load_labelled("hf:textdetox/multilingual_toxicity_dataset@es", label_column="toxic")
    data = load_labelled("fortunes-off:it")                          # = fortunes_offensive("it")
    discovery, test = split(data)                                    # by a hash of each text, 30% test
    subsample(discovery, 0.1)                                        # 10% of each class, at least one

A record needs a text column and a label column. Labels: 1 for ``1, true, yes, toxic, offensive`` and 0 for
``0, false, no, clean, neutral, non-toxic`` (any case), or, with ``positive=("hate", ...)``, 1 for those values and 0
for every other. Rows with an empty text are skipped (a warning gives the count). ``hf:NAME[:CONFIG][@SPLIT]`` reads a
hub dataset (streamed: only the split asked for) or a local file, data folder or ``save_to_disk`` folder; without
``@SPLIT`` it takes ``train`` or the only split. ``textdetox/multilingual_toxicity_dataset`` has the columns ``text``
and ``toxic`` and one split per language (``@es``, ``@it``, ``@en``, ...).

``fortunes-off:es`` and ``fortunes-off:it``: the Debian packages ``fortunes-es-off`` / ``fortunes-it-off`` (label 1)
against ``fortunes-es`` / ``fortunes-it`` (label 0), human-written and human-labelled (``qwenscope.data.corpora``).
Empty entries, repeats (whitespace-insensitive) and texts found in both sets are dropped; the larger class is then
sampled down (seeded) to the size of the smaller. ``fortunes-es`` also ships the offensive files under ``es/off/``;
they are not counted as ordinary.

Every example's ``meta`` says where it came from: ``source`` and ``row`` (the record's position, from 0) for files and
datasets; ``source``, ``package``, ``file`` (relative to the fortunes folder), ``index`` (the entry's position among
the file's non-empty entries, from 0) and ``lang`` for fortunes; ``split`` once split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import QwenscopeError
from qwenscope.data import read_json_records, read_jsonl

logger = logging.getLogger(__name__)

POSITIVE_LABELS = frozenset({"toxic", "offensive", "1", "true", "yes"})
"""Label values read as 1 (lower-cased, stripped)."""
NEGATIVE_LABELS = frozenset({"0", "false", "no", "clean", "neutral", "non-toxic"})
"""Label values read as 0."""
FORTUNE_LANGUAGES = ("es", "it")
"""Languages with a Debian offensive fortunes package (``fortunes-<lang>-off``)."""
SPLIT_NAMES = ("discovery", "test")
_DISK_MARKERS = ("dataset_dict.json", "state.json")


@dataclass
class Example:
    """One labelled text."""

    text: str
    label: int
    """1 = positive (toxic, offensive), 0 = clean."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance (see the module doc)."""


@dataclass
class LabelledSet:
    """A named list of labelled examples and where they came from."""

    name: str
    examples: list[Example]
    source: str
    """The file, ``hf:`` spec or fortunes folders the examples were read from."""

    def __post_init__(self) -> None:
        bad = next((e.label for e in self.examples if e.label not in (0, 1)), None)
        if bad is not None:
            raise QwenscopeError(f"{self.name!r} has the label {bad!r}; labels are 1 (positive) or 0 (clean)")

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> np.ndarray:
        """The labels as an int64 array, in example order."""
        return np.array([e.label for e in self.examples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Iterable[int], name: str | None = None) -> LabelledSet:
        """The examples at ``indices`` (in that order), named ``name`` (default: this set's name)."""
        return LabelledSet(name or self.name, [self.examples[i] for i in indices], self.source)

    def counts(self) -> dict[int, int]:
        """``{1: positives, 0: negatives}``."""
        positives = sum(e.label for e in self.examples)
        return {1: positives, 0: len(self.examples) - positives}


def check_binary(data: LabelledSet, what: str, *, fix: str | None = None) -> None:
    """One clear QwenscopeError when ``data`` (called ``what`` in the message) is empty or holds a single class."""
    if not data.examples:
        raise QwenscopeError(f"{what} is empty; {fix or 'pass data with examples of both labels (1 and 0)'}")
    counts = data.counts()
    for label, other in ((1, 0), (0, 1)):
        if counts[other] == 0:
            hint = fix or f"add examples labelled {other}, or check --label-column and --positive"
            raise QwenscopeError(
                f"{what} holds only label {label} ({counts[label]} examples); a classifier needs both classes: {hint}"
            )


# ---------------------------------------------------------------- loading
def load_labelled(
    spec: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    positive: Sequence[str] = (),
) -> LabelledSet:
    """Labelled examples from a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file, ``hf:NAME[:CONFIG][@SPLIT]`` or
    ``fortunes-off:es`` / ``fortunes-off:it`` (see the module doc)."""
    spec = spec.strip()
    if spec.startswith("fortunes-off:"):
        return fortunes_offensive(spec.partition(":")[2])
    if spec.startswith("hf:"):
        records, source, name = _hf_records(spec[3:])
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise QwenscopeError(
                f"no labelled data at {spec!r}: not a file, hf:NAME[@SPLIT] or fortunes-off:es/it; check the path"
            )
        records, source, name = _file_records(path), str(path), path.name.split(".")[0]
    wanted = frozenset(p.strip().lower() for p in positive)
    examples = _examples(records, source, text_column, label_column, wanted)
    return LabelledSet(name, examples, source)


def _examples(
    records: Iterable[dict[str, Any]], source: str, text_column: str, label_column: str, positive: frozenset[str]
) -> list[Example]:
    examples, empty, rows = [], 0, 0
    for row, record in enumerate(records):
        rows += 1
        for column in (text_column, label_column):
            if column not in record:
                where = source if row == 0 else f"{source} row {row}"
                raise QwenscopeError(
                    f"{where} has no column {column!r} (its columns: {', '.join(map(str, record))}); "
                    "name the right ones with --text-column/--label-column"
                )
        text = record[text_column]
        if text is None or (isinstance(text, str) and not text.strip()):
            empty += 1
            continue
        if not isinstance(text, str):
            raise QwenscopeError(
                f"{source} row {row}: the text column {text_column!r} holds a "
                f"{type(text).__name__}, not a string; name the text with --text-column"
            )
        label = parse_label(record[label_column], positive, f"{source} row {row}")
        examples.append(Example(text, label, {"source": source, "row": row}))
    if rows == 0:
        raise QwenscopeError(f"{source} has no rows; pass a file with labelled records")
    if not examples:
        raise QwenscopeError(f"every row of {source} has an empty {text_column!r}; name the text with --text-column")
    if empty:
        logger.warning("%s: skipped %d of %d rows with an empty %r", source, empty, rows, text_column)
    return examples


def parse_label(value: Any, positive: frozenset[str] = frozenset(), where: str = "a row") -> int:
    """1 or 0 for a label value (see the module doc); one clear line for a value that is neither."""
    if isinstance(value, bool):
        key = "true" if value else "false"
    elif isinstance(value, (int, float)) and float(value) in (0.0, 1.0):
        key = str(int(value))
    else:
        key = str(value).strip().lower() if isinstance(value, (str, int, float)) else ""
    if key and positive:
        return int(key in positive)
    if key in POSITIVE_LABELS:
        return 1
    if key in NEGATIVE_LABELS:
        return 0
    raise QwenscopeError(
        f"{where}: the label {value!r} is not one of 1/0, true/false, yes/no, toxic/clean; fix the "
        "value, or pass --positive VALUE (every other value then counts as 0)"
    )


def _file_records(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return iter(read_jsonl(path))
    if suffix == ".json":
        return iter(read_json_records(path))
    raise QwenscopeError(f"cannot tell the format of {path}: name it .jsonl, .json, .csv or .tsv")


def _csv_records(path: Path, delimiter: str) -> Iterator[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle, delimiter=delimiter)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise QwenscopeError(f"cannot read {path} ({type(e).__name__}: {e}); pass a readable UTF-8 file") from None


def _hf_records(spec: str) -> tuple[Iterator[dict[str, Any]], str, str]:
    """Rows of ``NAME[:CONFIG][@SPLIT]``, its source string and a short name; local paths as qwenscope.data.sources."""
    try:
        import datasets
    except ImportError:
        raise QwenscopeError("hf: data needs the datasets package; install it with: pip install datasets") from None
    target, _, split_name = spec.partition("@")
    local = Path(target).expanduser()
    try:
        if local.is_dir() and any((local / m).is_file() for m in _DISK_MARKERS):
            loaded = datasets.load_from_disk(str(local))
        elif local.is_file():
            builder = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(local.suffix.lower(), "json")
            loaded = datasets.load_dataset(builder, data_files=str(local), split=split_name or None, streaming=True)
        elif local.is_dir():
            loaded = datasets.load_dataset(str(local), split=split_name or None, streaming=True)
        else:
            name, _, config = target.partition(":")
            loaded = datasets.load_dataset(name, config or None, split=split_name or None, streaming=True)
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, ValueError for a bad split, ...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QwenscopeError(
            f"cannot load the dataset {target!r} ({reason}); check the name, config and split, or pass a local file"
        ) from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split_name and split_name not in loaded:
            raise QwenscopeError(f"the dataset {target!r} has no split {split_name!r}; its splits: {', '.join(loaded)}")
        pick = split_name or ("train" if "train" in loaded else next(iter(loaded)) if len(loaded) == 1 else None)
        if pick is None:
            raise QwenscopeError(
                f"the dataset {target!r} has the splits {', '.join(loaded)}; pick one: hf:{target}@SPLIT"
            )
        loaded, split_name = loaded[pick], pick
    short = target.rstrip("/").split("/")[-1].split(":")[0] + (f"@{split_name}" if split_name else "")
    return (dict(row) for row in loaded), f"hf:{target}" + (f"@{split_name}" if split_name else ""), short


# ---------------------------------------------------------------- the offensive fortunes
def fortunes_offensive(lang: str, *, seed: int = 0) -> LabelledSet:
    """Debian's offensive fortunes of ``lang`` (1) against its ordinary ones (0), cleaned and balanced (module doc)."""
    from qwenscope.data import fortune_entries, fortunes_dir

    lang = lang.strip()
    if lang not in FORTUNE_LANGUAGES:
        raise QwenscopeError(
            f"no offensive fortunes in {lang!r}; Debian has them in {', '.join(FORTUNE_LANGUAGES)} "
            "(fortunes-off:es, fortunes-off:it)"
        )
    root = fortunes_dir()
    source = f"fortunes-off:{lang}"

    def read(corpus: str, package: str, label: int) -> dict[str, Example]:
        unique: dict[str, Example] = {}
        for file, index, text in fortune_entries(corpus):
            relative = file.relative_to(root).as_posix()
            if label == 0 and "off" in relative.split("/"):  # fortunes-es ships its offensive files under es/off/
                continue
            meta = {"source": source, "package": package, "file": relative, "index": index, "lang": lang}
            unique.setdefault(_key(text), Example(text, label, meta))
        return unique

    offensive = read(f"{lang}-off", f"fortunes-{lang}-off", 1)
    ordinary = read(lang, f"fortunes-{lang}", 0)
    both = offensive.keys() & ordinary.keys()
    kept = [[e for k, e in found.items() if k not in both] for found in (offensive, ordinary)]
    size = min(map(len, kept))
    rng = random.Random(seed)
    balanced = [
        side if len(side) == size else [side[i] for i in sorted(rng.sample(range(len(side)), size))] for side in kept
    ]
    logger.info(
        "%s: %d offensive and %d ordinary unique entries, %d in both dropped; %d of each kept",
        source,
        len(offensive),
        len(ordinary),
        len(both),
        size,
    )
    data = LabelledSet(source, balanced[0] + balanced[1], f"{root}/off/{lang} vs {root}/{lang}")
    check_binary(data, source, fix=f"reinstall them with: apt-get install fortunes-{lang} fortunes-{lang}-off")
    return data


def _key(text: str) -> str:
    """What counts as the same text: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


# ---------------------------------------------------------------- splits and subsamples
def split(
    data: LabelledSet, *, test_fraction: float = 0.3, salt: str = "qwenscope-classify"
) -> tuple[LabelledSet, LabelledSet]:
    """(discovery, test): a text goes to test when a salted hash of it falls in the lowest ``test_fraction``.

    The same text (up to whitespace) always lands on the same side, on every run and machine; each side must hold
    both classes. Each example's ``meta["split"]`` records its side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise QwenscopeError(f"test fraction {test_fraction} is outside (0, 1); pass e.g. 0.3")
    check_binary(data, data.name)
    sides: dict[str, list[Example]] = {name: [] for name in SPLIT_NAMES}
    for example in data.examples:
        side = "test" if hash_fraction(example.text, salt) < test_fraction else "discovery"
        sides[side].append(replace(example, meta={**example.meta, "split": side}))
    parts = tuple(LabelledSet(f"{data.name}/{side}", sides[side], data.source) for side in SPLIT_NAMES)
    for part, side in zip(parts, SPLIT_NAMES):
        check_binary(
            part,
            f"the {side} split of {data.name}",
            fix=f"pass more data of each label or another test fraction (now {test_fraction})",
        )
    return parts[0], parts[1]


def hash_fraction(text: str, salt: str = "qwenscope-classify") -> float:
    """A number in [0, 1) fixed by ``salt`` and the text (whitespace-insensitive): blake2b, the same everywhere."""
    data = f"{salt}\x00{_key(text)}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2**64


def subsample(data: LabelledSet, fraction: float, *, seed: int = 0) -> LabelledSet:
    """``fraction`` of each class (rounded, at least one), in the original order; for a given seed a smaller
    fraction's examples are a subset of a larger one's (the data-efficiency curve)."""
    if not 0.0 < fraction <= 1.0:
        raise QwenscopeError(f"subsample fraction {fraction} is outside (0, 1]; pass e.g. 0.1 for 10%")
    keep: list[int] = []
    for label in (1, 0):
        members = [i for i, e in enumerate(data.examples) if e.label == label]
        random.Random(f"{seed}/{label}").shuffle(members)  # str seeds hash with sha512: the same everywhere
        keep += members[: max(1, round(fraction * len(members)))] if members else []
    return data.subset(sorted(keep), name=f"{data.name}@{fraction:g}")
