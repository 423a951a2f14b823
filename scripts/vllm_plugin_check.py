"""End-to-end check of the vLLM steering plugin on the embedded smollm2-135m (fp32, CPU): one mixed batch of
unsteered, added, clamped and ablated requests through vllm.LLM, greedy tokens compared with ``qwenscope serve``'s.

    python scripts/vllm_plugin_check.py hf OUT.json       # the project's venv: the requests through qwenscope serve
    python scripts/vllm_plugin_check.py vllm OUT.json     # vLLM's venv: the requests in one batch, then each alone

``hf`` sends each request of ``REQUESTS`` to ``qwenscope serve``'s app (in-process, the model in fp32) and writes
the completion texts. ``vllm`` runs ``vllm.LLM`` with the plugin (fp32; eager, or compiled with
``QWENSCOPE_CHECK_COMPILED=1``) on all requests at once and then on each request by itself, and writes
``{"batch": texts, "alone": texts, "batch_tokens": ..., "alone_tokens": ...}``: equal batch and alone tokens mean a
request's output does not depend on its batch-mates; texts equal to ``hf``'s mean the greedy tokens equal qwenscope
serve's (both stop at EOS or after ``NEW`` tokens). ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` runs the engine in this
process and calls ``register()`` here; otherwise the engine core is a child process and finds the plugin through its
``vllm.general_plugins`` entry point (qwenscope installed in vLLM's venv).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("vllm_plugin_check")
OCEAN, FOOD = "The ocean is", "My favourite food is"
REQUESTS: list[tuple[str, list[dict] | None]] = [
    (OCEAN, None),
    (OCEAN, [{"sae": "l15", "features": {"1234": 40.0}}]),
    (FOOD, [{"sae": "l15", "features": {"77": 30.0}, "positions": "prompt"}]),
    (OCEAN, [{"sae": "l15", "features": {"7160": 90.0}, "mode": "clamp", "acts": "own"}]),
    (FOOD, [{"sae": "l15", "features": [6825, 7160, 1741], "mode": "ablate", "acts": "own"}]),
    (
        FOOD,
        [
            {"sae": "l15", "features": {"77": 20.0}, "positions": "generated"},
            {"sae": "l15", "features": {"6825": 60.0}, "mode": "clamp", "acts": "own", "positions": "generated"},
        ],
    ),
]
"""(prompt, steering): unsteered; add on every token; add on the prompt only; a TopK clamp of a feature the prompt
fires; an ablation of three features the prompt fires; an add and a clamp on the generated tokens only."""
NEW = int(os.environ.get("QWENSCOPE_CHECK_NEW", "16"))
"""Greedy tokens per request (QWENSCOPE_CHECK_NEW; with QWENSCOPE_CHECK_KV_BLOCKS=3, 140 forces preemptions)."""


def sae_folder() -> Path:
    import qwenscope

    return Path(qwenscope.__file__).parent / "assets" / "saes" / "smollm2-135m" / "resid_post.15"


def model_folder() -> Path:
    from qwenscope.models import cache_dir

    return next(p.parent for p in (cache_dir() / "models" / "smollm2-135m").rglob("config.json"))


def run_hf() -> list[str]:
    """Each request's completion text through qwenscope serve's app (fp32)."""
    from fastapi.testclient import TestClient

    from qwenscope import Sae
    from qwenscope.models.load import load_model
    from qwenscope.serve.api import create_app

    model, tokenizer = load_model(str(model_folder()))
    app = create_app(model.float(), tokenizer, {"l15": Sae.load(sae_folder())}, model_name="smollm2")
    out = []
    with TestClient(app) as client:
        for prompt, steering in REQUESTS:
            body = {"model": "smollm2", "prompt": prompt, "max_tokens": NEW, "temperature": 0}
            reply = client.post("/v1/completions", json=body | ({"steering": steering} if steering else {}))
            reply.raise_for_status()
            out.append(reply.json()["choices"][0]["text"])
    return out


def run_vllm() -> dict[str, list]:
    from qwenscope.vllm_plugin import engine

    os.environ[engine.ENV_SAES] = f"l15={sae_folder()}"
    preemptions = [0]
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":  # the engine here: count the scheduler's preemptions
        engine.register()
        from vllm.v1.core.sched.scheduler import Scheduler

        preempt = Scheduler._preempt_request

        def counted(self, *a, **kw):  # type: ignore[no-untyped-def]
            preemptions[0] += 1
            return preempt(self, *a, **kw)

        Scheduler._preempt_request = counted  # type: ignore[method-assign]
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model_folder()),
        dtype="float32",
        max_model_len=256,
        enforce_eager=os.environ.get("QWENSCOPE_CHECK_COMPILED") != "1",
        seed=0,
        gpu_memory_utilization=0.2,
        **({"num_gpu_blocks_override": int(blocks)} if (blocks := os.environ.get("QWENSCOPE_CHECK_KV_BLOCKS")) else {}),
    )

    def params(steering: list[dict] | None) -> SamplingParams:
        extra = {engine.EXTRA_KEY: json.dumps(steering)} if steering else None
        return SamplingParams(temperature=0, max_tokens=NEW, extra_args=extra)

    prompts = [p for p, _ in REQUESTS]
    batch = llm.generate(prompts, [params(s) for _, s in REQUESTS])
    alone = [llm.generate([p], [params(s)])[0] for p, s in REQUESTS]
    return {
        "batch": [o.outputs[0].text for o in batch],
        "alone": [o.outputs[0].text for o in alone],
        "batch_tokens": [list(o.outputs[0].token_ids) for o in batch],
        "alone_tokens": [list(o.outputs[0].token_ids) for o in alone],
        "preemptions": preemptions[0],  # counted with the engine in this process only
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    which, path = sys.argv[1], Path(sys.argv[2])
    tokens = run_hf() if which == "hf" else run_vllm()
    path.write_text(json.dumps(tokens))
    logger.info("%s tokens: %s", which, tokens)
