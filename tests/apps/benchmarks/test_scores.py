"""Per-item scores: reading CSV / lm-eval files, and the answer log-likelihood against a plain full-logits
computation (every architecture, batched and item by item, with and without an SAE spliced in)."""

import json
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_HIDDEN, build_tiny, make_byte_tokenizer

from qwenscope import QwenscopeError, Sae, SaeConfig, splice
from qwenscope.apps.benchmarks.scores import (
    ScoreMatrix,
    answer_loglik,
    encode_items,
    join_answer,
    load_scores,
)

Item = namedtuple("Item", "id text answer")

IDS = [f"q/{i}" for i in range(6)]
SCORES = np.array([[1, 0, 1, 1, 0, 0], [0.5, 0.25, 1, 0, 0, 1]], dtype=float)


# ---------------------------------------------------------------- reading score files
def _write_wide(path, ids, models, scores, id_col="id"):
    lines = [",".join([id_col, *models])]
    lines += [",".join([i, *(repr(float(v)) for v in scores[:, j])]) for j, i in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wide_and_long_csv_give_the_benchmark_order(tmp_path):
    perm = [3, 0, 5, 1, 4, 2]  # the file lists items in another order than the benchmark
    wide = _write_wide(tmp_path / "wide.csv", [IDS[j] for j in perm], ["a", "b"], SCORES[:, perm])
    long = tmp_path / "long.csv"
    rows = ["score,model,id"] + [f"{SCORES[m, j]},{name},{IDS[j]}" for m, name in enumerate("ab") for j in perm]
    long.write_text("\n".join(rows) + "\n")
    for path in (wide, long):
        got = load_scores(path, IDS)
        assert got.models == ["a", "b"] and got.item_ids == IDS
        np.testing.assert_array_equal(got.scores, SCORES)


def test_wide_csv_first_column_is_the_id_without_an_id_column(tmp_path):
    path = _write_wide(tmp_path / "s.csv", IDS, ["m1", "m2"], SCORES, id_col="task_id")
    np.testing.assert_array_equal(load_scores(path, IDS).scores, SCORES)


def test_to_csv_round_trips_exactly(tmp_path):
    scores = np.random.default_rng(0).normal(size=(3, 6))
    matrix = ScoreMatrix(["x", "y", "z"], IDS, scores)
    back = load_scores(matrix.to_csv(tmp_path / "out" / "m.csv"), IDS)
    assert back.models == ["x", "y", "z"]
    np.testing.assert_array_equal(back.scores, scores)


def _lm_eval_file(folder, docs, metric_values, filters=("strict-match",), listed=True, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples_gsm8k_2025-01-01T00-00-00.jsonl"
    with path.open("w") as handle:
        for f_index, flt in enumerate(filters):
            for doc in docs:
                record = {
                    "doc_id": doc,
                    "doc": {"question": f"q{doc}"},
                    "target": "1",
                    "arguments": {},
                    "resps": [["x"]],
                    "filtered_resps": ["x"],
                    "filter": flt,
                    "doc_hash": "h",
                    "exact_match": float(metric_values[doc] if f_index == 0 else 1 - metric_values[doc]),
                    "acc": 0.5,
                    **(extra or {}),
                }
                if listed:
                    record["metrics"] = ["exact_match"]
                handle.write(json.dumps(record) + "\n")
    return path


def test_lm_eval_samples_one_file_per_model(tmp_path):
    a = _lm_eval_file(tmp_path / "org__model-a", [5, 4, 3, 2, 1, 0], SCORES[0], filters=("strict", "flexible"))
    b = _lm_eval_file(tmp_path / "org__model-b", range(6), SCORES[1] > 0.3)
    got = load_scores([a, b], IDS)
    assert got.models == ["org__model-a", "org__model-b"]  # the folder lm-eval wrote each file in
    np.testing.assert_array_equal(got.scores, [SCORES[0], (SCORES[1] > 0.3).astype(float)])
    flexible = load_scores(a, IDS, filter_name="flexible")  # the second filter's records: 1 - the first's
    np.testing.assert_array_equal(flexible.scores[0], 1 - SCORES[0])
    np.testing.assert_array_equal(load_scores(a, IDS, metric="acc").scores[0], np.full(6, 0.5))


def test_lm_eval_without_metrics_list_takes_the_first_numeric_field(tmp_path):
    path = _lm_eval_file(tmp_path / "m", range(6), SCORES[0], listed=False)
    np.testing.assert_array_equal(load_scores(path, IDS).scores[0], SCORES[0])  # exact_match precedes acc


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: _lm_eval_file(d / "m", range(3), SCORES[0]), r"3 items have no score \(e.g. 'q/3', 'q/4'\)"),
        (lambda d: _lm_eval_file(d / "m", range(8), np.zeros(8)), r"2 ids are not in the benchmark \(e.g. 'doc_id 6'"),
        (
            lambda d: _write_wide(d / "w.csv", ["q/0", "q/1", "x", "y", "z"], ["m"], np.zeros((1, 5))),
            r"benchmark's 6 items: 4 items have no score \(e.g. 'q/2', 'q/3'\); 3 ids are not in the benchmark "
            r"\(e.g. 'x', 'y'\)",
        ),
    ],
)
def test_ids_that_do_not_match_the_benchmark(tmp_path, make, match):
    with pytest.raises(QwenscopeError, match=match) as error:
        load_scores(make(tmp_path), IDS)
    assert "\n" not in str(error.value)


