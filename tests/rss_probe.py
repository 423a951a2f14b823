"""Peak memory of streaming work, each run in a fresh interpreter: for the memory tests and bench/perf/stream_memory.py,
bench/perf/stats.py. A probe streams ``tokens`` tokens of a repeated corpus through a tiny random Llama with the byte
tokenizer and prints what it streamed, its peak RSS (``ru_maxrss``) and its time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_SETUP = """
import json, resource, sys, time, torch
sys.path.insert(0, {tests!r}); sys.path.insert(0, {features!r})
from tiny_models import build_tiny, make_byte_tokenizer
torch.manual_seed(0); torch.set_num_threads(1)
docs = [" ".join(f"w{{(i * 13 + j) % 97}}" for j in range(40 + i % 50)) for i in range(400)]
tokens = int(sys.argv[1])
start = time.perf_counter()
"""

PROBES = {
    # ActivationStream over two hookpoints of a 4-layer Llama
    "stream": """
from qwenscope.data import ActivationStream, StreamConfig
cfg = StreamConfig(seq_len=64, batch_size=16, out_batch=1024, buffer_tokens=16384, max_tokens=tokens, repeat=True,
                   progress=False)
n = sum(len(b["resid_post.2"]) for b in ActivationStream(build_tiny("llama"), make_byte_tokenizer(chat=True), docs,
                                                          ["resid_post.2", "resid_post.3"], cfg))
""",
    # compute_feature_stats with a d_sae 1024 SAE on a 2-layer Llama
    "stats": """
from features_helpers import make_sae
from qwenscope.features.stats import StatsConfig, compute_feature_stats
def forever():
    while True:
        yield from docs
cfg = StatsConfig(n_tokens=tokens, seq_len=128, batch_size=16, progress=False)
n = compute_feature_stats(build_tiny("llama", num_layers=2), make_byte_tokenizer(), make_sae(d_sae=1024, k=16),
                          forever(), cfg).n_tokens
""",
}

_REPORT = """
print(json.dumps({"n": n, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - start}))
"""


def peak_rss(probe: str, tokens: int) -> dict:
    """``{"n": tokens streamed, "rss_kb": peak RSS, "seconds": time}`` of one probe in a fresh process."""
    script = _SETUP.format(tests=str(TESTS), features=str(TESTS / "features")) + PROBES[probe] + _REPORT
    out = subprocess.run([sys.executable, "-c", script, str(tokens)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
