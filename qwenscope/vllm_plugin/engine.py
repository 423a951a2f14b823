"""The engine side inside vLLM 0.32 (V1 model runner): tables and the op after each hooked layer, rows per request.

    QWENSCOPE_VLLM_SAES="id=/path/to/sae,..."      # read in every process; no SAE, no patch
    register()                                      # the vllm.general_plugins entry point; idempotent

``register`` wraps three vLLM functions (design: docs/development/vllm-plugin.md): ``BaseModelLoader.load_model``
(after the weights load: allocate the tables and wrap each hooked decoder layer's forward), V1
``GPUModelRunner.execute_model`` (release finished requests' rows, then acquire new requests' rows from
``sampling_params.extra_args["qwenscope_steering"]``) and ``GPUModelRunner._model_forward`` (fill the per-token row
index from the runner's batch before the model runs), and four of the V1 scheduler's for the admission (``gate.py``:
requests wait in the queue for rows, the prefix-cache key is salted). vLLM is imported only inside ``register``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.vllm_plugin.gate import EXTRA_KEY, Admit, Gate
from qwenscope.vllm_plugin.parse import ParseCache
from qwenscope.vllm_plugin.rows import Span, Tables, hooked_widths
from qwenscope.vllm_plugin.table import TableConfig

logger = logging.getLogger(__name__)
ENV_SAES = "QWENSCOPE_VLLM_SAES"
ENV_ROWS = "QWENSCOPE_VLLM_ROWS"
ENV_SLOTS = "QWENSCOPE_VLLM_SLOTS"
_registered = False


class EngineSteering:
    """One worker's steering state: the SAEs, the tables, the row index and each request's prompt length."""

    def __init__(self, saes: dict[str, Sae], cfg: TableConfig, max_tokens: int) -> None:
        self.saes = saes
        self.tables = Tables(hooked_widths(saes), cfg)
        self.index = self.tables.new_index(max_tokens)
        self.prompt_lens: dict[str, int] = {}
        self.parse = ParseCache(saes)

    def wrap_layers(self, model: nn.Module) -> None:
        """Wrap the forward of each hooked decoder layer: ``(hidden, residual) -> (0, steer(hidden + residual))``."""
        for k, hookpoint in enumerate(self.tables.order):
            layer = model.get_submodule(f"model.layers.{hookpoint.split('.')[1]}")
            layer.forward = _steered_forward(layer.forward, self.index[k], self.tables.layers[hookpoint].tensors())

    def admit(self, request_id: str, sampling_params: Any, prompt_len: int) -> None:
        if request_id in self.prompt_lens:  # resumed after preemption: it keeps its rows
            return
        extra = getattr(sampling_params, "extra_args", None) or {}
        self.tables.acquire(request_id, self.parse(extra.get(EXTRA_KEY)))
        self.prompt_lens[request_id] = prompt_len

    def finish(self, request_id: str) -> None:
        self.tables.release(request_id)
        self.prompt_lens.pop(request_id, None)

    def fill(self, req_ids: list[str], query_start: Any, computed: Any) -> None:
        spans = [
            Span(
                rid,
                int(query_start[i]),
                int(query_start[i + 1] - query_start[i]),
                int(computed[i]),
                self.prompt_lens.get(rid, 0),
            )
            for i, rid in enumerate(req_ids)
        ]
        self.tables.fill(self.index, spans)


def _steered_forward(forward: Any, rows: Tensor, tables: tuple[Tensor, ...]) -> Any:
    def steered(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # the arguments as the model passes them: (positions, hidden_states, residual) for Llama, Qwen3 and Gemma3,
        # (hidden_states, residual, positions) for Qwen3-Next and Qwen3.5; every one returns (hidden, residual)
        hidden, res = forward(*args, **kwargs)
        x = hidden + res
        out = torch.ops.qwenscope.steer(x, rows[: x.shape[0]], *tables)
        return torch.zeros_like(out), out

    return steered


_STATE: EngineSteering | None = None


def _key_compile_cache(vllm_config: Any, state: EngineSteering) -> None:
    """Make vLLM's torch.compile cache key depend on the plugin: a graph compiled without the op (plain vLLM) or with
    other hooked layers or table sizes must never be loaded for this one (it would answer unsteered, silently). The
    key hashes ``vllm_config.additional_config``, and it is computed at the first forward, after the load."""
    import qwenscope

    t = state.tables
    tables = ";".join(f"{hp}:{t.layers[hp].tensors()[1].shape}:{t.layers[hp].tensors()[1].dtype}" for hp in t.order)
    signature = f"qwenscope {qwenscope.__version__} steer-op 2 {tables}"
    extra = vllm_config.additional_config
    if isinstance(extra, dict):
        extra[EXTRA_KEY] = signature
    else:  # an object of another plugin's: no room for a key, so no cached graph at all
        os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"
        logger.warning("vLLM's additional_config is not a dict: the torch.compile cache is off for steering")


def table_config(device: str) -> TableConfig:
    """The tables' sizes from ``QWENSCOPE_VLLM_ROWS`` and ``QWENSCOPE_VLLM_SLOTS`` (64 and 8 when unset), on ``device``
    (the engine's, or ``meta`` for the front end's mirror): the engine and the front end read the same numbers."""
    try:
        rows, slots = (int(os.environ.get(name, default)) for name, default in ((ENV_ROWS, "64"), (ENV_SLOTS, "8")))
    except ValueError:
        raise QwenscopeError(f"{ENV_ROWS} and {ENV_SLOTS} must be integers") from None
    return TableConfig(rows=rows, slots=slots, device=device)


def load_saes(spec: str, weights: bool = True) -> dict[str, Sae]:
    """The SAEs of ``QWENSCOPE_VLLM_SAES`` (``id=/path,...``), as the engine and the front end both load them;
    ``weights=False``: each moved to the ``meta`` device once loaded and checked (configs and shapes, no memory)."""
    saes = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        sid, _, path = item.partition("=")
        if not path:
            raise QwenscopeError(f"{ENV_SAES} entry {item!r}: write id=/path/to/sae")
        sae = Sae.load(path).requires_grad_(False)
        saes[sid] = sae if weights else sae.to("meta")
    return saes


def register() -> None:
    """Install the patches when ``QWENSCOPE_VLLM_SAES`` names SAEs; safe to call in every process, many times."""
    global _registered
    if _registered or not os.environ.get(ENV_SAES):
        return
    # The patches below are the V1 model runner's; vLLM picks V2 by itself where Triton is (GPUs), so ask for V1 in
    # this process and the engine's children, which inherit the environment; a V2 engine is refused at load below.
    if os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0").lower() in ("1", "true"):
        raise QwenscopeError(
            "the qwenscope steering plugin drives vLLM's V1 model runner: unset VLLM_USE_V2_MODEL_RUNNER or set it to 0"
        )
    _registered = True
    if not (logging.getLogger("qwenscope").handlers or logging.getLogger().handlers):  # vLLM sets up only "vllm"
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("(qwenscope pid=%(process)d) %(levelname)s %(message)s"))
        logging.getLogger("qwenscope").addHandler(handler)
        logging.getLogger("qwenscope").setLevel(logging.INFO)
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    load_model = BaseModelLoader.load_model

    def load_and_hook(self, vllm_config, model_config, prefix: str = "", **kw):  # type: ignore[no-untyped-def]
        global _STATE
        model = load_model(self, vllm_config=vllm_config, model_config=model_config, prefix=prefix, **kw)
        if prefix == "":
            if getattr(vllm_config, "use_v2_model_runner", False):  # its batches never reach the patches: no rows
                raise QwenscopeError(
                    "vLLM chose its V2 model runner, which the qwenscope steering plugin does not drive: "
                    "set VLLM_USE_V2_MODEL_RUNNER=0"
                )
            device = next(model.parameters()).device
            cfg = table_config(str(device))
            _STATE = EngineSteering(
                load_saes(os.environ[ENV_SAES]), cfg, vllm_config.scheduler_config.max_num_batched_tokens
            )
            _STATE.index = _STATE.index.to(device)
            _STATE.wrap_layers(model)
            _key_compile_cache(vllm_config, _STATE)
            logger.info("qwenscope steering at %s (%d rows each)", ", ".join(_STATE.tables.order), cfg.rows)
        return model

    execute_model = GPUModelRunner.execute_model

    def execute_steered(self, scheduler_output, *args, **kw):  # type: ignore[no-untyped-def]
        if _STATE is not None:
            for rid in scheduler_output.finished_req_ids:
                _STATE.finish(rid)
            for new in scheduler_output.scheduled_new_reqs:
                _STATE.admit(new.req_id, new.sampling_params, len(new.prompt_token_ids or []))
        return execute_model(self, scheduler_output, *args, **kw)

    model_forward = GPUModelRunner._model_forward

    def forward_steered(self, *args, **kw):  # type: ignore[no-untyped-def]
        if _STATE is not None:
            n = self.input_batch.num_reqs
            _STATE.fill(
                list(self.input_batch.req_ids[:n]),
                self.query_start_loc.np[: n + 1],
                self.input_batch.num_computed_tokens_cpu[:n],
            )
        return model_forward(self, *args, **kw)

    _patch_scheduler()
    BaseModelLoader.load_model = load_and_hook  # type: ignore[method-assign]
    GPUModelRunner.execute_model = execute_steered  # type: ignore[method-assign]
    GPUModelRunner._model_forward = forward_steered  # type: ignore[method-assign]


def _gate(scheduler: Any) -> Gate:
    """The scheduler's gate, made at its first request: the worker's SAEs and parse cache where the worker runs in
    this process (a one-process executor), else the SAEs' configs and shapes (``meta``: rows keyed by their entries,
    no weights held; vLLM 0.32 on the CPU runs its worker in a process of its own, so it does that)."""
    gate = scheduler.__dict__.get("_qwenscope_gate")
    if gate is None:
        cfg = table_config("meta")
        if _STATE is not None:
            gate = Gate(_STATE.saes, cfg, _STATE.parse)
        else:
            gate = Gate(load_saes(os.environ[ENV_SAES], weights=False), cfg)
            logger.info("steering admission in the scheduler: the SAEs' configs and shapes only (no weights held)")
        scheduler._qwenscope_gate = gate
    return gate


def _patch_scheduler() -> None:
    """Admission in vLLM's V1 scheduler (``gate.py``): requests wait for rows in its queue, a steering that can never
    run finishes its request with an error, and the prefix-cache key is salted."""
    from vllm.v1.core.sched.scheduler import Scheduler

    add_request, schedule = Scheduler.add_request, Scheduler.schedule
    blocked, free_request = Scheduler._handle_blocked_waiting_request, Scheduler._free_request

    def add_steered(self, request):  # type: ignore[no-untyped-def]
        if request.request_id not in self.requests:  # not the next chunk of a streaming-input session
            _gate(self).arrive(request)
        return add_request(self, request)

    def schedule_steered(self, *args, **kw):  # type: ignore[no-untyped-def]
        _gate(self).new_pass()
        return schedule(self, *args, **kw)

    def ready_steered(self, request):  # type: ignore[no-untyped-def]
        if not blocked(self, request):
            return False
        verdict = _gate(self).ready(request)
        if isinstance(verdict, str):  # vLLM's per-request error path: finished as FINISHED_ERROR after this step
            if request.request_id not in self.grammar_compile_error_reqs:
                logger.error("request %s: steering refused: %s", request.request_id, verdict)
                self.grammar_compile_error_reqs.add(request.request_id)
            return False
        return verdict is Admit.GO

    def free_steered(self, request, *args, **kw):  # type: ignore[no-untyped-def]
        _gate(self).leave(request.request_id)
        return free_request(self, request, *args, **kw)

    Scheduler.add_request = add_steered  # type: ignore[method-assign]
    Scheduler.schedule = schedule_steered  # type: ignore[method-assign]
    Scheduler._handle_blocked_waiting_request = ready_steered  # type: ignore[method-assign]
    Scheduler._free_request = free_steered  # type: ignore[method-assign]
