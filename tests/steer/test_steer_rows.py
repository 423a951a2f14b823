"""Per-row steering: each row equals running it alone, unsteered rows stay bit-identical, rows checked per forward."""

import pytest
import torch
from floats import MARGIN, greedy_margin
from tiny_models import PAD_ID, build_tiny, random_inputs

from qwenscope import QwenscopeError, Sae, SaeConfig, SteerSpec, steer
from qwenscope.steer import steer_rows

GREEDY = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD_ID}


def make_sae(layer: int, seed: int) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=64, d_sae=256, k=8, hookpoint=f"resid_post.{layer}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
    return sae.requires_grad_(False)


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def left_padded(prompts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    return {"input_ids": ids, "attention_mask": mask}


def generate(model, inputs, **kw):
    """(new tokens, per-step scores) of a greedy generation."""
    with torch.no_grad():
        out = model.generate(**inputs, **GREEDY, **kw, output_scores=True, return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.scores, 1)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama", num_layers=3)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3_5"])
def test_each_row_equals_running_it_alone(arch):
    model = build_tiny(arch, num_layers=3)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (n,), generator=gen) for n in (7, 4, 9, 5)]
    sae0, sae1 = make_sae(0, 1), make_sae(1, 2)
    per_row = [
        SteerSpec(sae0, {5: 3.0}),
        SteerSpec(sae1, {9: 6.0}, mode="clamp", positions="generated"),
        None,
        SteerSpec(sae1, list(range(256)), mode="ablate"),
    ]
    batch = left_padded(prompts)
    plain, plain_scores = generate(model, batch)
    with steer_rows(model, per_row):
        mixed, mixed_scores = generate(model, batch)
    for i, (prompt, spec) in enumerate(zip(prompts, per_row, strict=True)):
        one = {"input_ids": prompt[None], "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}
        with steer(model, [spec]) if spec else torch.no_grad():
            alone, _ = generate(model, one)
            margin = greedy_margin(model, one, GREEDY["max_new_tokens"], pad_token_id=PAD_ID)
        # batched (left-padded) vs alone: other shapes, logits ~1e-5 apart; the same greedy tokens is the promise,
        # and it holds because no greedy step is anywhere near a tie
        assert margin > MARGIN, (arch, i, margin)
        assert torch.equal(mixed[i], alone[0]), (arch, i)
        assert torch.equal(mixed[i], plain[i]) == (spec is None), (arch, i)  # the steering did change the others
    # the unsteered row, at every step: same batch, same kernels, same shapes: bit-identical
    assert torch.equal(mixed_scores[2], plain_scores[2])
    assert mixed[1, 0] == plain[1, 0]  # "generated": the prompt forward of row 1 is untouched


def test_unsteered_rows_are_bit_identical_on_every_arch(tiny):
    arch, model, _ = tiny
    inputs = random_inputs(model, batch=4, seq=10)  # row 1 left-padded
    sae = make_sae(1, 3)
    plain = logits(model, inputs)
    base = n_hooks(model)
    per_row = [SteerSpec(sae, {3: 4.0}), None, SteerSpec(sae, {3: 2.0}, mode="clamp"), None]
    with steer_rows(model, per_row):
        mixed = logits(model, inputs)
    with steer(model, sae, list(range(256)), mode="ablate", rows=[True, False, False, True]):
        masked = logits(model, inputs)
    assert n_hooks(model) == base
    for i in (1, 3):  # same batch, same kernels, same shapes (the hooks leave these rows alone): bit-identical
        assert torch.equal(mixed[i], plain[i]), (arch, i)
    for i in (0, 2):
        assert not torch.equal(mixed[i], plain[i]), (arch, i)
    assert torch.equal(masked[1:3], plain[1:3]) and not torch.equal(masked[0], plain[0]), arch


def test_row_forms_agree_and_steered_rows_match_steering_the_whole_batch(llama):
    inputs = random_inputs(llama, batch=3, seq=8)
    sae = make_sae(1, 4)
    results = []
    for rows in ([0, 2], [2, 0, 2], [True, False, True], torch.tensor([True, False, True]), torch.tensor([0, 2])):
        with steer(llama, sae, {7: 3.0}, mode="clamp", rows=rows):
            results.append(logits(llama, inputs))
    spec = SteerSpec(sae, {7: 3.0}, mode="clamp")
    with steer_rows(llama, [spec, None, spec]):
        results.append(logits(llama, inputs))
    assert all(torch.equal(results[0], r) for r in results[1:])  # same kernels, same shapes: bit-identical
    with steer(llama, [spec]):
        everywhere = logits(llama, inputs)
    # rows edited by index vs the whole batch edited: other shapes in the hook's ops, fp32 ~1e-6 on logits ~1
    torch.testing.assert_close(results[0][[0, 2]], everywhere[[0, 2]], rtol=0, atol=1e-5)
    assert torch.equal(results[0][1], logits(llama, inputs)[1])  # same kernels, same shapes: bit-identical


def test_each_row_keeps_the_order_of_its_specs(llama):
    inputs = random_inputs(llama, batch=3, seq=8)
    sae = make_sae(1, 5)
    ablate, add, add2 = (
        SteerSpec(sae, list(range(256)), mode="ablate"),
        SteerSpec(sae, {11: 5.0}),
        SteerSpec(sae, {3: 4.0}),
    )
    orders = [[ablate, add], [add, ablate], [add2, ablate]]  # row 2's ablate is shared with row 1, its add2 comes later
    with steer_rows(llama, orders):
        mixed = logits(llama, inputs)
    for i, specs in enumerate(orders):
        with steer(llama, specs):
            alone = logits(llama, inputs)[i]
        with steer(llama, specs[::-1]):
            reversed_order = logits(llama, inputs)[i]
        # per-row specs vs the whole batch steered: other shapes in the hooks' ops, fp32 ~1e-6 on logits ~1
        torch.testing.assert_close(mixed[i], alone, rtol=0, atol=1e-5)
        assert not torch.allclose(mixed[i], reversed_order, rtol=0, atol=1e-3), i  # the order matters here


def test_repeat_covers_the_rows_beam_search_expands(llama):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (n,), generator=gen) for n in (6, 4)]
    batch = left_padded(prompts)
    spec = SteerSpec(make_sae(0, 6), {5: 3.0})
    plain, _ = generate(llama, batch, num_beams=2)
    with steer_rows(llama, [spec, None], repeat=2):
        steered, _ = generate(llama, batch, num_beams=2)
    with steer(llama, [spec]):
        alone, _ = generate(llama, left_padded(prompts[:1]), num_beams=2)
    # beam tokens, batched (padded) vs alone: other shapes; the equality is the promise (the beams' scores of these
    # prompts are not near ties: checked on this and the other CPU kernel sets, ATEN_CPU_CAPABILITY=default/avx2)
    assert torch.equal(steered[0], alone[0]) and not torch.equal(steered[0], plain[0])
    assert torch.equal(steered[1], plain[1])  # same batch, same kernels, same shapes: bit-identical
    with pytest.raises(QwenscopeError, match="num_beams") as err, steer_rows(llama, [spec, None]):
        generate(llama, batch, num_beams=2)
    assert "mask of a SteerSpec has 2 entries but the batch has 4 rows" in str(err.value)


