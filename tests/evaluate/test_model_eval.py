"""Model-level evaluation: exact and zero SAEs, a hand-written reference, the plain computation the fast path must
match (bench/perf/reference_eval.py, the baseline bench/perf/eval.py times), masks and padding, errors, hooks, and
baseline SAEs evaluated in the same pass."""

import json

import pytest
import torch
import torch.nn.functional as F
from bench_scripts import bench_script
from tiny_models import build_tiny

from qwenscope import QwenscopeError, Sae, SaeConfig, splice
from qwenscope.evaluate import evaluate_sae, evaluate_saes
from qwenscope.evaluate.metrics import cosine_similarity, explained_variance, relative_norm
from qwenscope.evaluate.model_eval import RESULT_KEYS, iter_batches
from qwenscope.sae.random import random_like

with bench_script("reference_eval") as _reference:  # the plain evaluation, a benchmark baseline
    reference_evaluate_saes = _reference.reference_evaluate_saes

RUN = {"progress": False}


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3_5"])
def test_exact_sae_recovers_all_loss(arch, identity_sae):
    model = build_tiny(arch, num_layers=2)
    tokens = torch.randint(3, 512, (4, 10), generator=torch.Generator().manual_seed(0))
    r = evaluate_sae(model, identity_sae(hookpoint="resid_post.0"), tokens, batch_size=2, **RUN)
    assert r["hookpoint"] == "resid_post.0"
    assert r["explained_variance"] == 1.0 and r["fvu"] == 0.0
    assert r["cosine_similarity"] == pytest.approx(1.0) and r["relative_norm"] == pytest.approx(1.0)
    assert r["l0"] == 64.0 and r["n_dead"] == 0  # one of relu(x_i), relu(-x_i) per dimension
    assert r["ce_sae"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["ce_zero"] != pytest.approx(r["ce_clean"], abs=1e-4)  # the baseline does change the model
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert r["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)
    assert r["kl_div"] == pytest.approx(0.0, abs=1e-7)
    assert r["kl_div_zero"] > 1e-4


def test_bfloat16_model_with_float32_sae(identity_sae, token_rows):
    model = build_tiny("qwen3", num_layers=2).to(torch.bfloat16)
    r = evaluate_sae(model, identity_sae(hookpoint="resid_post.1"), token_rows, **RUN)
    assert r["explained_variance"] == 1.0 and r["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_zero_reconstruction_recovers_nothing(llama, token_rows, zero_sae):
    r = evaluate_sae(llama, zero_sae(hookpoint="resid_post.1"), token_rows, **RUN)
    assert r["ce_sae"] == pytest.approx(r["ce_zero"], abs=1e-6)
    assert r["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert r["kl_div"] == pytest.approx(r["kl_div_zero"], rel=1e-5)
    assert r["cosine_similarity"] == 0.0 and r["relative_norm"] == 0.0
    assert r["explained_variance"] < 0  # zeros are worse than the mean


def _reference(model, sae, tokens, hookpoint):
    """The same numbers written out by hand: replace positions 1.. of every row, score predictions at 1..S-2."""
    with torch.no_grad():
        h = {}
        with splice(model, hookpoint, lambda t: h.setdefault("x", t)):
            clean = model(input_ids=tokens).logits
        x = h["x"][:, 1:]
        x_hat = sae(x).sae_out

        def logits_with(values):
            def edit(t):
                t = t.clone()
                t[:, 1:] = values
                return t

            with splice(model, hookpoint, edit):
                return model(input_ids=tokens).logits

        lp = {
            name: F.log_softmax(lg[:, 1:-1], -1).flatten(0, 1)
            for name, lg in [("clean", clean), ("sae", logits_with(x_hat)), ("zero", logits_with(0.0))]
        }
    targets = tokens[:, 2:].flatten()
    ce = {name: F.nll_loss(v, targets).item() for name, v in lp.items()}
    kl = F.kl_div(lp["sae"], lp["clean"], log_target=True, reduction="batchmean").item()
    return ce, kl, x, x_hat


def test_matches_hand_written_reference(llama, token_rows, random_sae):
    sae = random_sae(hookpoint="resid_post.1")
    r = evaluate_sae(llama, sae, token_rows, batch_size=4, **RUN)
    ce, kl, x, x_hat = _reference(llama, sae, token_rows, "resid_post.1")
    assert r["n_tokens"] == 6 * 11 and r["n_scored_tokens"] == 6 * 10
    assert r["ce_clean"] == pytest.approx(ce["clean"], rel=1e-5)
    assert r["ce_sae"] == pytest.approx(ce["sae"], rel=1e-5)
    assert r["ce_zero"] == pytest.approx(ce["zero"], rel=1e-5)
    assert r["ce_loss_recovered"] == pytest.approx((ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]), rel=1e-3)
    assert r["kl_div"] == pytest.approx(kl, rel=1e-4)
    assert r["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-5)
    assert r["cosine_similarity"] == pytest.approx(cosine_similarity(x, x_hat), rel=1e-5)
    assert r["relative_norm"] == pytest.approx(relative_norm(x, x_hat), rel=1e-5)
    assert r["l0"] == 8.0


def test_padding_is_neither_replaced_nor_scored(llama, random_sae):
    sae = random_sae(hookpoint="resid_post.1")
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 512, (n,), generator=gen) for n in (12, 5, 9, 2)]
    padded = evaluate_sae(llama, sae, rows, batch_size=4, **RUN)  # one batch, right-padded
    alone = evaluate_sae(llama, sae, rows, batch_size=1, **RUN)  # no padding at all
    assert padded["n_tokens"] == alone["n_tokens"] == sum(n - 1 for n in (12, 5, 9, 2))
    assert padded["n_scored_tokens"] == sum(n - 2 for n in (12, 5, 9, 2))
    for key, value in alone.items():
        if isinstance(value, float):
            # right-padded batch vs each row alone: other shapes, other reduction order; fp32 ~1e-6, amplified in ratios
            assert padded[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_keep_mask_and_skip_first(llama, token_rows, zero_sae):
    sae = zero_sae(hookpoint="resid_post.1")
    nothing = evaluate_sae(llama, sae, token_rows, keep_mask=torch.zeros(6, 12, dtype=torch.bool), **RUN)
    assert nothing["n_tokens"] == 0 and nothing["explained_variance"] is None
    assert nothing["ce_sae"] == nothing["ce_zero"] == nothing["ce_clean"] and nothing["kl_div"] == 0.0
    keep = torch.rand(6, 12, generator=torch.Generator().manual_seed(0)) > 0.5
    some = evaluate_sae(llama, sae, token_rows, keep_mask=list(keep), **RUN)  # an iterable of row masks
    assert some["n_tokens"] == int(keep[:, 1:].sum())
    everything = evaluate_sae(llama, sae, token_rows, skip_first=False, **RUN)
    assert everything["n_tokens"] == 6 * 12 and everything["n_scored_tokens"] == 6 * 11
    assert everything["skip_first"] is False


def test_n_tokens_stops_after_whole_rows(llama, token_rows, identity_sae):
    r = evaluate_saes(llama, {"resid_post.0": identity_sae()}, token_rows, n_tokens=20, batch_size=2, **RUN)
    assert r["n_sequences"] == 2 and r["n_tokens"] == 24  # two rows of 12 reach 20
    batches = list(iter_batches(token_rows, batch_size=4))
    assert [b.input_ids.shape[0] for b in batches] == [4, 2]
    assert not batches[0].keep[:, 0].any() and batches[0].keep[:, 1:].all()


def test_several_saes_are_evaluated_separately(llama, token_rows, identity_sae, zero_sae):
    identity, zero = identity_sae(hookpoint="resid_post.0"), zero_sae(hookpoint="resid_post.1")
    both = evaluate_saes(llama, [identity, zero], token_rows, **RUN)  # hookpoints from the SAEs
    assert list(both["hookpoints"]) == ["resid_post.0", "resid_post.1"]
    alone = evaluate_sae(llama, zero, token_rows, **RUN)
    for key in ("ce_sae", "ce_zero", "kl_div", "explained_variance"):
        # two SAEs in one pass vs one: the same forwards of the same batches, bit-identical but for the float sums'
        # order
        assert both["hookpoints"]["resid_post.1"][key] == pytest.approx(alone[key], rel=1e-6)
    assert both["hookpoints"]["resid_post.0"]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert both["ce_clean"] == pytest.approx(alone["ce_clean"])
    json.dumps(both, allow_nan=False)  # JSON-serialisable as it is


def test_hooks_are_removed(llama, token_rows, random_sae):
    before = n_hooks(llama)
    evaluate_sae(llama, random_sae(hookpoint="resid_post.1"), token_rows, **RUN)
    assert n_hooks(llama) == before

    class Broken(Sae):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = Broken(SaeConfig(d_in=64, d_sae=8, k=2, hookpoint="resid_post.1"))
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_sae(llama, broken, token_rows, **RUN)
    assert n_hooks(llama) == before


def test_clear_errors(llama, token_rows, identity_sae):
    narrow = Sae(SaeConfig(d_in=32, d_sae=64, k=4, hookpoint="resid_post.1"))
    with pytest.raises(QwenscopeError, match="does not match"):
        evaluate_sae(llama, narrow, token_rows, **RUN)
    anonymous = identity_sae(hookpoint=None)
    with pytest.raises(QwenscopeError, match="does not record its hookpoint"):
        evaluate_sae(llama, anonymous, token_rows, **RUN)
    with pytest.raises(QwenscopeError, match="does not record its hookpoint"):
        evaluate_saes(llama, [anonymous], token_rows, **RUN)
    sae = identity_sae()
    for empty in ([], torch.empty(0, 12, dtype=torch.long), [torch.empty(0, dtype=torch.long)]):
        with pytest.raises(QwenscopeError, match="no tokens"):
            evaluate_sae(llama, sae, empty, **RUN)
    with pytest.raises(QwenscopeError, match="integers"):
        evaluate_sae(llama, sae, token_rows.float(), **RUN)
    with pytest.raises(QwenscopeError, match="keep_mask"):
        evaluate_sae(llama, sae, token_rows, keep_mask=torch.ones(6, 5, dtype=torch.bool), **RUN)
    with pytest.raises(QwenscopeError, match="no SAEs"):
        evaluate_saes(llama, {}, token_rows, **RUN)
    with pytest.raises(QwenscopeError, match="out of range"):
        evaluate_saes(llama, {"resid_post.9": sae}, token_rows, **RUN)


def assert_same_results(fast, plain):
    """Every figure of two evaluate_saes results equal to float noise; counts exactly."""
    assert fast.keys() == plain.keys() and fast["hookpoints"].keys() == plain["hookpoints"].keys()
    for key in ("n_sequences", "n_tokens", "skip_first"):
        assert fast[key] == plain[key], key
    # fast path vs plain: other kernels and shapes, fp32 ~1e-6 relative
    assert fast["ce_clean"] == pytest.approx(plain["ce_clean"], rel=1e-5)
    for name, metrics in plain["hookpoints"].items():
        assert fast["hookpoints"][name].keys() == metrics.keys()
        for key, value in metrics.items():
            got = fast["hookpoints"][name][key]
            if key == "ce_loss_recovered":  # a ratio over ce_zero - ce_clean, often ~1e-5 on random tiny models:
                denominator = abs(metrics["ce_zero"] - plain["ce_clean"])  # allow the CE noise it amplifies
                tol = 1e-6 * metrics["ce_zero"] * (1 + abs(value)) / denominator
                assert got == pytest.approx(value, abs=tol), (name, key)
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
            else:
                assert got == value, (name, key)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3_moe", "qwen3_5"])
def test_matches_plain_evaluation_at_several_hookpoints(arch, random_sae):
    """The fast path (shared layers skipped, the head at scored positions only) against three full forwards per
    hookpoint: before any layer, inside a layer, at the last layer's output (all layers shared); ragged rows."""
    model = build_tiny(arch, num_layers=3)
    hookpoints = ["resid_pre.0", "mlp_out.1", "resid_post.2"]
    saes = {hp: random_sae(hookpoint=hp, seed=i) for i, hp in enumerate(hookpoints)}
    gen = torch.Generator().manual_seed(4)
    lengths = (12, 5, 2, 1, 9, 7)
    rows = [torch.randint(3, 512, (n,), generator=gen) for n in lengths]
    keep = [torch.rand(n, generator=gen) > 0.3 for n in lengths]
    kwargs = {"keep_mask": keep, "batch_size": 3}
    fast = evaluate_saes(model, saes, rows, **kwargs, **RUN)
    assert_same_results(fast, reference_evaluate_saes(model, saes, rows, **kwargs))
    assert all(r["kl_div"] > 1e-5 and r["kl_div_zero"] > 1e-6 for r in fast["hookpoints"].values())  # edits bite


def test_matches_plain_evaluation_with_first_tokens_and_soft_capped_logits(random_sae, token_rows):
    model = build_tiny("gemma3", num_layers=2)
    model.config.final_logit_softcapping = 3.0
    saes = {"resid_post.0": random_sae(hookpoint="resid_post.0"), "resid_post.1": random_sae(seed=1)}
    for skip_first in (True, False):
        fast = evaluate_saes(model, saes, token_rows, batch_size=4, skip_first=skip_first, **RUN)
        assert_same_results(fast, reference_evaluate_saes(model, saes, token_rows, batch_size=4, skip_first=skip_first))


def count_forwards(model) -> list[int]:
    """A one-item list counting ``model``'s forwards from now on (the hook stays: use a model of the test's own)."""
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_baselines_in_the_same_pass_equal_separate_calls(arch, random_sae):
    """Baseline sets ride along: each baseline SAE costs one spliced forward, the clean and zero-ablated forwards are
    shared, and every figure (main and baseline) is bit-identical to separate calls: the same batches go through the
    same kernels with the same shapes, and each SAE's sums accumulate in the same order."""
    model = build_tiny(arch, num_layers=3)
    hookpoints = ["resid_pre.0", "mlp_out.1", "resid_post.2"]
    saes = {hp: random_sae(hookpoint=hp, seed=i) for i, hp in enumerate(hookpoints)}
    randoms = {hp: random_like(sae, seed=7) for hp, sae in saes.items()}
    partial_set = {"mlp_out.1": random_sae(hookpoint="mlp_out.1", seed=9)}  # a set may cover some hookpoints only
    gen = torch.Generator().manual_seed(4)
    lengths = (12, 5, 2, 1, 9, 7)
    rows = [torch.randint(3, 512, (n,), generator=gen) for n in lengths]
    keep = [torch.rand(n, generator=gen) > 0.3 for n in lengths]
    kwargs = {"keep_mask": keep, "batch_size": 3, **RUN}
    calls = count_forwards(model)
    shared = evaluate_saes(model, saes, rows, baselines={"random": randoms, "other": partial_set}, **kwargs)
    # 2 batches of 3 rows: a clean forward, then per hookpoint one spliced per SAE there and one zero-ablated
    assert calls[0] == 2 * (1 + (2 + 1) + (3 + 1) + (2 + 1))  # separate calls: 2 * (7 + 7 + 3)
    alone = {
        "main": evaluate_saes(model, saes, rows, **kwargs),
        "random": evaluate_saes(model, randoms, rows, **kwargs),
        "other": evaluate_saes(model, partial_set, rows, **kwargs),
    }
    assert list(shared) == [*RESULT_KEYS, "random", "other"]
    assert {k: v for k, v in shared.items() if k in RESULT_KEYS} == alone["main"]  # the main layout, unchanged
    for name in ("random", "other"):
        assert shared[name] == {"hookpoints": alone[name]["hookpoints"]}, name
    for hp, res in shared["random"]["hookpoints"].items():
        assert res.keys() == shared["hookpoints"][hp].keys()
        assert (
            res["ce_zero"] == shared["hookpoints"][hp]["ce_zero"]
            and res["kl_div"] != shared["hookpoints"][hp]["kl_div"]
        )
    json.dumps(shared, allow_nan=False)


def test_baselines_with_nothing_replaced_or_scored(llama, token_rows, random_sae):
    """Batches with no replaced position (a keep mask of zeros) or no scored token count for the baselines too."""
    sae, other = random_sae(hookpoint="resid_post.1"), random_sae(hookpoint="resid_post.1", seed=3)
    baselines = {"b": {"resid_post.1": other}}
    nothing = torch.zeros(6, 12, dtype=torch.bool)
    r = evaluate_saes(llama, {"resid_post.1": sae}, token_rows, keep_mask=nothing, baselines=baselines, **RUN)
    b = r["b"]["hookpoints"]["resid_post.1"]
    assert b["ce_sae"] == b["ce_zero"] == r["ce_clean"] and b["kl_div"] == 0.0 and b["explained_variance"] is None
    rows = [torch.tensor([5]), torch.tensor([6, 7])]  # the first row's batch: one replaced token, nothing scored
    kwargs = {"batch_size": 1, "skip_first": False, **RUN}
    shared = evaluate_saes(llama, {"resid_post.1": sae}, rows, baselines=baselines, **kwargs)
    alone = evaluate_saes(llama, {"resid_post.1": other}, rows, **kwargs)
    assert shared["b"] == {"hookpoints": alone["hookpoints"]}


def test_bad_baselines_are_one_line_errors(llama, token_rows, identity_sae, random_sae):
    saes = {"resid_post.0": identity_sae()}
    for baselines, match in [
        (
            {"random": {"resid_post.1": random_sae()}},
            r"has an SAE at resid_post.1, which is not among the evaluated hookpoints \(resid_post.0\)",
        ),
        ({"random": {"resid_post.9": identity_sae()}}, "out of range"),
        ({"hookpoints": {"resid_post.0": identity_sae()}}, "baseline set name 'hookpoints' is taken"),
        ({"random": {}}, "must be a non-empty dict"),
        ({"random": {"resid_post.0": "sae.safetensors"}}, "not a qwenscope Sae"),
    ]:
        with pytest.raises(QwenscopeError, match=match) as err:
            evaluate_saes(llama, saes, token_rows, baselines=baselines, **RUN)
        assert "\n" not in str(err.value)
    with pytest.raises(QwenscopeError, match="pass baselines= to evaluate_saes"):
        evaluate_sae(llama, identity_sae(), token_rows, baselines={"random": saes}, **RUN)
