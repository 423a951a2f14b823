"""``qwenscope serve``: the command loads the model and SAEs it is given and serves them (uvicorn.run captured)."""

from __future__ import annotations

import pytest
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main
from qwenscope.errors import QwenscopeError
from qwenscope.serve.api import ServeConfig

pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient


def test_serve_command_serves_the_model_with_its_sae(tmp_path, monkeypatch):
    import uvicorn

    model_dir = save_tiny_qwen3(tmp_path / "model")
    Sae(SaeConfig(d_in=64, d_sae=32, k=4, hookpoint="resid_post.1")).save(tmp_path / "sae")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert (
        main(
            [
                "serve",
                "--model",
                str(model_dir),
                "--sae",
                str(tmp_path / "sae"),
                "--port",
                "8123",
                "--api-key",
                "k",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert served["port"] == 8123
    client = TestClient(served["app"])
    headers = {"authorization": "Bearer k"}
    assert client.get("/v1/models", headers=headers).json()["data"][0]["id"] == str(model_dir)
    body = {
        "model": str(model_dir),
        "prompt": "hello",
        "max_tokens": 4,
        "steering": [{"sae": "resid_post.1", "features": {"5": 10.0}}],
    }
    response = client.post("/v1/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4
    assert client.post("/v1/completions", json=body | {"max_tokens": 5}, headers=headers).status_code == 400


def test_serve_config_refuses_a_bad_port():
    with pytest.raises(QwenscopeError, match="--port"):
        ServeConfig(port=0)
