"""Text to activations: sources, tokenising and packing, masks, a shuffled activation stream, an on-disk cache.

texts = iter_texts("dataset-build:multi", split="train")          # documents
stream = ActivationStream(model, tokenizer, "dataset-build:multi", ["resid_post.12"], StreamConfig())
caches = write_cache(stream, "acts/", n_tokens=10**6)             # resumable, fp16 shards
for x in caches["resid_post.12"].batches(4096, seed=0):           # (4096, d_in) float32
    ...
"""

from qwenscope.data.cache import ActivationCache, write_cache
from qwenscope.data.corpora import fortune_entries, fortunes_dir
from qwenscope.data.sources import in_test_split, iter_texts, read_json_records, read_jsonl, read_text
from qwenscope.data.stream import ActivationStream, StreamConfig
from qwenscope.data.tokens import chunk_tokens, norm_outlier_mask, special_token_ids, token_mask

__all__ = [
    "ActivationCache",
    "ActivationStream",
    "StreamConfig",
    "chunk_tokens",
    "fortune_entries",
    "fortunes_dir",
    "in_test_split",
    "iter_texts",
    "norm_outlier_mask",
    "read_json_records",
    "read_jsonl",
    "read_text",
    "special_token_ids",
    "token_mask",
    "write_cache",
]