def test_repeat_spreads_each_entry_over_its_rows(llama):
    inputs = {k: v.repeat_interleave(2, 0) for k, v in random_inputs(llama, batch=3, seq=8).items()}
    sae = make_sae(1, 9)
    a, b = SteerSpec(sae, {4: 3.0}), SteerSpec(sae, [4, 8], mode="ablate")
    with steer_rows(llama, [a, None, b], repeat=2):
        repeated = logits(llama, inputs)
    with steer_rows(llama, [a, a, None, None, b, b]):
        spelled_out = logits(llama, inputs)
    assert torch.equal(repeated, spelled_out)  # the same row masks: same kernels, same shapes: bit-identical
    assert not torch.equal(repeated[1], logits(llama, inputs)[1])


def test_no_steered_row_is_a_no_op(llama):
    inputs = random_inputs(llama, batch=2, seq=8)
    base = n_hooks(llama)
    with steer_rows(llama, [None, []]):
        assert n_hooks(llama) == base
        assert torch.equal(logits(llama, inputs), logits(llama, inputs))  # same kernels, same shapes: bit-identical


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([5], "a SteerSpec names row 5 but the batch has 3 rows (0..2)"),
        ([True, False], "the rows mask of a SteerSpec has 2 entries but the batch has 3 rows"),
        ([0, 1, 2, 3], "names row 3 but the batch has 3 rows"),
    ],
)
def test_rows_that_do_not_fit_the_batch_fail_at_the_forward(llama, rows, message):
    sae = make_sae(1, 7)
    base = n_hooks(llama)
    with pytest.raises(QwenscopeError) as err, steer(llama, sae, {1: 1.0}, rows=rows):
        logits(llama, random_inputs(llama, batch=3, seq=6))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert n_hooks(llama) == base


def test_steer_rows_list_shorter_than_the_batch_fails(llama):
    spec = SteerSpec(make_sae(1, 7), {1: 1.0})
    with pytest.raises(QwenscopeError, match="has 2 entries but the batch has 3 rows"), steer_rows(llama, [spec, None]):
        logits(llama, random_inputs(llama, batch=3, seq=6))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, s: steer(m, s, {1: 1.0}, rows=[-1]), "rows holds -1: pass row indices"),
        (lambda m, s: steer(m, s, {1: 1.0}, rows=["a"]), "rows holds 'a'"),
        (lambda m, s: steer(m, s, {1: 1.0}, rows=[0, True]), "rows holds True"),
        (lambda m, s: steer(m, s, {1: 1.0}, rows=1.5), "rows=1.5: pass row indices or a bool mask"),
        (lambda m, s: steer(m, s, {1: 1.0}, rows=torch.ones(2, 2, dtype=torch.bool)), "tensor of shape (2, 2)"),
        (lambda m, s: steer(m, [SteerSpec(s, {1: 1.0})], rows=[0]), "give each its rows"),
        (lambda m, s: steer_rows(m, []), "steer_rows needs one entry per row"),
        (lambda m, s: steer_rows(m, SteerSpec(s, {1: 1.0})), "steer_rows needs one entry per row"),
        (lambda m, s: steer_rows(m, [None, [{1: 1.0}]]), "row 1 of steer_rows holds a dict"),
        (lambda m, s: steer_rows(m, [SteerSpec(s, {1: 1.0}, rows=[0])]), "with rows set; steer_rows sets them"),
        (lambda m, s: steer_rows(m, [None], repeat=0), "repeat=0: pass a positive int"),
    ],
)
def test_bad_rows_one_line(llama, call, message):
    sae = make_sae(1, 8)
    with pytest.raises(QwenscopeError) as err, call(llama, sae):
        pass
    assert message in str(err.value) and "\n" not in str(err.value)
