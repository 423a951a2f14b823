"""The scheduler's admission (gate.py), on stand-ins of vLLM's requests: a full table makes steered requests wait (first
come, first served among those that need new rows; unsteered and row-sharing ones pass), the rows come back at the
finish, a steering that can never run is refused with its reason, and steered requests get a salted prefix-cache key
with their block hashes computed again. Each runs twice: with the SAEs' weights (the worker shares the scheduler's
process) and with the SAEs on ``meta`` (rows keyed by their entries, as where the worker runs in another process)."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from qwenscope.sae.io import save_sae
from qwenscope.vllm_plugin.engine import load_saes
from qwenscope.vllm_plugin.gate import EXTRA_KEY, SALT_PREFIX, Admit, Gate, salted
from qwenscope.vllm_plugin.parse import parse_steering
from qwenscope.vllm_plugin.table import TableConfig


class Request(SimpleNamespace):
    """What the gate reads of vLLM's ``Request``: the id, the sampling parameters, the salt and the block hashes."""

    def __init__(self, rid: str, steering: object = None, cache_salt: str | None = None) -> None:
        extra = {EXTRA_KEY: steering if isinstance(steering, str) else json.dumps(steering)} if steering else None
        super().__init__(
            request_id=rid, sampling_params=SimpleNamespace(extra_args=extra), cache_salt=cache_salt, block_hashes=[]
        )
        self.hashed_with: list[str | None] = []
        self.update_block_hashes()

    def update_block_hashes(self) -> None:  # vLLM's hasher reads the salt and appends the hashes of the new blocks
        self.hashed_with.append(self.cache_salt)
        self.block_hashes.extend([f"{self.cache_salt}-0", f"{self.cache_salt}-1"])


def add(feature: int) -> list[dict]:
    return [{"sae": "l1", "features": {str(feature): 2.0}}]


@pytest.fixture(params=["weights", "meta"])
def held(request, saes):
    """The gate's SAEs: as loaded, or on the meta device (configs and shapes only)."""
    return saes if request.param == "weights" else {sid: copy.deepcopy(sae).to("meta") for sid, sae in saes.items()}


@pytest.fixture
def gate(held):
    return Gate(held, TableConfig(rows=3, slots=2))  # two usable rows per layer


def arrived(gate: Gate, *requests: Request) -> list[Request]:
    for r in requests:
        gate.arrive(r)
    return list(requests)


def test_a_full_table_makes_steered_requests_wait_and_their_rows_come_back_at_the_finish(gate):
    a, b, c, plain, share = arrived(
        gate, Request("a", add(1)), Request("b", add(2)), Request("c", add(3)), Request("plain"), Request("s", add(1))
    )
    gate.new_pass()
    assert [gate.ready(r) for r in (a, b, c, plain, share)] == [Admit.GO, Admit.GO, Admit.WAIT, Admit.GO, Admit.GO]
    assert gate.ready(a) is Admit.GO  # asked again (left waiting for KV blocks, or preempted): it keeps its rows
    gate.leave("a")
    gate.new_pass()
    assert gate.ready(c) is Admit.WAIT  # "s" still holds the row "a" shared with it
    gate.leave("s")
    gate.new_pass()
    assert gate.ready(c) is Admit.GO
    for rid in ("b", "c", "plain", "never-seen"):
        gate.leave(rid)
    assert gate.tables.empty


def test_once_a_request_waits_later_ones_needing_new_rows_wait_too_in_that_pass(held):
    gate = Gate(held, TableConfig(rows=3, slots=2))
    holder, big, small, plain = arrived(
        gate,
        Request("holder", add(1)),
        Request("big", add(2) + [{"sae": "l1", "features": {"3": 1.0}, "positions": "generated"}]),  # two rows
        Request("small", add(4)),
        Request("plain"),
    )
    gate.new_pass()
    assert gate.ready(holder) is Admit.GO  # one free row left
    assert [gate.ready(r) for r in (big, small, plain)] == [Admit.WAIT, Admit.WAIT, Admit.GO]  # small may not overtake
    gate.leave("holder")
    gate.new_pass()
    assert [gate.ready(r) for r in (big, small)] == [Admit.GO, Admit.WAIT]


