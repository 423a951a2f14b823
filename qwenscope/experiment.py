"""Machinery shared by the benchmark (``bench/perf/``) and experiment (``experiments/<question>/``) scripts.

Every script answers one question against a baseline and writes a JSON result; this module holds what they repeat:

* ``add_common_args(parser, device=..., threads=..., repeats=..., seed=..., out=...)`` adds the usual flags with the
  script's own defaults (a ``None`` default leaves the flag out); ``set_threads(n)`` applies ``--threads`` (0: torch's
  choice); ``default_device()`` is ``"cuda"`` when there is one, else ``"cpu"``.
* ``environment()`` describes the machine and software (date, git commit and whether the tree had edits,
  Python/torch/transformers versions, CPU model and ``torch.backends.cpu.get_cpu_capability()``,
  ``ATEN_CPU_CAPABILITY``, threads, GPU); ``write_result`` writes a result dict as JSON with that block added under
  ``"environment"``.
* ``timed(fn)`` is the wall-clock seconds of ``fn()`` (CUDA synchronised before and after); ``timed_cpu(fn)`` adds the
  CPU seconds of this process; ``interleaved(variants, repeats)`` runs every variant once per repeat, in turn, so
  drift in machine load hits them alike; ``medians(runs)`` is the median of each variant's runs.
* ``load_script(path)`` imports a script beside another (``bench/perf/`` and ``experiments/*/`` are no packages)
  without touching ``sys.path``: ``load_script(Path(__file__).with_name("concepts.py"))``.
* ``peak_rss(code, *argv)`` runs ``code`` in a fresh interpreter and returns its peak RSS (VmHWM) and time;
  ``probe_rss(probe, tokens)`` runs one of the streaming workloads in ``PROBES`` (a tiny random Llama, a byte
  tokenizer, no download): the memory tests and ``bench/perf/stream_memory.py``, ``bench/perf/stats.py`` share them.

Usage in a script::

    from qwenscope.experiment import add_common_args, interleaved, medians, write_result

    parser = argparse.ArgumentParser(description=__doc__)
    add_common_args(parser, repeats=5, threads=0, out="bench/perf/results/capture.json")
    args = parser.parse_args()
    runs = interleaved({"full": full, "capture": capture}, args.repeats)
    med = medians(runs)
    print(...)  # the script's table
    write_result(args.out, {"bench": "capture", "results": ...})
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "PROBES",
    "add_common_args",
    "default_device",
    "environment",
    "interleaved",
    "load_script",
    "medians",
    "peak_rss",
    "probe_rss",
    "set_threads",
    "timed",
    "timed_cpu",
    "write_result",
]


# ---------------------------------------------------------------------------------------------------- arguments
def default_device() -> str:
    """``"cuda"`` when a GPU is there, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    device: str | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
) -> argparse.ArgumentParser:
    """Add ``--device``, ``--threads``, ``--repeats``, ``--seed``, ``--out`` with these defaults; ``None`` leaves a
    flag out. ``device="auto"`` means ``default_device()``. Returns ``parser``."""
    if device is not None:
        parser.add_argument("--device", default=default_device() if device == "auto" else device)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's choice)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="interleaved timed runs (median reported)")
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed)
    if out is not None:
        parser.add_argument("--out", default=str(out), help="where the JSON result goes")
    return parser


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` unless it is 0 or ``None``; returns the thread count in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """The Python file ``path`` imported as module ``name`` (default: ``script_<stem>``), registered in
    ``sys.modules`` (dataclasses look their module up there); a second call returns the same module."""
    path = Path(path).resolve()
    name = name or f"script_{path.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


# ---------------------------------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    """The output of ``git args`` in the checkout this package was imported from; ``None`` outside one."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine and software a result was measured on (JSON-able)."""
    commit = _git("rev-parse", "HEAD")
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "git_dirty": None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "qwenscope": _version("qwenscope"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return env


def write_result(
    path: str | Path, result: Mapping[str, Any], *, ensure_ascii: bool = True, default: Callable | None = None
) -> Path:
    """Write ``result`` plus ``"environment": environment()`` to ``path`` as indented JSON (folders made); returns
    the path. The keys of ``result`` are kept as they are, in order; the environment block comes last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**result, "environment": environment()}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=ensure_ascii, default=default) + "\n")
    log.info("wrote %s", path)
    return path


# ---------------------------------------------------------------------------------------------------- timing
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of ``fn()``, with CUDA synchronised before and after (queued kernels count)."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of ``fn()``, CUDA synchronised. On a machine shared with
    other jobs the CPU time is the steadier measure of the work; the wall time is what a user waits."""
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    timer: Callable[[Callable[[], object]], T] = timed,  # type: ignore[assignment]
    warmup: bool = False,
    progress: Callable[[int, dict[str, list[T]]], None] | None = None,
) -> dict[str, list[T]]:
    """Each variant's ``repeats`` timings (``timer(fn)``), measured in turn within every repeat so that drift hits
    them alike. ``warmup`` runs every variant once, untimed, first; ``progress(repeat, runs)`` after each repeat."""
    if warmup:
        for fn in variants.values():
            fn()
    runs: dict[str, list[T]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, fn in variants.items():
            runs[name].append(timer(fn))
        if progress is not None:
            progress(repeat, runs)
    return runs


def medians(runs: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The median of each variant's runs."""
    return {name: statistics.median(values) for name, values in runs.items()}


# ---------------------------------------------------------------------------------------------------- memory
# The peak RSS of the process's own memory: VmHWM where /proc has it. ``ru_maxrss`` is the fallback only: Linux
# carries it over fork + exec, so a probe started from a large process (pytest with torch loaded) would report at
# least its parent's RSS.
_REPORT = """
import json as _json, resource as _resource, time as _time
_seconds = _time.perf_counter() - _start
try:
    with open("/proc/self/status") as _f:
        _rss = next(int(_l.split()[1]) for _l in _f if _l.startswith("VmHWM:"))
except (OSError, StopIteration):
    _rss = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
print(_json.dumps({"result": result, "rss_kb": _rss, "seconds": _seconds}))
"""


def peak_rss(code: str, *argv: str, path: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``argv``, ``path`` prepended to ``sys.path``); the
    code sets ``result`` (JSON-able). Returns ``{"result", "rss_kb" (peak RSS: VmHWM), "peak_rss_mib",
    "seconds" (the code's run time)}``."""
    setup = f"import sys, time\n_start = time.perf_counter()\nsys.path[:0] = {[str(p) for p in path]!r}\n"
    out = subprocess.run(
        [sys.executable, "-c", setup + code + _REPORT, *argv], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"memory probe failed ({out.returncode}):\n{out.stderr[-4000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["peak_rss_mib"] = report["rss_kb"] / 1024
    return report


def tiny_llama(num_layers: int = 4, seed: int = 0) -> Any:
    """The probes' model: a random fp32 Llama (hidden 64, intermediate 128, 4 heads / 2 kv heads of 16, vocabulary
    512), the same as the tests' ``build_tiny("llama")``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        num_hidden_layers=num_layers,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()  # type: ignore[arg-type]  # transformers types .to oddly


BYTE_CHAT_TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}</s>{% endfor %}"
"""The byte tokenizer's chat template: each message as <|user|>, its content, </s>."""


def byte_tokenizer(chat: bool = False) -> Any:
    """The probes' tokenizer: one token per UTF-8 byte (ids 3..258), <pad>=0, <s>=1, </s>=2; ``chat`` adds
    <|user|>=259 and a minimal chat template (the tests' ``make_byte_tokenizer``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[char] = 3 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    extra = {"extra_special_tokens": ["<|user|>"]} if chat else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", bos_token="<s>", **extra
    )
    if chat:
        tokenizer.chat_template = BYTE_CHAT_TEMPLATE
    return tokenizer


def random_sae(d_sae: int = 96, k: int = 6, hookpoint: str = "resid_post.1", seed: int = 0) -> Any:
    """The probes' SAE: a random TopK SAE on the tiny Llama's width (64) with a positive encoder bias, so most
    features fire sometimes (the feature tests' ``make_sae``)."""
    from qwenscope import Sae, SaeConfig

    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=64, d_sae=d_sae, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.3 / 3**0.5)  # relative to encoder rows of norm 1/sqrt(3) (Sae's init)
    return sae


_PROBE_SETUP = """
import torch
from qwenscope.experiment import byte_tokenizer, random_sae, tiny_llama
torch.manual_seed(0); torch.set_num_threads(1)
docs = [" ".join(f"w{(i * 13 + j) % 97}" for j in range(40 + i % 50)) for i in range(400)]
tokens = int(sys.argv[1])
_start = time.perf_counter()  # the workload's time, not the imports'
"""

PROBES = {
    # ActivationStream over two hookpoints of a 4-layer Llama
    "stream": """
from qwenscope.data import ActivationStream, StreamConfig
cfg = StreamConfig(seq_len=64, batch_size=16, out_batch=1024, buffer_tokens=16384, max_tokens=tokens, repeat=True,
                   progress=False)
result = sum(len(b["resid_post.2"]) for b in ActivationStream(tiny_llama(), byte_tokenizer(chat=True), docs,
                                                               ["resid_post.2", "resid_post.3"], cfg))
""",
    # compute_feature_stats with a d_sae 1024 SAE on a 2-layer Llama
    "stats": """
from qwenscope.features.stats import StatsConfig, compute_feature_stats
def forever():
    while True:
        yield from docs
cfg = StatsConfig(n_tokens=tokens, seq_len=128, batch_size=16, progress=False)
result = compute_feature_stats(tiny_llama(num_layers=2), byte_tokenizer(), random_sae(d_sae=1024, k=16),
                               forever(), cfg).n_tokens
""",
}


def probe_rss(probe: str, tokens: int) -> dict[str, Any]:
    """``{"n": tokens streamed, "rss_kb": peak RSS, "seconds": time}`` of the workload ``PROBES[probe]`` over
    ``tokens`` tokens of a repeated corpus, in a fresh process."""
    report = peak_rss(_PROBE_SETUP + PROBES[probe], str(tokens))
    return {"n": report["result"], "rss_kb": report["rss_kb"], "seconds": report["seconds"]}
