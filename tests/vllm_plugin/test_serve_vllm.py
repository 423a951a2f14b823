"""End to end (slow, about a minute on 2 cores): ``qwenscope serve --engine vllm`` on the embedded smollm2-135m (fp32,
eager) with its resid_post.15 SAE, driven by the official ``openai`` client: steered completions equal ``qwenscope
serve``'s (HF, in-process) greedy texts, relative strengths too; each bad request gets its 4xx through the real
server; the feature routes answer. vLLM lives in its own virtualenv: set QWENSCOPE_VLLM_PYTHON to its python; skipped
otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("QWENSCOPE_VLLM_PYTHON")
MODEL, HOOK, KEY, NEW = "smollm2-135m", "resid_post.15", "e2e-key", 16
OCEAN = "The ocean is"
ADD = [{"sae": HOOK, "features": {"1234": 40.0}}]
RELATIVE = [{"sae": HOOK, "features": {"1234": 0.8}, "relative": True}]  # fractions of the steering unit
CHAT = [{"role": "user", "content": "What is your favourite food?"}]
CHAT_ADD = [{"sae": MODEL, "features": {"77": 30.0}}]  # by id: serve names the embedded SAE after the model
logger = logging.getLogger(__name__)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON, reason="vLLM is not installed here: set QWENSCOPE_VLLM_PYTHON to a vLLM venv's python"
    ),
]


def hf_answers() -> dict[str, Any]:
    """The same requests through qwenscope serve's app (HF, the model in fp32), and its feature routes' answers."""
    from fastapi.testclient import TestClient

    from qwenscope.features.store import find_store
    from qwenscope.models.load import load_model
    from qwenscope.sae.load import load_sae
    from qwenscope.serve.api import create_app

    model, tokenizer = load_model(MODEL)
    sae = load_sae(MODEL)
    stores = {MODEL: find_store(model, tokenizer, sae, MODEL, MODEL)}  # as run_serve finds it
    app = create_app(model.float(), tokenizer, {MODEL: sae}, model_name=MODEL, stores=stores)
    greedy = {"model": MODEL, "max_tokens": NEW, "temperature": 0}
    with TestClient(app) as client:
        plain, steered = (
            client.post("/v1/completions", json=greedy | {"prompt": OCEAN} | extra).json()["choices"][0]["text"]
            for extra in ({}, {"steering": ADD})
        )
        chat = client.post("/v1/chat/completions", json=greedy | {"messages": CHAT, "steering": CHAT_ADD}).json()
        relative = client.post("/v1/completions", json=greedy | {"prompt": OCEAN, "steering": RELATIVE}).json()
        label = client.get(f"/v1/features/{HOOK}/1234").json()["label"]
        encoded = client.post("/v1/features/encode", json={"sae": MODEL, "input": OCEAN, "top_k": 3}).json()["data"]
    texts = {"plain": plain, "steered": steered, "chat": chat["choices"][0]["message"]["content"]}
    texts["relative"] = relative["choices"][0]["text"]
    return texts | {"label": label, "encoded": encoded}


@contextlib.contextmanager
def vllm_server(port: int) -> Iterator[str]:
    """``qwenscope serve --engine vllm`` on ``port`` (two steering rows: one to hand out); stopped at the end."""
    args = "--dtype float32 --max-model-len 256 --enforce-eager --gpu-memory-utilization 0.2 --max-num-seqs 8"
    cmd = [sys.executable, "-m", "qwenscope", "serve", "--engine", "vllm", "--model", MODEL, "--port", str(port)]
    cmd += ["--api-key", KEY, "--vllm-python", str(VLLM_PYTHON), "--steering-rows", "2", f"--vllm-args={args}"]
    env = os.environ | {"PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        start, deadline = time.perf_counter(), time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, f"qwenscope serve --engine vllm exited with {proc.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(2)
        else:
            raise AssertionError("vLLM's server did not answer /health within 600 s")
        logger.info("vLLM's server answered /health after %.0f s", time.perf_counter() - start)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # qwenscope serve passes it on to vLLM
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_engine_vllm_steers_like_serve_and_refuses_bad_requests():
    import openai

    expected = hf_answers()
    assert expected["steered"] != expected["plain"]
    with vllm_server(_free_port()) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        greedy = {"model": MODEL, "max_tokens": NEW, "temperature": 0}
        start = time.perf_counter()
        plain = client.completions.create(prompt=OCEAN, **greedy).choices[0].text
        steered = client.completions.create(prompt=OCEAN, extra_body={"steering": ADD}, **greedy).choices[0].text
        chat = client.chat.completions.create(messages=CHAT, extra_body={"steering": CHAT_ADD}, **greedy)
        logger.info("3 completions of %d tokens in %.1f s", NEW, time.perf_counter() - start)
        relative = client.completions.create(prompt=OCEAN, extra_body={"steering": RELATIVE}, **greedy).choices[0].text
        texts = {"plain": plain, "steered": steered, "chat": chat.choices[0].message.content, "relative": relative}
        assert texts == {k: expected[k] for k in texts}
        assert expected["relative"] not in (expected["plain"], expected["steered"])

        def refused(steering: list[dict], status: type[openai.APIStatusError]) -> str:
            with pytest.raises(status) as caught:
                client.completions.create(prompt=OCEAN, extra_body={"steering": steering}, **greedy)
            return str(caught.value.body["message"])

        assert "unknown SAE 'nope'" in refused([{"sae": "nope", "features": {"1": 1.0}}], openai.NotFoundError)
        assert "9216" in refused([{"sae": HOOK, "features": {"9216": 1.0}}], openai.BadRequestError)
        auth = {"authorization": f"Bearer {KEY}"}
        nan = b'{"model": "%s", "prompt": "hi", "steering": [{"sae": "%s", "features": {"3": NaN}}]}' % (
            MODEL.encode(),
            HOOK.encode(),
        )
        response = httpx.post(f"{url}/v1/completions", content=nan, headers=auth | {"content-type": "application/json"})
        assert response.status_code == 400 and "steering" in response.json()["error"]["message"]
        assert httpx.post(f"{url}/v1/completions", json={"steering": ADD}).status_code == 401

        # the table's one row held by a long stream: another steering gets a 429; the same one shares the row
        long = {"model": MODEL, "max_tokens": 200, "temperature": 0}
        stream = client.completions.create(
            prompt=OCEAN, extra_body={"steering": ADD, "ignore_eos": True}, stream=True, **long
        )
        next(iter(stream))
        other = [{"sae": HOOK, "features": {"77": 5.0}}]
        assert "full" in refused(other, openai.RateLimitError)
        shared = client.completions.create(prompt=OCEAN, extra_body={"steering": ADD}, **greedy)
        assert shared.choices[0].text == steered
        stream.close()  # the client goes away: the server gives the row back
        start = time.perf_counter()
        while True:
            try:
                client.completions.create(prompt=OCEAN, extra_body={"steering": other}, **greedy)
                break
            except openai.RateLimitError:
                assert time.perf_counter() - start < 30, "the row of a closed stream was not given back"
                time.sleep(0.2)
        logger.info("the closed stream's row was free again after %.1f s", time.perf_counter() - start)

        feature = httpx.get(f"{url}/v1/features/{HOOK}/1234", headers=auth, timeout=120)
        assert feature.status_code == 200, feature.text
        assert feature.json()["object"] == "feature" and feature.json()["id"] == 1234
        assert feature.json()["sae"] == MODEL and feature.json()["label"] == expected["label"]
        start = time.perf_counter()
        encode = {"sae": MODEL, "input": OCEAN, "top_k": 3}
        encoded = httpx.post(f"{url}/v1/features/encode", json=encode, headers=auth, timeout=300)
        assert encoded.status_code == 200, encoded.text
        logger.info("the first /v1/features/encode (loading the HF model) took %.1f s", time.perf_counter() - start)
        assert encoded.json()["data"] == expected["encoded"]
