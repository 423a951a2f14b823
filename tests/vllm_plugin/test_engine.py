"""End to end inside vLLM (slow, ~3 min on 2 cores): vllm.LLM on the cached smollm2-135m (fp32) with the plugin gives
``qwenscope serve``'s greedy texts for one mixed batch of unsteered, added, clamped and ablated requests, and each
request alone gives the tokens it gets in the batch; eager and compiled (torch.compile), with the engine core in its
own process finding the plugin through its entry point. vLLM lives in its own virtualenv (``make vllm-venv``: it pins
another transformers): set QWENSCOPE_VLLM_PYTHON to its python (``make test-vllm`` does); skipped otherwise. Also the
compile-cache key: the plugin's engine state changes it, so a graph compiled without the op is never loaded."""

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


@pytest.fixture(scope="module")
def hf_texts(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("hf") / "hf.json"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(SCRIPT), "hf", str(out)], check=True, env=env, timeout=600)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(
    not VLLM_PYTHON, reason="vLLM is not installed here: make vllm-venv, then set QWENSCOPE_VLLM_PYTHON to its python"
)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_mixed_batch_through_vllm_gives_qwenscope_serves_texts(hf_texts, tmp_path, compiled):
    env = os.environ | {"PYTHONPATH": str(ROOT), "QWENSCOPE_CHECK_COMPILED": "1" if compiled else "0"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the engine core in its own process: the entry point's path
    subprocess.run([VLLM_PYTHON, str(SCRIPT), "vllm", str(tmp_path / "vllm.json")], check=True, env=env, timeout=900)
    vllm = json.loads((tmp_path / "vllm.json").read_text())
    assert hf_texts[0] != hf_texts[1] and hf_texts[0] != hf_texts[3]  # the add and the clamp change the answer
    assert vllm["batch"] == hf_texts
    assert vllm["alone_tokens"] == vllm["batch_tokens"]  # no request depends on its batch-mates


def test_the_compile_cache_key_names_the_hooked_layers_and_table_sizes(saes):
    def key(chosen: dict, rows: int) -> str:
        config = SimpleNamespace(additional_config={})
        _key_compile_cache(config, EngineSteering(chosen, TableConfig(rows=rows, slots=2), max_tokens=16))
        return config.additional_config["qwenscope_steering"]

    one = key({"l1": saes["l1"]}, 4)
    assert one == key({"l1": saes["l1"], "jump": saes["jump"]}, 4)  # the same layer, the same graph
    assert len({one, key({"l1": saes["l1"], "l2": saes["l2"]}, 4), key({"l1": saes["l1"]}, 8)}) == 3
