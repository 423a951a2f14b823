"""qwenscope::steer against the reference ``qwenscope.steer`` on a tiny model: a mixed batch of unsteered, added,
clamped and ablated rows gives the reference's logits, and greedy decoding gives its tokens with prompt / generated
positions; the op passes torch.library.opcheck and leaves unsteered tokens untouched."""

import pytest
import torch
from tiny_models import build_tiny, random_inputs
from transformers import DynamicCache

from qwenscope.models import splice
from qwenscope.steer import SteerSpec, steer_rows
from qwenscope.vllm_plugin import Span, TableConfig, Tables, parse_steering, steer_hidden, steer_op
from qwenscope.vllm_plugin.op import steer_body

MIXED = [
    None,
    [{"sae": "l1", "features": {"3": 4.0, "17": -2.0}}],
    [{"sae": "topk", "features": {"5": 2.0, "40": 0.0}, "mode": "clamp", "acts": "own"}],
    [{"sae": "l1", "features": {"9": 3.0}}, {"sae": "jump", "features": [1, 2, 3, 4], "mode": "ablate"}],
    [{"sae": "l2", "features": {"7": 5.0}, "positions": "prompt"}, {"sae": "l1", "features": [8], "mode": "clamp"}],
]


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama", num_layers=3)


def reference_specs(entries, saes) -> list[SteerSpec] | None:
    if not entries:
        return None
    return [
        SteerSpec(
            saes[e["sae"]],
            {int(k): v for k, v in e["features"].items()} if isinstance(e["features"], dict) else e["features"],
            mode=e.get("mode", "add"),
            positions=None if e.get("positions", "all") == "all" else e["positions"],
            acts="own",
        )
        for e in entries
    ]


class Plugin:
    """The engine's side on a HF model: tables, one index line per hooked layer, the op spliced after each layer."""

    def __init__(self, model, saes, steerings, prompt_len):
        self.model, self.prompt_len, self.n = model, prompt_len, len(steerings)
        self.tables = Tables({"resid_post.1": 64, "resid_post.2": 64}, TableConfig(rows=8, slots=4))
        for i, entries in enumerate(steerings):
            self.tables.acquire(str(i), parse_steering(entries or [], saes))

    def forward(self, ids, first_position, cache=None):
        b, s = ids.shape
        index = self.tables.new_index(b * s + 3)  # a longer buffer than the step, as the engine's is
        self.tables.fill(index, [Span(str(i), i * s, s, first_position, self.prompt_len) for i in range(b)])
        edits = {
            hp: (lambda h, k=k, hp=hp: steer_hidden(h, index[k, : b * s].view(b, s), self.tables.layers[hp].tensors()))
            for k, hp in enumerate(self.tables.order)
        }
        with torch.no_grad(), splice(self.model, edits):
            return self.model(input_ids=ids, cache=cache, use_cache=cache is not None).logits


def test_a_mixed_batch_gives_the_reference_logits(llama, saes):
    inputs = random_inputs(llama, batch=len(MIXED), seq=9)
    ids = inputs["input_ids"]
    with torch.no_grad():
        plain = llama(input_ids=ids).logits
        with steer_rows(llama, [reference_specs(e, saes) for e in MIXED]):
            reference = llama(input_ids=ids).logits
    got = Plugin(llama, saes, MIXED, prompt_len=ids.shape[1]).forward(ids, 0)
    assert torch.equal(got[0], plain[0])  # the unsteered row is untouched
    for i in range(1, len(MIXED)):
        assert not torch.allclose(reference[i], plain[i], atol=1e-3), i  # each steering does something
    # other matmul shapes (one feature's encoder rows vs the SAE's): fp32 rounding only
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


