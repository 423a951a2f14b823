"""``qwenscope serve --engine vllm`` without vLLM: the command and environment it starts vLLM's server with, the
SAE folders it resolves, and its one-line errors."""

from __future__ import annotations

import sys
from typing import ClassVar

import pytest
import torch

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main
from qwenscope.errors import QwenscopeError
from qwenscope.sae.load import EMBEDDED_DIR
from qwenscope.vllm_plugin import launch
from qwenscope.vllm_plugin.engine import ENV_ROWS, ENV_SAES, ENV_SLOTS


def test_the_command_is_vllm_serve_with_the_front_end():
    cmd = launch.vllm_command("/venv/bin/python", "/models/m", "m-name", "0.0.0.0", 8001, "--dtype float32 --x 'a b'")
    assert cmd == [
        "/venv/bin/python",
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        "/models/m",
        "--served-model-name",
        "m-name",
        "--host",
        "0.0.0.0",
        "--port",
        "8001",
        "--middleware",
        "qwenscope.vllm_plugin.frontend.SteeringMiddleware",
        "--dtype",
        "float32",
        "--x",
        "a b",
    ]


def test_the_environment_names_the_saes_tables_and_key(tmp_path):
    env = launch.vllm_env({"a": tmp_path / "a", "org/b": tmp_path / "b"}, 5, 3, "secret", {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        ENV_SAES: f"a={tmp_path / 'a'},org/b={tmp_path / 'b'}",
        ENV_ROWS: "5",
        ENV_SLOTS: "3",
        "VLLM_API_KEY": "secret",
    }
    assert "VLLM_API_KEY" not in launch.vllm_env({"a": tmp_path}, 5, 3, None, {})
    with pytest.raises(QwenscopeError, match="cannot hold ',' or '='"):
        launch.vllm_env({"a,b": tmp_path}, 5, 3, None, {})


def test_without_vllm_the_error_names_the_venv_target_and_the_flag(tmp_path, monkeypatch):
    with pytest.raises(QwenscopeError, match="make vllm-venv.*--vllm-python"):
        launch.vllm_python(str(tmp_path / "missing" / "python"))
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QwenscopeError, match=r"vLLM is not installed in this Python .*make vllm-venv"):
        launch.vllm_python(None)
    assert launch.vllm_python(sys.executable) == sys.executable


def _sae(hookpoint: str) -> Sae:
    torch.manual_seed(0)
    return Sae(SaeConfig(d_in=64, d_sae=32, k=4, hookpoint=hookpoint))


def test_saes_resolve_to_folders_the_engine_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    _sae("resid_post.1").save(tmp_path / "ours")
    assert launch.steered_saes((str(tmp_path / "ours"),)) == {str(tmp_path / "ours"): tmp_path / "ours"}
    embedded = launch.steered_saes(("smollm2-135m",))
    assert embedded == {"smollm2-135m": EMBEDDED_DIR / "smollm2-135m" / "resid_post.15"}
    sae = _sae("resid_post.2")
    copy = launch.sae_folder("org/other-format", sae)  # a source that is no folder of ours: a cached copy
    assert copy.is_relative_to(tmp_path / "cache") and launch.sae_folder("org/other-format", sae) == copy
    assert torch.equal(Sae.load(copy).W_enc, sae.W_enc)


def test_an_sae_the_engine_cannot_hook_is_refused(tmp_path):
    _sae("mlp_out.1").save(tmp_path / "mlp")
    with pytest.raises(QwenscopeError, match="hooks 'mlp_out.1'; the vLLM engine steers resid_post.L only"):
        launch.steered_saes((str(tmp_path / "mlp"),))


class FakeVllm:
    """subprocess.Popen's stand-in: records the command and environment, exits with ``rc``."""

    rc = 0
    started: ClassVar[list[tuple[list[str], dict[str, str]]]] = []

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        FakeVllm.started.append((cmd, env))

    def wait(self, timeout: float | None = None) -> int:
        return FakeVllm.rc

    def poll(self) -> int:
        return FakeVllm.rc


def test_serve_engine_vllm_starts_vllms_server_and_waits(tmp_path, monkeypatch):
    from tiny_models import save_tiny_qwen3

    model = save_tiny_qwen3(tmp_path / "model")
    _sae("resid_post.1").save(tmp_path / "sae")
    monkeypatch.setattr(launch.subprocess, "Popen", FakeVllm)
    monkeypatch.setattr(FakeVllm, "started", [])
    args = ["serve", "--engine", "vllm", "--model", str(model), "--sae", str(tmp_path / "sae"), "--port", "8124"]
    more = ["--vllm-python", sys.executable, "--api-key", "k", "--steering-rows", "3", "--vllm-args=--dtype float32"]
    assert main(args + more) == 0
    ((cmd, env),) = FakeVllm.started
    assert cmd == launch.vllm_command(sys.executable, str(model), str(model), "127.0.0.1", 8124, "--dtype float32")
    assert env[ENV_SAES] == f"{tmp_path / 'sae'}={tmp_path / 'sae'}" and env[ENV_ROWS] == "3"
    assert env["VLLM_API_KEY"] == "k" and "k" not in cmd
    monkeypatch.setattr(FakeVllm, "rc", 1)
    assert main(args + more) == 2  # vLLM failed: one line, its log is above


def test_serve_refuses_a_table_without_a_free_row():
    from qwenscope.serve.api import ServeConfig

    with pytest.raises(QwenscopeError, match="--steering-rows must be >= 2"):
        ServeConfig(steering_rows=1)