def test_bad_score_files(tmp_path):
    path = _lm_eval_file(tmp_path / "m", range(6), SCORES[0])
    with pytest.raises(QwenscopeError, match="no metric 'bleu'; its records have exact_match, acc"):
        load_scores(path, IDS, metric="bleu")
    with pytest.raises(QwenscopeError, match="no filter 'nope'"):
        load_scores(path, IDS, filter_name="nope")
    with pytest.raises(QwenscopeError, match="model 'm' appears twice"):
        load_scores([path, path], IDS)
    bad = _write_wide(tmp_path / "bad.csv", IDS, ["m"], np.zeros((1, 6)))
    bad.write_text(bad.read_text().replace("0.0", "oops", 1))
    with pytest.raises(QwenscopeError, match=r"bad.csv \(model 'm', item 'q/0'\): score 'oops' is not a number"):
        load_scores(bad, IDS)
    with pytest.raises(QwenscopeError, match="does not exist"):
        load_scores(tmp_path / "missing.csv", IDS)
    (tmp_path / "plain.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(QwenscopeError, match="needs? a 'doc_id' field"):
        load_scores(tmp_path / "plain.jsonl", IDS)


def test_score_matrix_validation_and_select():
    matrix = ScoreMatrix(["a", "b"], IDS, SCORES)
    sub = matrix.select(["q/4", "q/1"])
    np.testing.assert_array_equal(sub.scores, SCORES[:, [4, 1]])
    with pytest.raises(QwenscopeError, match=r"1 of the 2 items have no scores \(e.g. 'nope'\)"):
        matrix.select(["q/1", "nope"])
    with pytest.raises(QwenscopeError, match=r"shape \(2, 5\), expected \(models, items\) = \(2, 6\)"):
        ScoreMatrix(["a", "b"], IDS, SCORES[:, :5])
    holed = SCORES.copy()
    holed[1, 2] = np.nan
    with pytest.raises(QwenscopeError, match="'b' on item 'q/2' is nan"):
        ScoreMatrix(["a", "b"], IDS, holed)
    both = ScoreMatrix.stack([matrix, ScoreMatrix(["c"], IDS, SCORES[:1])])
    assert both.models == ["a", "b", "c"] and both.scores.shape == (3, 6)


# ---------------------------------------------------------------- answer log-likelihood
def _items(n=5, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "x", "42", "yes"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=rng.integers(1, 5))) + "? Answer:"
        answer = " ".join(rng.choice(words, size=rng.integers(1, 4)))
        out.append(Item(f"t/{i}", text, answer))
    return out


