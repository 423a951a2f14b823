"""Token text without broken characters, with the real smollm2 and Qwen3 tokenizers (byte-level BPE) and a
SentencePiece-style byte-fallback tokenizer (as Gemma's): joint decoding, window edges, single tokens, the store's
contexts and ``token_features``."""

from __future__ import annotations

import numpy as np
import pytest
from features_helpers import make_sae
from tiny_models import tiny_qwen3

from qwenscope.features.search import token_features
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import FeatureStore
from qwenscope.features.text import TokenText, join_pieces, piece_at, token_text

TEXT = "Grüße aus München: 中文字符很好 Привет, мир! 😀👍🏽 qubit ꙮ 𝔸 naïve ½ ℃ ﷺ"
BAD = "\ufffd"


def _smollm2():
    from qwenscope import load_model

    return load_model("smollm2-135m")[1]


def _qwen3():
    from qwenscope.models.tokenizers import qwen3_tokenizer

    return qwen3_tokenizer()


def _byte_fallback():
    """A SentencePiece-style BPE (the shape of Gemma's): '▁' for spaces, <0xNN> byte tokens for characters outside
    its small vocabulary, decoded by Replace + ByteFallback + Fuse."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzGMP,!:üП", "▁a", "▁au", "▁aus"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "a"), ("▁a", "u"), ("▁au", "s")]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")


TOKENIZERS = {"smollm2": _smollm2, "qwen3": _qwen3, "byte-fallback": _byte_fallback}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def _ids(tokenizer, text: str = TEXT) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_joint_decoding_breaks_no_character(tokenizer):
    ids = _ids(tokenizer)
    assert sum(tokenizer.decode([i]) == BAD or BAD in tokenizer.decode([i]) for i in ids) >= 3  # the old way breaks
    text = TokenText(tokenizer)
    pieces = text.pieces(ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids) and BAD not in "".join(pieces)
    raw = [text.raw(i) for i in ids]
    assert b"".join(r or b"" for r in raw) == tokenizer.decode(ids).encode()  # every token's bytes, in order
    done = 0  # each character sits on the token holding its last byte
    for i, piece in enumerate(pieces):
        done += len(piece.encode())
        seen = sum(len(r or b"") for r in raw[: i + 1])
        assert 0 <= seen - done <= 3 and "".join(pieces[: i + 1]).encode() == tokenizer.decode(ids).encode()[:done]
    assert "" in pieces  # some tokens hold only the first bytes of a character


def test_windows_cut_inside_a_character_drop_its_bytes(tokenizer):
    ids = _ids(tokenizer)
    text = TokenText(tokenizer)
    full = tokenizer.decode(ids)
    width = 7
    rows = np.array([ids[s : s + width] for s in range(len(ids) - width)])
    padded = np.concatenate([np.full((len(rows), 2), -1), rows], axis=1)  # -1 pads (a chunk's edge) are left out
    windows = text.windows(padded)
    assert windows == [text.pieces(row) for row in rows]  # the fast lookup path agrees with joint decoding
    cut = 0
    for row, pieces in zip(rows, windows):
        joined = "".join(pieces)
        assert BAD not in joined and joined in full
        cut += BAD in tokenizer.decode(row.tolist())
    assert cut >= 3  # many windows start or end inside a character: their cut-off bytes are dropped, not shown


def test_a_token_alone_escapes_the_bytes_of_an_incomplete_character(tokenizer):
    text = token_text(tokenizer)
    assert token_text(tokenizer) is text  # one per tokenizer: its per-id cache is shared
    partial = [i for i in _ids(tokenizer) if BAD in tokenizer.decode([i])]
    assert partial
    for i in partial:
        alone = text.token(i)
        assert BAD not in alone and "\\x" in alone and alone == text.raw(i).decode("utf-8", "backslashreplace")
    assert text.token(10**7) == f"<{10**7}>"  # an id past the vocabulary (the padding rows of an lm_head)


def test_join_pieces_and_piece_at():
    pieces, acts = ["a", "", "", "中", "b", ""], [1.0, 5.0, 2.0, 3.0, 0.5, 9.0]
    assert join_pieces(pieces, acts) == [("a", 1.0), ("中", 5.0), ("b", 0.5)]
    assert [piece_at(pieces, i) for i in range(6)] == ["a", "中", "中", "中", "b", ""]


def test_store_contexts_and_lens_have_no_broken_character(tmp_path):
    """A tiny Qwen3 on the real Qwen3 tokenizer over multilingual text: every context decodes to whole characters
    of the text, and the per-token activations stay in place."""
    model, tokenizer = tiny_qwen3()
    sae = make_sae(d_sae=64, k=4, hookpoint="resid_post.0")
    docs = [f"{i}: " + TEXT[i % 7 :] + " " + TEXT[: i % 11] for i in range(40)]
    cfg = StatsConfig(
        n_tokens=10**6, seq_len=24, batch_size=4, top_n=6, window_before=5, window_after=2, lens_top=5, progress=False
    )
    stats = compute_feature_stats(model, tokenizer, sae, docs, cfg)
    store = FeatureStore.write(tmp_path / "store", stats, tokenizer, {"model": "tiny", "sae": "random"})
    stream = tokenizer.eos_token.join(docs)
    checked = 0
    for f in range(store.d_sae):
        info = store.feature(f)
        assert all(BAD not in t for t, _ in info.promoted + info.suppressed)
        for rank, context in enumerate(info.contexts):
            joined = "".join(context.tokens)
            assert BAD not in joined and joined in stream
            window = stats.top_tokens[f, rank].tolist()
            top = 5 - sum(i < 0 for i in window[:5])  # the top token's place once the left pads are gone
            assert len(context.tokens) == len(context.acts) and context.acts[top] == pytest.approx(context.max_act)
            ids = [i for i in window if i >= 0]
            checked += BAD in tokenizer.decode(ids)
    assert checked >= 5  # contexts that per-token (and even whole-window) decoding would have broken


def test_token_features_show_whole_characters():
    model, tokenizer = tiny_qwen3()
    sae = make_sae(d_sae=64, k=4, hookpoint="resid_post.0")
    rows = token_features(model, tokenizer, sae, "resid_post.0", TEXT, 3)
    assert "".join(r["token"] for r in rows) == TEXT and all(BAD not in r["token"] for r in rows)
    assert [r["pos"] for r in rows] == list(range(len(_ids(tokenizer))))
