"""End to end inside vLLM (slow, ~6 min on 2 cores): vllm.LLM on the cached smollm2-135m (fp32) with the plugin gives
``qwenscope serve``'s greedy texts for one mixed batch of unsteered, added, clamped and ablated requests, and each
request alone gives the tokens it gets in the batch: eager and compiled (torch.compile), with the engine core in its
own process finding the plugin through its entry point, with so little KV cache that requests are preempted, and on
random Qwen3 and Qwen3-MoE models.
vLLM lives in its own virtualenv (``make vllm-venv``: it pins another transformers): set QWENSCOPE_VLLM_PYTHON to its
python (``make test-vllm`` does); skipped otherwise. Also the compile-cache key: the plugin's engine state changes it,
so a graph compiled without the op is never loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qwenscope.vllm_plugin.engine import EngineSteering, _key_compile_cache
from qwenscope.vllm_plugin.table import TableConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vllm_plugin_check.py"
VLLM_PYTHON = os.environ.get("QWENSCOPE_VLLM_PYTHON")


class ServeTexts(dict):
    """(architecture, new tokens) -> qwenscope serve's texts for the check's requests, computed at first use."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, key: tuple[str, int]) -> list[str]:
        arch, new = key
        out = self.folder / f"hf-{arch}-{new}.json"
        env = os.environ | {"PYTHONPATH": str(ROOT), "QWENSCOPE_CHECK_NEW": str(new), "QWENSCOPE_CHECK_ARCH": arch}
        subprocess.run([sys.executable, str(SCRIPT), "hf", str(out)], check=True, env=env, timeout=600)
        self[key] = json.loads(out.read_text())
        return self[key]


@pytest.fixture(scope="module")
def hf_texts(tmp_path_factory) -> ServeTexts:
    return ServeTexts(tmp_path_factory.mktemp("hf"))


NEEDS_VLLM = pytest.mark.skipif(
    not VLLM_PYTHON, reason="vLLM is not installed here: make vllm-venv, then set QWENSCOPE_VLLM_PYTHON to its python"
)


def run_vllm(tmp_path: Path, **env: str) -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT)} | env
    subprocess.run([VLLM_PYTHON, str(SCRIPT), "vllm", str(tmp_path / "vllm.json")], check=True, env=env, timeout=900)
    return json.loads((tmp_path / "vllm.json").read_text())


@pytest.mark.slow
@NEEDS_VLLM
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_mixed_batch_through_vllm_gives_qwenscope_serves_texts(hf_texts, tmp_path, compiled, monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # the engine core in its own process
    vllm = run_vllm(tmp_path, QWENSCOPE_CHECK_COMPILED="1" if compiled else "0")
    hf = hf_texts["", 16]
    assert hf[0] != hf[1] and hf[0] != hf[3]  # the add and the clamp show
    assert vllm["batch"] == hf
    assert vllm["alone_tokens"] == vllm["batch_tokens"]  # no request depends on its batch-mates


@pytest.mark.slow
@NEEDS_VLLM
def test_requests_preempted_and_recomputed_keep_their_steering(hf_texts, tmp_path):
    """Three KV blocks of 128 tokens for six requests of 145: the scheduler preempts and later recomputes some of
    them (counted with the engine in-process), and every text still equals qwenscope serve's."""
    vllm = run_vllm(
        tmp_path, VLLM_ENABLE_V1_MULTIPROCESSING="0", QWENSCOPE_CHECK_NEW="140", QWENSCOPE_CHECK_KV_BLOCKS="3"
    )
    assert vllm["preemptions"] > 0
    assert vllm["batch"] == hf_texts["", 140]


@pytest.mark.slow
@NEEDS_VLLM
@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_the_qwen_architectures_steer_like_qwenscope_serve(hf_texts, tmp_path, arch, monkeypatch):
    """Random Qwen3 and Qwen3-MoE models (the real tokenizer) with a random TopK SAE: the same mixed batch."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    expected = hf_texts[arch, 16]  # first: the HF run writes the random model and SAE that vLLM then loads
    vllm = run_vllm(tmp_path, QWENSCOPE_CHECK_ARCH=arch)
    assert len(set(expected)) == 6  # every steering changes the answer
    assert vllm["batch"] == expected
    assert vllm["alone_tokens"] == vllm["batch_tokens"]


def test_the_compile_cache_key_names_the_hooked_layers_and_table_sizes(saes):
    def key(chosen: dict, rows: int) -> str:
        config = SimpleNamespace(additional_config={})
        _key_compile_cache(config, EngineSteering(chosen, TableConfig(rows=rows, slots=2), max_tokens=16))
        return config.additional_config["qwenscope_steering"]

    one = key({"l1": saes["l1"]}, 4)
    assert one == key({"l1": saes["l1"], "jump": saes["jump"]}, 4)  # the same layer, the same graph
    assert len({one, key({"l1": saes["l1"], "l2": saes["l2"]}, 4), key({"l1": saes["l1"]}, 8)}) == 3


def test_the_plugin_refuses_vllms_v2_model_runner_in_one_line(monkeypatch):
    """Its patches are the V1 runner's: under V2 no request would get its rows, so steering would be silently off."""
    from qwenscope.errors import QwenscopeError
    from qwenscope.vllm_plugin import engine

    monkeypatch.setattr(engine, "_registered", False)
    monkeypatch.setenv(engine.ENV_SAES, "l15=/nowhere")
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(QwenscopeError, match="unset VLLM_USE_V2_MODEL_RUNNER"):
        engine.register()
    assert not engine._registered


@pytest.mark.slow
@NEEDS_VLLM
def test_more_steerings_than_rows_wait_in_vllms_queue_and_a_bad_one_fails_alone(hf_texts, tmp_path, monkeypatch):
    """One usable row per layer for five distinct steerings sent at once through vllm.LLM (no front end): the scheduler
    holds them back until rows free up, and every text is still qwenscope serve's; a steering with a feature beyond
    the width finishes its own request with an error and the others go on. The prefix cache: a steered prompt never
    reads the blocks its unsteered twin cached, and shares its own with the next request steered the same way."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    vllm = run_vllm(tmp_path, QWENSCOPE_VLLM_ROWS="2", QWENSCOPE_CHECK_GATE="1")
    assert vllm["batch"] == hf_texts["", 16]
    assert vllm["bad_finish"] == "error"
    plain, steered, steered_again, plain_again = vllm["prefix_cached"]
    assert steered == 0 and steered_again > 0 and plain_again > 0
    texts = vllm["prefix_texts"]
    assert texts[1] == texts[2] != texts[0] == texts[3]
