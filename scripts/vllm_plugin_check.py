"""End-to-end check of the vLLM steering plugin on the embedded smollm2-135m (fp32, CPU): one batch with an unsteered
and an add-steered request through vllm.LLM, greedy tokens compared with qwenscope's HF path.

    python scripts/vllm_plugin_check.py hf OUT.json       # the project's venv: HF generate under steer_rows
    python scripts/vllm_plugin_check.py vllm OUT.json     # vLLM's venv (VLLM_ENABLE_V1_MULTIPROCESSING=0)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("vllm_plugin_check")
PROMPTS = ["The ocean is", "The ocean is", "My favourite food is"]
STEERING = [None, [{"sae": "l15", "features": {"1234": 40.0}}], [{"sae": "l15", "features": {"77": 30.0}}]]
NEW = 16


def sae_folder() -> Path:
    import qwenscope

    return Path(qwenscope.__file__).parent / "assets" / "saes" / "smollm2-135m" / "resid_post.15"


def model_folder() -> Path:
    from qwenscope.models import cache_dir

    return next(p.parent for p in (cache_dir() / "models" / "smollm2-135m").rglob("config.json"))


def run_hf() -> list[list[int]]:
    import torch

    from qwenscope import Sae
    from qwenscope.models.load import load_model
    from qwenscope.steer import SteerSpec, steer

    model, tokenizer = load_model(str(model_folder()))
    model = model.float()
    sae = Sae.load(sae_folder())
    out = []
    for prompt, steering in zip(PROMPTS, STEERING):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        specs = [SteerSpec(sae, {int(k): v for k, v in e["features"].items()}, acts="own") for e in steering or []]
        with torch.no_grad(), steer(model, specs) if specs else torch.no_grad():
            gen = model.generate(input_ids=ids, max_new_tokens=NEW, do_sample=False)
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


def run_vllm() -> list[list[int]]:
    from qwenscope.vllm_plugin import engine

    os.environ[engine.ENV_SAES] = f"l15={sae_folder()}"
    engine.register()
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model_folder()),
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.2,
    )
    params = [
        SamplingParams(
            temperature=0, max_tokens=NEW, ignore_eos=True, extra_args={engine.EXTRA_KEY: json.dumps(s)} if s else None
        )
        for s in STEERING
    ]
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params)]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    which, path = sys.argv[1], Path(sys.argv[2])
    tokens = run_hf() if which == "hf" else run_vllm()
    path.write_text(json.dumps(tokens))
    logger.info("%s tokens: %s", which, tokens)