def test_a_steering_that_can_never_run_is_refused_with_its_reason(held):
    gate = Gate(held, TableConfig(rows=2, slots=2))  # one usable row
    two_rows = add(2) + [{"sae": "l1", "features": {"3": 1.0}, "positions": "generated"}]
    too_many = [{"sae": "l1", "features": [1, 2, 3], "mode": "ablate"}]
    requests = arrived(
        gate,
        Request("wide", [{"sae": "l1", "features": {"256": 1.0}}]),  # beyond the width
        Request("nope", [{"sae": "nope", "features": {"1": 1.0}}]),
        Request("json", "[{not json"),
        Request("slots", too_many),
        Request("rows", two_rows),
        Request(
            "unit",
            json.dumps({"entries": [{**add(1)[0], "relative": True}], "units": {"resid_post.1": -1.0}}),
        ),
    )
    gate.new_pass()
    verdicts = [gate.ready(r) for r in requests]
    assert all(isinstance(v, str) for v in verdicts), verdicts
    assert "256" in verdicts[0] and "nope" in verdicts[1] and "at most 2" in verdicts[3]
    assert "more rows than the table has" in verdicts[4] and "unit is -1.0" in verdicts[5]
    assert gate.tables.empty  # nothing taken by a refused request
    for r in requests:
        gate.leave(r.request_id)
    assert not gate._refused


def test_steered_requests_get_a_salted_key_and_their_block_hashes_again(gate, held):
    steered, tenant, other_tenant, plain, empty = arrived(
        gate,
        Request("a", add(1)),
        Request("b", add(1), cache_salt="tenant-7"),
        Request("c", add(1), cache_salt="tenant-8"),
        Request("plain", cache_salt="tenant-7"),
        Request("empty", []),
    )
    salt = parse_steering(add(1), held).salt
    assert steered.cache_salt == salt and steered.block_hashes == [f"{salt}-0", f"{salt}-1"]
    assert steered.hashed_with == [None, salt]
    assert tenant.cache_salt == salted(salt, "tenant-7") != other_tenant.cache_salt
    assert tenant.cache_salt.startswith(SALT_PREFIX) and len(tenant.cache_salt) <= 128
    assert plain.cache_salt == "tenant-7" and plain.hashed_with == ["tenant-7"]  # unsteered: untouched
    assert empty.cache_salt is None and gate.ready(empty) is Admit.GO
    assert Request("again", add(1)).cache_salt is None
    again = arrived(gate, Request("again", add(1)))[0]
    assert again.cache_salt == steered.cache_salt  # equal steering, equal key: their prompts' blocks are shared


def test_on_meta_rows_are_keyed_by_their_entries_so_equal_content_written_twice_counts_twice(saes):
    """The worker shares one row between entries that give equal content; the meta gate counts two (conservative)."""
    meta = {sid: copy.deepcopy(sae).to("meta") for sid, sae in saes.items()}
    same = [{"sae": "l1", "features": {"1": 2.0, "5": 0.0}}]  # add(1) plus nothing
    verdicts = {}
    for name, sae_set in (("weights", saes), ("meta", meta)):
        gate = Gate(sae_set, TableConfig(rows=2, slots=2))  # one usable row
        a, b, alias = arrived(
            gate, Request("a", add(1)), Request("b", same), Request("c", [{**add(1)[0], "sae": "resid_post.1"}])
        )
        gate.new_pass()
        verdicts[name] = [gate.ready(r) for r in (a, b, alias)]
    assert verdicts["weights"] == [Admit.GO, Admit.GO, Admit.GO]
    assert verdicts["meta"] == [Admit.GO, Admit.WAIT, Admit.GO]  # the alias has a's entries: it shares a's row
    assert a.cache_salt == alias.cache_salt


def test_the_engine_cores_copy_of_the_saes_holds_no_weights(saes, tmp_path):
    save_sae(saes["jump"], tmp_path / "jump")
    full, meta = (load_saes(f"j={tmp_path / 'jump'}", weights=w)["j"] for w in (True, False))
    assert all(t.is_meta for t in meta.state_dict().values()) and meta.cfg == full.cfg
    assert {k: t.shape for k, t in meta.state_dict().items()} == {k: t.shape for k, t in full.state_dict().items()}
    torch.testing.assert_close(full.W_dec, saes["jump"].W_dec)
