"""The code-switching metric: how much of the model's answers is in a language it should not use.

    cs = code_switching(responses, expected="es", unwanted="en")
    cs.sentence_unwanted      # share of sentences identified as English
    cs.response_switched      # share of responses with at least one English sentence
    cs.to_dict()

Language identification is langid.py (``pip install langid``), restricted to the languages involved (the expected,
the unwanted and any ``languages`` given), which makes it far more reliable on short text than choosing among its 97.
Sentences are cut at ``.!?`` (and their full-width forms) followed by a space, and at line breaks; pieces with fewer
than ``min_letters`` letters (numbers, list markers, "OK.") are too short to identify and are skipped. A response
with no identifiable piece counts in ``n_empty`` and in no share.

Sentence-level identification misses a single word of the other language inside a sentence ("se *will* por la cual").
``word_switching`` counts those: the share of words that only the unwanted language uses, by a word list built from
text in both languages (``only_in``; a word never written in lower case there, a name, is left out):

    words = only_in(english_texts, spanish_texts)
    ws = word_switching(responses, words)
    ws.word_unwanted          # share of words that are English-only
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qwenscope import QwenscopeError
from qwenscope.util import require

_WORD = re.compile(r"[^\W\d_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
MIN_LETTERS = 12
"""Pieces with fewer letters than this are not identified."""


@dataclass
class CodeSwitch:
    """Shares of responses and of sentences by identified language."""

    n_responses: int
    """Responses with at least one identifiable sentence (the denominator of the response shares)."""
    n_sentences: int
    """Identifiable sentences over all responses (the denominator of the sentence shares)."""
    n_empty: int
    """Responses with nothing identifiable (empty, or only short pieces)."""
    response_unwanted: float
    """Share of responses identified, as a whole, as the unwanted language."""
    response_off: float
    """Share of responses identified, as a whole, as another language than the expected one."""
    response_switched: float
    """Share of responses with at least one sentence in the unwanted language."""
    sentence_unwanted: float
    """Share of sentences in the unwanted language."""
    sentence_off: float
    """Share of sentences in another language than their response's expected one."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def _identifier() -> Any:
    langid = require("langid.langid", "posttrain", "the code-switching metric")
    LanguageIdentifier, model = langid.LanguageIdentifier, langid.model
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)  # slow to build: once per process


def identify(texts: Sequence[str], languages: Sequence[str]) -> list[str]:
    """langid's language of each text, chosen among ``languages`` only (ISO 639-1 codes such as en, es, it)."""
    unknown = sorted(set(languages) - set(_full_classes()))
    if unknown:
        raise QwenscopeError(
            f"langid does not know the language code {unknown[0]!r}; use ISO 639-1 codes such as en, es, it, de, fr"
        )
    ident = _identifier()
    ident.set_languages(sorted(set(languages)))
    try:
        return [ident.classify(t)[0] for t in texts]
    finally:
        ident.set_languages(None)


@functools.lru_cache(maxsize=1)
def _full_classes() -> tuple[str, ...]:
    ident = _identifier()
    ident.set_languages(None)
    return tuple(ident.nb_classes)


def sentences(text: str, min_letters: int = MIN_LETTERS) -> list[str]:
    """The identifiable pieces of ``text`` (see the module doc)."""
    pieces = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in pieces if sum(c.isalpha() for c in p) >= min_letters]


def code_switching(
    responses: Sequence[str],
    expected: str | Sequence[str],
    unwanted: str,
    *,
    languages: Sequence[str] = (),
    min_letters: int = MIN_LETTERS,
) -> CodeSwitch:
    """Code-switching of ``responses`` whose language should be ``expected`` (one code, or one per response)."""
    if not responses:
        raise QwenscopeError("no responses to measure; generate some first")
    wanted = [expected] * len(responses) if isinstance(expected, str) else list(expected)
    if len(wanted) != len(responses):
        raise QwenscopeError(f"{len(responses)} responses but {len(wanted)} expected languages; give one per response")
    langs = sorted({unwanted, *wanted, *languages})
    if len(langs) < 2:
        raise QwenscopeError(f"the expected language is the unwanted one ({unwanted!r}); nothing can switch")
    pieces = [sentences(r, min_letters) for r in responses]
    kept = [i for i, p in enumerate(pieces) if p]
    whole = identify([responses[i] for i in kept], langs)
    flat = identify([s for i in kept for s in pieces[i]], langs)
    per_response, start = [], 0
    for i in kept:
        per_response.append(flat[start : start + len(pieces[i])])
        start += len(pieces[i])
    n, m = len(kept), len(flat)
    off_sentences = sum(s != wanted[i] for i, found in zip(kept, per_response) for s in found)
    return CodeSwitch(
        n_responses=n,
        n_sentences=m,
        n_empty=len(responses) - n,
        response_unwanted=_share(sum(w == unwanted for w in whole), n),
        response_off=_share(sum(w != wanted[i] for i, w in zip(kept, whole)), n),
        response_switched=_share(sum(unwanted in found for found in per_response), n),
        sentence_unwanted=_share(sum(s == unwanted for s in flat), m),
        sentence_off=_share(off_sentences, m),
    )


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


@dataclass
class WordSwitch:
    """Words of the unwanted language inside responses."""

    n_responses: int
    """Responses with at least one word (the denominator of ``response_with_word``)."""
    n_words: int
    """Words over all responses (the denominator of ``word_unwanted``)."""
    word_unwanted: float
    """Share of words that only the unwanted language uses."""
    response_with_word: float
    """Share of responses with at least one such word."""
    top_words: list[str]
    """The most frequent such words, most frequent first (at most 10)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def words(text: str) -> list[str]:
    """The words of ``text``: runs of letters, as written."""
    return _WORD.findall(text)


def only_in(unwanted_texts: Sequence[str], expected_texts: Sequence[str]) -> frozenset[str]:
    """Lower-case words written in lower case somewhere in ``unwanted_texts`` and in no case in ``expected_texts``:
    the words only the unwanted language uses (names, never in lower case, are left out)."""
    if not unwanted_texts or not expected_texts:
        raise QwenscopeError("only_in needs texts in both languages; give some of each")
    unwanted = {w for t in unwanted_texts for w in words(t) if w.islower()}
    expected = {w.lower() for t in expected_texts for w in words(t)}
    found = frozenset(unwanted - expected)
    if not found:
        raise QwenscopeError("no word is used only by the unwanted language in these texts; give more or other text")
    return found


def word_switching(responses: Sequence[str], unwanted_words: Iterable[str]) -> WordSwitch:
    """How many words of ``responses`` are in ``unwanted_words`` (compared in lower case; see ``only_in``)."""
    if not responses:
        raise QwenscopeError("no responses to measure; generate some first")
    unwanted = {w.lower() for w in unwanted_words}
    if not unwanted:
        raise QwenscopeError("no unwanted words given; build them with only_in(unwanted_texts, expected_texts)")
    counts: Counter[str] = Counter()
    n_words = n_responses = with_word = 0
    for response in responses:
        found = [w.lower() for w in words(response)]
        n_words += len(found)
        n_responses += bool(found)
        hits = [w for w in found if w in unwanted]
        with_word += bool(hits)
        counts.update(hits)
    top = sorted(counts, key=lambda w: (-counts[w], w))[:10]
    return WordSwitch(
        n_responses=n_responses,
        n_words=n_words,
        word_unwanted=_share(counts.total(), n_words),
        response_with_word=_share(with_word, n_responses),
        top_words=top,
    )
