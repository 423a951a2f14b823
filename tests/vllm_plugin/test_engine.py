"""End to end inside vLLM (slow, ~2 min on 2 cores): vllm.LLM on the cached smollm2-135m (fp32, enforce_eager) with the
plugin gives qwenscope's HF greedy tokens for an unsteered and two add-steered requests in one batch. vLLM lives in its
own virtualenv (it pins another transformers): set QWENSCOPE_VLLM_PYTHON to its python; skipped otherwise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vllm_plugin_check.py"
VLLM_PYTHON = os.environ.get("QWENSCOPE_VLLM_PYTHON")
# vLLM's venv lacks some of qwenscope's own dependencies (scipy...): the project's site-packages go last on its path
RUN_VLLM = (
    "import runpy, site, sys; sys.path.append({site!r}); sys.argv = ['check', 'vllm', {out!r}]; "
    "runpy.run_path({script!r}, run_name='__main__')"
)


@pytest.mark.slow
@pytest.mark.skipif(
    not VLLM_PYTHON, reason="vLLM is not installed here: set QWENSCOPE_VLLM_PYTHON to a vLLM venv's python"
)
def test_vllm_greedy_tokens_equal_the_hf_path(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    subprocess.run([sys.executable, str(SCRIPT), "hf", str(tmp_path / "hf.json")], check=True, env=env, timeout=600)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = RUN_VLLM.format(site=site, out=str(tmp_path / "vllm.json"), script=str(SCRIPT))
    subprocess.run([VLLM_PYTHON, "-c", code], check=True, env=env, timeout=900)
    hf, vllm = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("hf", "vllm"))
    assert hf[0] != hf[1]  # the steering changes the answer to the same prompt
    assert vllm == hf
