"""The ``steering`` field as qwenscope serve takes it: rows per hookpoint and kind of token, a salt, and one clear
4xx with an OpenAI-style error body for each bad input."""

import json
import math

import pytest
import torch

from qwenscope.serve.api import ApiError, error_body
from qwenscope.vllm_plugin import TableConfig, TableFull, Tables, parse_steering, table_full_error


def refused(raw, saes, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_steering(raw, saes, **kw)
    return info.value


def test_entries_become_rows_per_hookpoint_and_kind_of_token(saes):
    steering = parse_steering(
        [
            {"sae": "l1", "features": {"3": 2.0}, "positions": "prompt"},
            {"sae": "resid_post.2", "features": [5]},  # an SAE named by its hookpoint, strength 1.0
            {"sae": "jump", "features": {"4": 1.5, "6": 0.0}, "mode": "clamp"},
        ],
        saes,
    )
    l1, l2 = steering.layers["resid_post.1"], steering.layers["resid_post.2"]
    assert l1.prompt is not None and l1.generated is not None and l1.prompt.key() != l1.generated.key()
    torch.testing.assert_close(l1.prompt.add, 2.0 * saes["l1"].W_dec[3])  # the add, then the clamp stage
    assert not l1.generated.add.any() and l1.generated.n_slots == 2
    torch.testing.assert_close(l1.generated.dec, saes["jump"].W_dec[[4, 6]])
    torch.testing.assert_close(l1.generated.target, torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(l1.generated.threshold, saes["jump"].threshold[[4, 6]])
    assert l2.prompt is not None and l2.prompt.key() == l2.generated.key()
    assert steering.entries[1] == {
        "sae": "resid_post.2",
        "features": [5],
        "mode": "add",
        "relative": False,
        "positions": "all",
        "acts": "encode",
    }
    assert parse_steering(steering.to_json(), saes).salt == steering.salt  # what travels to the engine parses back


def test_the_salt_follows_the_content(saes):
    one = parse_steering([{"sae": "l1", "features": {"3": 2.0}}], saes)
    assert parse_steering([{"sae": "resid_post.1", "features": {"3": 2.0}}], saes).salt == one.salt
    assert parse_steering([{"sae": "l1", "features": {"3": 2.5}}], saes).salt != one.salt
    assert parse_steering([{"sae": "l1", "features": {"3": 2.0}, "positions": "generated"}], saes).salt != one.salt
    none = parse_steering([], saes)
    assert none.salt is None and none.layers == {} and parse_steering(None, saes).layers == {}


def test_relative_strengths_use_the_unit(saes):
    steering = parse_steering([{"sae": "l1", "features": {"3": 0.5}, "relative": True}], saes, unit=lambda hp: 4.0)
    add = steering.layers["resid_post.1"].prompt.add
    assert math.isclose(float(add.norm()), 2.0, rel_tol=1e-5)  # 0.5 x the unit, whatever |d_f|


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        ([{"sae": "nope", "features": [1]}], 404, "unknown SAE 'nope'"),
        ([{"sae": "l1", "features": {"256": 1.0}}], 400, "outside this SAE"),
        ([{"sae": "l1", "features": {"3": math.nan}}], 400, "finite number"),
        ('[{"sae": "l1", "features": {"3": NaN}}]', 400, "finite number"),
        ([{"sae": "l1", "features": {"3": 1.0}, "mode": "boost"}], 400, "steering.0.mode"),
        ([{"sae": "l1", "features": {"3": 1.0}, "strength": 2}], 400, "steering.0.strength"),
        ("[{", 400, "not valid JSON"),
        ([{"sae": "topk", "features": [3], "mode": "ablate"}], 400, '"acts": "own"'),
        ([{"sae": "l1", "features": {"3": 1.0}, "relative": True}], 400, "steering unit"),
        ([{"sae": "l1", "features": [3], "mode": "ablate"}, {"sae": "l1", "features": [4]}], 400, "adds first"),
        (
            [{"sae": "l1", "features": [3], "mode": "ablate"}, {"sae": "jump", "features": [4], "mode": "clamp"}],
            400,
            "one entry",
        ),
    ],
)
def test_bad_input_gets_one_clear_4xx(saes, raw, status, needle):
    e = refused(raw, saes)
    assert e.status == status and needle in e.message, e.message
    assert "\n" not in e.message
    body = error_body(e.message, e.kind, e.param, e.code)
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "steering"


def test_orders_the_op_can_apply_are_accepted(saes):
    # clamp at prompt tokens, then an add at generated ones: each kind of token sees adds, then one stage
    steering = parse_steering(
        [
            {"sae": "l1", "features": [3], "mode": "ablate", "positions": "prompt"},
            {"sae": "l1", "features": [4], "positions": "generated"},
        ],
        saes,
    )
    layer = steering.layers["resid_post.1"]
    assert layer.prompt.n_slots == 1 and not layer.prompt.add.any()
    assert layer.generated.n_slots == 0 and layer.generated.add.any()
    # acts "encode" is accepted where it equals "own"; TopK with "own" is accepted
    parse_steering([{"sae": "jump", "features": [3], "mode": "ablate", "acts": "encode"}], saes)
    parse_steering([{"sae": "topk", "features": {"3": 1.0}, "mode": "clamp", "acts": "own"}], saes)


def test_a_full_table_is_a_429(saes):
    tables = Tables({"resid_post.1": 64}, TableConfig(rows=2))
    tables.acquire("a", parse_steering([{"sae": "l1", "features": [3]}], saes))
    tables.acquire("b", parse_steering([{"sae": "l1", "features": [3]}], saes))  # same content: same row
    with pytest.raises(TableFull) as info:
        tables.acquire("c", parse_steering([{"sae": "l1", "features": [4]}], saes))
    e = table_full_error(info.value)
    assert e.status == 429 and e.code == "steering_table_full" and e.kind == "rate_limit_error"
    tables.acquire("d", parse_steering([], saes))  # an unsteered request never needs a row
    tables.release("a")
    tables.release("b")
    tables.acquire("c", parse_steering([{"sae": "l1", "features": [4]}], saes))


def test_the_parse_cache_gives_the_same_rows_and_keeps_no_refusal(saes):
    from qwenscope.vllm_plugin.parse import ParseCache

    cache = ParseCache(saes, size=2)
    entries = [{"sae": "l1", "features": {"3": 1.0}}]
    first = cache(entries)
    assert cache(json.dumps(entries, sort_keys=True, separators=(",", ":"))) is first  # the text, the same entry
    assert first.salt == parse_steering(entries, saes).salt
    for _ in range(2):  # a refusal each time, never a cached answer
        with pytest.raises(ApiError):
            cache([{"sae": "nope", "features": {"3": 1.0}}])
    cache([{"sae": "l1", "features": {"4": 1.0}}])
    cache([{"sae": "l1", "features": {"5": 1.0}}])  # the oldest goes
    assert cache(entries) is not first and cache(entries).salt == first.salt