def test_greedy_tokens_match_with_prompt_and_generated_positions(llama, saes):
    steerings = [
        None,
        [{"sae": "l1", "features": {"3": 6.0}, "positions": "generated"}],
        [{"sae": "l2", "features": {"11": 6.0}, "positions": "prompt"}],
        [{"sae": "topk", "features": {"5": 4.0}, "mode": "clamp", "acts": "own", "positions": "generated"}],
    ]
    ids = random_inputs(llama, batch=len(steerings), seq=7, seed=3)["input_ids"]
    new = 6
    with torch.no_grad(), steer_rows(llama, [reference_specs(e, saes) for e in steerings]):
        reference = llama.generate(input_ids=ids, max_new_tokens=new, do_sample=False, pad_token_id=0)[
            :, ids.shape[1] :
        ]
    plugin = Plugin(llama, saes, steerings, prompt_len=ids.shape[1])
    cache = DynamicCache()
    logits = plugin.forward(ids, 0, cache)  # the prefill
    tokens = []
    for step in range(new):
        token = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
        if step < new - 1:
            logits = plugin.forward(token, ids.shape[1] + step, cache)  # one decode token per request
    assert torch.equal(torch.cat(tokens, 1), reference)
    with torch.no_grad():
        plain = llama.generate(input_ids=ids, max_new_tokens=new, do_sample=False, pad_token_id=0)[:, ids.shape[1] :]
    assert torch.equal(reference[0], plain[0])
    assert all(not torch.equal(reference[i], plain[i]) for i in range(1, len(steerings)))  # each steering shows


def test_unsteered_tokens_come_out_unchanged_and_opcheck_passes(saes):
    tables = Tables({"resid_post.1": 64}, TableConfig(rows=4, slots=2))
    tables.acquire("a", parse_steering([{"sae": "l1", "features": {"3": 1.0}}], saes))
    tables.acquire("b", parse_steering([{"sae": "jump", "features": {"3": 1.0, "4": 0.5}, "mode": "clamp"}], saes))
    hidden = torch.randn(10, 64)
    rows = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0, 1, 0], dtype=torch.int32)
    args = (hidden, rows, *tables.layers["resid_post.1"].tensors())
    out = steer_op(*args)
    assert torch.equal(out[rows == 0], hidden[rows == 0])
    assert not torch.equal(out[rows != 0], hidden[rows != 0])
    torch.library.opcheck(steer_op, args)
    torch.library.opcheck(steer_op, (hidden.double(), rows, *(t.double() for t in args[2:])))
    with torch.device("meta"):
        fake = torch.ops.qwenscope.steer(torch.empty(5, 64), torch.zeros(5, dtype=torch.int32), *args[2:])
    assert fake.shape == (5, 64)


def test_the_op_compiles_as_one_node(saes):
    tables = Tables({"resid_post.1": 64}, TableConfig(rows=4, slots=2))
    tables.acquire("a", parse_steering([{"sae": "l1", "features": [3], "mode": "ablate"}], saes))
    tensors = tables.layers["resid_post.1"].tensors()

    def f(h, rows):
        return steer_hidden(torch.tanh(h), rows, tensors) * 2

    h, rows = torch.randn(6, 64), torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.int32)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(h, rows), f(h, rows), rtol=0, atol=0)


def test_the_body_traces_whole_with_any_token_count_so_a_cuda_graph_can_capture_it(saes):
    """No host sync, no data-dependent shape: the body compiles in one graph (fullgraph) for a dynamic token count,
    and gives the op's numbers; a loop over the rows present (``.tolist()``, ``nonzero``) would break the graph."""
    tables = Tables({"resid_post.1": 64}, TableConfig(rows=4, slots=2))
    tables.acquire("a", parse_steering([{"sae": "l1", "features": {"3": 1.0}}], saes))
    tables.acquire("b", parse_steering([{"sae": "topk", "features": {"5": 2.0}, "mode": "clamp", "acts": "own"}], saes))
    tensors = tables.layers["resid_post.1"].tensors()
    compiled = torch.compile(steer_body, backend="eager", fullgraph=True, dynamic=True)
    for n in (3, 7, 12):
        hidden, rows = torch.randn(n, 64), torch.randint(0, 3, (n,), dtype=torch.int32)
        torch.testing.assert_close(compiled(hidden, rows, *tensors), steer_op(hidden, rows, *tensors))
