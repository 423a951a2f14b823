"""Token ids to per-token text with no broken character.

    text = token_text(tokenizer)
    text.pieces([28589, 5470, 249])    # ['中', '', ' П']: ' П' is two tokens; it is shown on the second
    text.token(5470)                   # ' \\xd0': one token alone, its incomplete bytes escaped
    text.windows(ids)                  # (m, window) ids with -1 pads -> m lists of pieces, fast

Byte-level tokenizers (GPT-2 style: smollm2, Qwen) and SentencePiece ones with byte fallback (Gemma) split a
multi-byte UTF-8 character over several tokens; decoding each token alone gives U+FFFD for every part. Here the
tokens of a sequence are decoded jointly: each token's bytes come from the vocabulary, an incremental UTF-8 decoder
reads them in order, and each character goes to the token that holds its last byte (the first position where the
model has seen all of it). The tokens before it, holding only its first bytes, get ''. So there is still one piece
per token, and per-token activations keep their places. At a sequence's edges, the bytes of a character cut by the
edge are dropped. ``join_pieces`` merges each '' into the next piece for display (with the larger activation).

Other tokenizers (WordPiece, slow Python ones) decode each token on its own: their tokens are whole characters.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_CONTINUATION = bytes(range(0x80, 0xC0))
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE vocabularies)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_spec(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    try:
        return dict(json.loads(decoder.__getstate__())) if decoder is not None else {}
    except (AttributeError, TypeError, ValueError):
        return {}


class TokenText:
    """Per-token text of one tokenizer's ids (see the module doc); get it with ``token_text(tokenizer)``.

    Each id's bytes are worked out on first use and kept, so a few tokens cost little and a store's contexts (a few
    hundred thousand windows over a few ten thousand distinct ids) take seconds.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        spec = _decoder_spec(tokenizer)
        steps = spec.get("decoders", [spec]) if spec else []
        kinds = {s.get("type") for s in steps}
        self.kind = "byte-level" if "ByteLevel" in kinds else "byte-fallback" if "ByteFallback" in kinds else "other"
        self.swaps = [
            (s["pattern"]["String"], s["content"])
            for s in steps
            if s.get("type") == "Replace" and "String" in s.get("pattern", {})
        ]
        self.added = {int(i): str(t.content) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self._bytes: dict[int, bytes | None] = {}
        self._alone: dict[int, tuple[str, bool]] = {}

    def raw(self, i: int) -> bytes | None:
        """The bytes of token ``i``; None where the decoder is not byte-based (or ``i`` is unknown)."""
        if i not in self._bytes:
            self._bytes[i] = self._raw(i)
        return self._bytes[i]

    def _raw(self, i: int) -> bytes | None:
        if not 0 <= i < self.size:
            return None
        if i in self.added:
            return self.added[i].encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(i)
        if piece is None or self.kind == "other":
            return None
        if self.kind == "byte-level":
            return bytes(_BYTE_OF_CHAR[c] for c in piece) if all(c in _BYTE_OF_CHAR for c in piece) else None
        if m := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        for old, new in self.swaps:
            piece = piece.replace(old, new)
        return piece.encode("utf-8")

    def alone(self, i: int) -> tuple[str, bool]:
        """(token ``i`` decoded on its own, whether that gave whole characters)."""
        if i not in self._alone:
            raw = self.raw(i)
            if not 0 <= i < self.size:
                self._alone[i] = (f"<{i}>", True)  # e.g. the padding rows of a model's vocabulary
            elif raw is None:
                piece = self.tokenizer.convert_ids_to_tokens(i)
                self._alone[i] = (str(self.tokenizer.convert_tokens_to_string([piece])), True)
            else:
                try:
                    self._alone[i] = (raw.decode("utf-8"), True)
                except UnicodeDecodeError:
                    self._alone[i] = (raw.decode("utf-8", "backslashreplace"), False)
        return self._alone[i]

    def token(self, i: int) -> str:
        """One token on its own: its text, with the bytes of an incomplete character as ``\\xNN`` escapes."""
        return self.alone(int(i))[0]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """One piece of text per token of a sequence; each character on the token holding its last byte."""
        out: list[str] = []
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        started = False
        for i in map(int, ids):
            raw = self.raw(i)
            if raw is None:  # not byte-based, or an id the tokenizer does not know: a piece of its own
                out.append(self.token(i))
                decoder.reset()
                started = True
                continue
            if not started:  # the sequence starts inside a character: drop the bytes of its cut-off part
                raw = raw.lstrip(_CONTINUATION)
                started = bool(raw)
            out.append(decoder.decode(raw))
        return out  # bytes of a character cut by the end stay in the decoder: dropped

    def windows(self, ids: np.ndarray) -> list[list[str]]:
        """Pieces of every row of ``ids`` (m, window), -1 pads left out; rows of whole-character tokens are looked
        up, only the others are decoded jointly."""
        ids = np.asarray(ids)
        unique, inverse = np.unique(ids, return_inverse=True)
        alone = [self.alone(int(i)) for i in unique]
        strings = np.array([s for s, _ in alone] or [""], dtype=object)[inverse.reshape(ids.shape)]
        whole = np.array([w or i < 0 for (_, w), i in zip(alone, unique)] or [True])[inverse.reshape(ids.shape)]
        rows: list[list[str]] = []
        easy_rows = np.asarray(whole.all(axis=1)).reshape(-1).tolist()
        for row, text, easy, keep in zip(ids, strings, easy_rows, ids >= 0):
            rows.append(list(text[keep]) if easy else self.pieces(row[keep]))
        return rows


@functools.lru_cache(maxsize=4)
def _cached(tokenizer: Any) -> TokenText:
    return TokenText(tokenizer)


def token_text(tokenizer: Any) -> TokenText:
    """The ``TokenText`` of ``tokenizer`` (one per tokenizer object, so its per-id cache is shared)."""
    try:
        return _cached(tokenizer)
    except TypeError:  # an unhashable tokenizer
        return TokenText(tokenizer)


def join_pieces(pieces: Sequence[str], acts: Sequence[float]) -> list[tuple[str, float]]:
    """(text, activation) units for display: each '' piece (the first bytes of a character) joins the next piece,
    and the unit keeps the larger activation. A trailing '' is dropped."""
    units: list[tuple[str, float]] = []
    pending: float | None = None
    for piece, act in zip(pieces, acts):
        if not piece:
            pending = act if pending is None else max(pending, act)
            continue
        units.append((piece, act if pending is None else max(pending, act)))
        pending = None
    return units


def piece_at(pieces: Sequence[str], i: int) -> str:
    """The text shown for token ``i``: its piece, or for a '' piece the character it begins (the next piece)."""
    for piece in pieces[i:]:
        if piece:
            return piece
    return ""
