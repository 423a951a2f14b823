"""Admission of steered requests in vLLM's scheduler: a request waits for table rows, it is never lost or unsteered.

    gate = Gate(saes, cfg)          # in the engine core's process: a meta-device copy of the worker's tables
    gate.arrive(request)            # Scheduler.add_request: parse the steering once, salt the prefix-cache key
    gate.new_pass()                 # Scheduler.schedule, before it looks at the waiting queue
    gate.ready(request)             # for each waiting request it looks at: GO, WAIT, or the refusal's message
    gate.leave(request_id)          # Scheduler._free_request: finished, aborted or refused

The worker takes a request's rows when the scheduler first schedules it and gives them back when it finishes
(``engine.py``). The gate takes them a little earlier, when the request is about to be scheduled, and gives them back
at the same finish, so the requests it holds rows for are always a superset of the worker's: a request the gate let
through always finds its rows in the worker's table, and a full table makes requests wait in vLLM's queue (unsteered
ones pass) instead of crashing the engine. That covers every client: ``vllm.LLM``, raw routes, several API servers.

Waiting requests that need a new row are let through first come, first served: once one had to wait in a pass, later
ones that need new rows wait too (requests that share rows already in use, or steer nothing, pass), so a request with
a large steering is never overtaken for ever. A steering that can never run (a bad spec that no front end checked,
more features than a row's slots, more rows than the table has) finishes that request with an error, logged with the
reason, and the engine goes on.

The salt: every steered request's ``cache_salt`` becomes a hash of its rows' keys and the client's own salt, and its
block hashes are recomputed, so its prompt's KV blocks are shared only with requests steered the same way.

Where the worker runs in another process, the gate holds the SAEs on the ``meta`` device (configs and shapes: no
weights, so a 64K-feature layer costs nothing here) and its rows are keyed by the validated entries that make them
instead of by their content. Content is a function of the entries, so the worker never holds more distinct rows than
the gate counts: the gate stays a superset. It is conservative where two different entries give equal content (a
feature at strength 0 added, say): the worker shares one row, the gate counts two, and a full table makes the second
wait a little sooner than it had to.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.serve.api import ApiError
from qwenscope.vllm_plugin.parse import SALT_PREFIX, ParseCache, RequestSteering
from qwenscope.vllm_plugin.rows import Tables, hooked_widths
from qwenscope.vllm_plugin.table import TableConfig, TableFull

logger = logging.getLogger(__name__)
EXTRA_KEY = "qwenscope_steering"


class Admit(enum.Enum):
    GO = "go"
    WAIT = "wait"


def salted(steering_salt: str, client_salt: str | None) -> str:
    """The ``cache_salt`` of a steered request: its steering's salt, hashed with the client's own salt if any."""
    if client_salt is None:
        return steering_salt
    return SALT_PREFIX + hashlib.blake2b(f"{client_salt}\0{steering_salt}".encode(), digest_size=16).hexdigest()


class Gate:
    """The scheduler's copy of the worker's steering tables (see the module doc)."""

    def __init__(self, saes: Mapping[str, Sae], cfg: TableConfig, parse: ParseCache | None = None) -> None:
        self.tables = Tables(hooked_widths(dict(saes)), replace(cfg, device="meta"))
        self.parse = parse or ParseCache(saes)
        self._steering: dict[str, RequestSteering] = {}
        self._refused: dict[str, str] = {}
        self._blocked = False

    def arrive(self, request: Any) -> None:
        """Parse a new request's steering (a refusal is kept for ``ready``) and salt its prefix-cache key."""
        extra = getattr(request.sampling_params, "extra_args", None) or {}
        raw = extra.get(EXTRA_KEY)
        if raw is None:
            return
        try:
            steering = self.parse(raw)
        except (ApiError, QwenscopeError, ValueError) as e:  # a 4xx a front end would have answered; bad JSON
            self._refused[request.request_id] = f"{e}"
            return
        if steering.salt is None:  # an empty steering: nothing to hold, nothing to salt
            return
        self._steering[request.request_id] = steering
        request.cache_salt = salted(steering.salt, request.cache_salt)
        request.block_hashes = []  # computed with the client's salt when the request was made: again, with this one
        request.update_block_hashes()

    def new_pass(self) -> None:
        self._blocked = False

    def ready(self, request: Any) -> Admit | str:
        """Whether the scheduler may schedule this waiting request now (its rows taken), must leave it waiting this
        pass, or must finish it with the returned message as its error."""
        rid = request.request_id
        if rid in self._refused:
            return self._refused[rid]
        steering = self._steering.get(rid)
        if steering is None or self.tables.held(rid):  # unsteered, or holding its rows (resumed after preemption)
            return Admit.GO
        needs_rows = self.tables.needs_rows(steering)
        if needs_rows and self._blocked:
            return Admit.WAIT
        try:
            self.tables.acquire(rid, steering)
        except TableFull as e:
            if self.tables.empty:
                return f"{e} (it needs more rows than the table has: start the server with more)"
            self._blocked = True
            return Admit.WAIT
        except QwenscopeError as e:  # more features than a row's slots: it can never run
            return f"{e}"
        return Admit.GO

    def leave(self, request_id: str) -> None:
        self.tables.release(request_id)
        self._steering.pop(request_id, None)
        self._refused.pop(request_id, None)
