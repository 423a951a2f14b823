"""A difference-in-means style direction served beside an SAE: a request steers along it by the same ``steering``
field, and gets what steering in-process gives."""

from __future__ import annotations

import httpx
import pytest
import torch
from serving import running

from qwenscope import steer
from qwenscope.sae import direction_sae
from qwenscope.serve.api import create_app
from qwenscope.steer.generate import generate_text

pytest.importorskip("uvicorn")


def test_a_direction_sae_steers_requests_like_steer_in_process(qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    direction = direction_sae(torch.randn(1, 64, generator=torch.Generator().manual_seed(3)), sae.cfg.hookpoint)
    app = create_app(model, tokenizer, {"l0": sae, "dim": direction}, model_name="tiny")
    prompt, body = "The cat sat on", {"model": "tiny", "max_tokens": 8, "temperature": 0}
    with running(app) as base_url:

        def complete(steering):
            r = httpx.post(
                f"{base_url}/v1/completions", json={**body, "prompt": prompt, "steering": steering}, timeout=120
            )
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        served = complete([{"sae": "dim", "features": {"0": 40.0}}])
        plain = complete([])
        bad = httpx.post(
            f"{base_url}/v1/completions",
            json={**body, "prompt": prompt, "steering": [{"sae": "dim", "features": {"1": 1.0}}]},
            timeout=120,
        )
    with steer(model, direction, {0: 40.0}):
        want = generate_text(model, tokenizer, prompt, max_new_tokens=8, chat=False)
    assert served == want and served != plain  # same kernels, same shapes (one row alone): the same greedy text
    assert bad.status_code == 400 and "outside this SAE" in bad.text
