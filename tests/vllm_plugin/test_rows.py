"""The per-token row index of a step: prompt and generated tokens by absolute position, padding and unsteered
requests at row 0, written in place into the persistent buffer."""

from qwenscope.vllm_plugin import Span, TableConfig, Tables, parse_steering


def test_fill_writes_each_tokens_row_by_position(saes):
    tables = Tables({"resid_post.1": 64, "resid_post.2": 64}, TableConfig(rows=4))
    split = [
        {"sae": "l1", "features": [3], "positions": "prompt"},
        {"sae": "l1", "features": [4], "positions": "generated"},
    ]
    tables.acquire("split", parse_steering(split, saes))
    tables.acquire("deep", parse_steering([{"sae": "l2", "features": [5]}], saes))
    prompt_row, generated_row = tables.held("split")["resid_post.1"]
    (deep_row, same) = tables.held("deep")["resid_post.2"]
    assert 0 not in (prompt_row, generated_row, deep_row) and prompt_row != generated_row and same == deep_row
    index = tables.new_index(16)
    address = index.data_ptr()
    index.fill_(7)  # stale rows of the last step
    spans = [
        Span("split", start=0, count=4, first_position=3, prompt_len=5),  # a chunked prefill's last 2 + 2 recomputed
        Span("plain", start=4, count=3, first_position=0, prompt_len=3),  # an unsteered request
        Span("deep", start=7, count=1, first_position=9, prompt_len=4),  # a decode token
    ]
    tables.fill(index, spans)
    p, g, d = prompt_row, generated_row, deep_row
    assert index.data_ptr() == address
    assert index[0].tolist() == [p, p, g, g, 0, 0, 0, 0] + [0] * 8  # line 0: resid_post.1; padding at row 0
    assert index[1].tolist() == [0] * 7 + [d] + [0] * 8
    tables.release("split")
    tables.fill(index, spans)  # a finished request's tokens (none should come) would read row 0
    assert not index[0].any()


def test_a_steering_too_wide_for_one_layer_takes_no_row_at_any(saes):
    import pytest

    from qwenscope.errors import QwenscopeError

    tables = Tables({"resid_post.1": 64, "resid_post.2": 64}, TableConfig(rows=4, slots=2))
    steering = [{"sae": "l1", "features": [3]}, {"sae": "l2", "features": [1, 2, 3], "mode": "ablate"}]
    with pytest.raises(QwenscopeError, match="at most 2"):
        tables.acquire("wide", parse_steering(steering, saes))
    assert [t.free_rows for t in tables.layers.values()] == [3, 3] and tables.held("wide") == {}
