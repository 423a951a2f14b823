"""The steering table: same content same row, reference counts, freeing and reuse, backpressure, fixed addresses."""

import pytest
import torch

from qwenscope.vllm_plugin import RowContent, SteerTable, TableConfig, TableFull, Tables, parse_steering
from qwenscope.vllm_plugin.table import add_only


def vec(value: float, d: int = 8) -> torch.Tensor:
    return torch.full((d,), value)


def test_same_content_shares_a_row_and_is_freed_when_unused():
    table = SteerTable(8, TableConfig(rows=3, slots=2))
    a, b = table.acquire(add_only(vec(1.0))), table.acquire(add_only(vec(1.0)))
    assert a == b != 0 and table.refs(a) == 2
    assert torch.equal(table.add[a], vec(1.0)) and torch.equal(table.add[0], vec(0.0))  # row 0 stays "not steered"
    c = table.acquire(add_only(vec(2.0)))
    assert c not in (0, a)
    with pytest.raises(TableFull, match="retry"):  # two usable rows, both held: refused, never served unsteered
        table.acquire(add_only(vec(3.0)))
    table.release(a)
    assert table.refs(a) == 1 and table.free_rows == 0  # still held by the other request
    table.release(a)
    assert table.free_rows == 1
    assert table.acquire(add_only(vec(3.0))) == a  # the freed row is reused, rewritten in place
    assert torch.equal(table.add[a], vec(3.0))


def test_tensors_keep_their_addresses_and_unused_slots_are_zeroed():
    table = SteerTable(4, TableConfig(rows=4, slots=3))
    ptrs = [t.data_ptr() for t in table.tensors()]
    wide = RowContent(vec(0.0, 4), torch.ones(3, 4), torch.ones(3), torch.zeros(3), torch.ones(3, 4), torch.ones(3))
    row = table.acquire(wide)
    table.release(row)
    narrow = RowContent(
        vec(0.0, 4), torch.ones(1, 4), torch.ones(1), torch.zeros(1), 2 * torch.ones(1, 4), torch.ones(1)
    )
    assert table.acquire(narrow) == row
    assert [t.data_ptr() for t in table.tensors()] == ptrs  # a captured graph still reads the live rows
    assert torch.equal(table.dec[row, 0], 2 * torch.ones(4)) and not table.dec[row, 1:].any()
    assert not table.enc[row, 1:].any() and not table.target[row, 1:].any()


def test_errors_are_clear():
    table = SteerTable(4, TableConfig(rows=2, slots=1))
    with pytest.raises(ValueError, match="at most 1"):
        table.acquire(
            RowContent(vec(0.0, 4), torch.ones(2, 4), torch.ones(2), torch.ones(2), torch.ones(2, 4), torch.ones(2))
        )
    with pytest.raises(ValueError, match="d_in=4"):
        table.acquire(add_only(vec(1.0, 5)))
    row = table.acquire(add_only(vec(1.0, 4)))
    table.release(row)
    with pytest.raises(ValueError, match="released more often"):
        table.release(row)
    with pytest.raises(ValueError, match="at least 2 rows"):
        TableConfig(rows=1)


def test_meta_tables_keep_the_bookkeeping_only():
    table = SteerTable(4096, TableConfig(rows=3, device="meta"))  # a front end's mirror: no memory
    assert table.add.is_meta
    table.acquire(add_only(vec(1.0, 4096)))
    table.acquire(add_only(vec(2.0, 4096)))
    with pytest.raises(TableFull):
        table.acquire(add_only(vec(3.0, 4096)))


def test_a_request_takes_all_its_layers_or_none(saes):
    tables = Tables({"resid_post.1": 64, "resid_post.2": 64}, TableConfig(rows=2))
    first = parse_steering([{"sae": "l2", "features": {"3": 1.0}}], saes)
    both = parse_steering([{"sae": "l1", "features": {"3": 1.0}}, {"sae": "l2", "features": {"4": 1.0}}], saes)
    tables.acquire("a", first)
    with pytest.raises(TableFull, match="resid_post.2"):
        tables.acquire("b", both)
    assert tables.layers["resid_post.1"].free_rows == 1  # nothing was taken at the layer that had room
    assert tables.held("b") == {}
    tables.release("a")
    tables.acquire("b", both)
    assert set(tables.held("b")) == {"resid_post.1", "resid_post.2"}
    tables.release("b")
    assert all(t.free_rows == 1 for t in tables.layers.values())
