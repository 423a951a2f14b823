"""End-to-end check of the vLLM steering plugin on the embedded smollm2-135m (fp32, CPU): one mixed batch of
unsteered, added, clamped and ablated requests through vllm.LLM, greedy tokens compared with ``qwenscope serve``'s.

    python scripts/vllm_plugin_check.py hf OUT.json       # the project's venv: the requests through qwenscope serve
    python scripts/vllm_plugin_check.py vllm OUT.json     # vLLM's venv: the requests in one batch, then each alone

``hf`` sends each request of ``REQUESTS`` to ``qwenscope serve``'s app (in-process, the model in fp32) and writes
the completion texts. ``vllm`` runs ``vllm.LLM`` with the plugin (fp32; eager, or compiled with
``QWENSCOPE_CHECK_COMPILED=1``) on all requests at once and then on each request by itself, and writes
``{"batch": texts, "alone": texts, "batch_tokens": ..., "alone_tokens": ...}`` (``batch``: the tokens decoded as
serve decodes, ``vllm_texts``: vLLM's own texts): equal batch and alone tokens mean a
request's output does not depend on its batch-mates; texts equal to ``hf``'s mean the greedy tokens equal qwenscope
serve's (both stop at EOS or after ``NEW`` tokens). ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` runs the engine in this
process and calls ``register()`` here; otherwise the engine core is a child process and finds the plugin through its
``vllm.general_plugins`` entry point (qwenscope installed in vLLM's venv). With ``QWENSCOPE_CHECK_GATE=1`` the batch
also holds a request whose steering no front end checked (a feature beyond the width; ``bad_finish`` is its finish
reason), and then a long prompt runs unsteered, steered on the prompt twice, and unsteered again (``prefix_cached``:
each run's prefix-cache hits; ``prefix_texts``).
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


ARCH = os.environ.get("QWENSCOPE_CHECK_ARCH", "")
"""Empty: the embedded smollm2-135m (Llama) and its SAE. ``qwen3``, ``qwen3_moe`` or ``qwen3_5``: a small random model
of that architecture with the real Qwen3 tokenizer and a random TopK SAE (576 -> 9216, k 32) at resid_post.2, written
once by the ``hf`` step under the temp folder (random weights: the texts mean nothing; their equality does)."""


def sae_folder() -> Path:
    if ARCH:
        return tiny_dir() / "sae"
    import qwenscope

    return Path(qwenscope.__file__).parent / "assets" / "saes" / "smollm2-135m" / "resid_post.15"


def model_folder() -> Path:
    if ARCH:
        return tiny_dir() / "model"
    from qwenscope.models.load import model_source

    return Path(model_source("smollm2-135m"))  # its cached safetensors folder, built on first use


def tiny_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"qwenscope-vllm-check-{ARCH}"


def write_tiny() -> None:
    """The random ``ARCH`` model (4 layers, d 576, initializer range 0.1 for decisive logits) and its SAE."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    from qwenscope import Sae, SaeConfig
    from qwenscope.models.tokenizers import qwen3_tokenizer

    if (sae_folder() / "cfg.json").exists():
        return
    tokenizer = qwen3_tokenizer()
    shape = dict(
        vocab_size=len(tokenizer), hidden_size=576, num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, intermediate_size=1536, initializer_range=0.1, tie_word_embeddings=True,
        max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    if ARCH == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**shape))
    elif ARCH == "qwen3_moe":
        moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=384, decoder_sparse_step=1)
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape, **moe))
    elif ARCH == "qwen3_5":  # three Gated DeltaNet layers, then full attention
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

        linear = dict(
            linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=3,
            linear_num_value_heads=6, layer_types=["linear_attention"] * 3 + ["full_attention"],
        )  # fmt: skip
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**shape, **linear))
    else:
        raise SystemExit(f"QWENSCOPE_CHECK_ARCH={ARCH!r}: qwen3, qwen3_moe or qwen3_5")
    model.save_pretrained(model_folder())
    tokenizer.save_pretrained(model_folder())
    sae = Sae(SaeConfig(d_in=576, d_sae=9216, k=32, activation="topk", hookpoint="resid_post.2", model=ARCH))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.2)
    sae.save(sae_folder())


def run_hf() -> list[str]:
    """Each request's completion text through qwenscope serve's app (fp32)."""
    from fastapi.testclient import TestClient

    from qwenscope import Sae
    from qwenscope.models.load import load_model
    from qwenscope.serve.api import create_app

    if ARCH:
        write_tiny()
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
    gated = os.environ.get("QWENSCOPE_CHECK_GATE") == "1"
    bad = [{"sae": "l15", "features": {"999999": 1.0}}]  # beyond the width: no front end checked it
    batch = llm.generate(prompts + [OCEAN] * gated, [params(s) for _, s in REQUESTS] + [params(bad)] * gated)
    extra: dict[str, object] = {}
    if gated:
        extra["bad_finish"] = batch.pop().outputs[0].finish_reason
        facts = ("salty", "cold at depth", "home to whales", "full of plankton", "moved by tides", "dark below")
        long = " ".join(f"Fact {i}: the sea is {facts[i % 6]}." for i in range(20)) + " " + OCEAN  # over one KV block
        steer = [{"sae": "l15", "features": {"1234": 40.0}}]
        runs = [llm.generate([long], [params(s)])[0] for s in (None, steer, steer, None)]
        extra["prefix_cached"] = [o.num_cached_tokens for o in runs]  # unsteered, steered, steered again, unsteered
        extra["prefix_texts"] = [o.outputs[0].text for o in runs]
    alone = [llm.generate([p], [params(s)])[0] for p, s in REQUESTS]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder()))
    return {
        # vLLM's tokens decoded as qwenscope serve decodes its own (vLLM's streaming detokenizer holds back a trailing
        # incomplete UTF-8 character that serve's one decode shows as U+FFFD)
        "batch": [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in batch],
        "vllm_texts": [o.outputs[0].text for o in batch],
        "alone": [o.outputs[0].text for o in alone],
        "batch_tokens": [list(o.outputs[0].token_ids) for o in batch],
        "alone_tokens": [list(o.outputs[0].token_ids) for o in alone],
        "preemptions": preemptions[0],  # counted with the engine in this process only
    } | extra


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    which, path = sys.argv[1], Path(sys.argv[2])
    tokens = run_hf() if which == "hf" else run_vllm()
    path.write_text(json.dumps(tokens))
    logger.info("%s tokens: %s", which, tokens)