def _reference(model, tokenizer, items, sae=None, skip_first=True):
    """Item by item: the full logits of the plain model (or with the SAE spliced in by hand)."""
    out = []
    for item in items:  # the byte tokenizer never merges across the boundary: context tokens = tokens of the text
        ctx = tokenizer(item.text)["input_ids"]
        whole = torch.tensor([tokenizer(item.text + " " + item.answer)["input_ids"]])

        def edit(h, sae=sae):
            x = h.clone()
            x[:, int(skip_first) :] = sae(h[:, int(skip_first) :]).sae_out
            return x

        with torch.no_grad():
            if sae is None:
                logits = model(input_ids=whole).logits[0]
            else:
                with splice(model, sae.cfg.hookpoint, edit):
                    logits = model(input_ids=whole).logits[0]
        logp = F.log_softmax(logits.double(), -1)
        targets = whole[0, len(ctx) :]
        out.append(logp[len(ctx) - 1 : -1].gather(-1, targets[:, None]).mean().item())
    return np.array(out)


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def test_answer_loglik_equals_full_logits_batched_and_one_by_one(tiny, tokenizer):
    arch, model, _ = tiny
    items = _items()
    want = _reference(model, tokenizer, items)
    batched = answer_loglik(model, tokenizer, items, batch_size=3)
    single = answer_loglik(model, tokenizer, items, batch_size=1)
    np.testing.assert_allclose(batched, want, rtol=0, atol=2e-5, err_msg=arch)
    np.testing.assert_allclose(batched, single, rtol=0, atol=2e-5, err_msg=arch)
    assert (batched < 0).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_answer_loglik_with_an_sae_spliced_in(arch, tokenizer):
    model = build_tiny(arch, num_layers=2)
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=128, k=8, hookpoint="resid_post.0"))
    items = _items(seed=1)
    clean = answer_loglik(model, tokenizer, items, batch_size=2)
    spliced = answer_loglik(model, tokenizer, items, batch_size=2, sae=sae)
    np.testing.assert_allclose(spliced, _reference(model, tokenizer, items, sae), rtol=0, atol=2e-5)
    np.testing.assert_allclose(spliced, answer_loglik(model, tokenizer, items, batch_size=1, sae=sae), atol=2e-5)
    assert np.abs(spliced - clean).max() > 1e-3  # the SAE's reconstruction is another checkpoint
    all_positions = answer_loglik(model, tokenizer, items, batch_size=2, sae=sae, skip_first=False)
    np.testing.assert_allclose(all_positions, _reference(model, tokenizer, items, sae, skip_first=False), atol=2e-5)


def test_answer_loglik_applies_the_final_logit_softcap(tokenizer):
    model = build_tiny("gemma3", num_layers=2)
    model.config.final_logit_softcapping = 0.02  # tiny: capped logits are near-uniform, unlike the uncapped ones
    items = _items(3)
    capped = answer_loglik(model, tokenizer, items, batch_size=2)
    np.testing.assert_allclose(capped, _reference(model, tokenizer, items), rtol=0, atol=2e-5)
    model.config.final_logit_softcapping = None
    assert np.abs(capped - answer_loglik(model, tokenizer, items, batch_size=2)).max() > 1e-2


def test_join_answer_and_the_scored_tokens(tokenizer):
    assert join_answer("Answer:", "42") == ("Answer:", " 42")
    assert join_answer("Answer: ", "42") == ("Answer:", " 42")  # trailing space moves onto the answer
    assert join_answer('    """\n', "    return x") == ('    """', "\n    return x")
    assert join_answer("Q", " A", delimiter="\n") == ("Q", " A")
    [(ids, n_ctx)] = encode_items(tokenizer, [Item("a", "Answer:", "42")])
    assert len(ids) - n_ctx == 3 and tokenizer.decode(ids[n_ctx:]) == " 42"


def test_answer_loglik_bad_input(tokenizer):
    model = build_tiny("llama", num_layers=2)
    with pytest.raises(QwenscopeError, match="item 'x' has no reference answer"):
        answer_loglik(model, tokenizer, [Item("x", "text", None)])
    with pytest.raises(QwenscopeError, match="benchmark is empty"):
        answer_loglik(model, tokenizer, [])
    wrong = Sae(SaeConfig(d_in=2 * TINY_HIDDEN, d_sae=64, k=4, hookpoint="resid_post.0"))
    with pytest.raises(QwenscopeError) as error:
        answer_loglik(model, tokenizer, _items(2), sae=wrong)
    assert "\n" not in str(error.value)
    with pytest.raises(QwenscopeError, match="batch_size must be at least 1"):
        answer_loglik(model, tokenizer, _items(2), batch_size=0)
