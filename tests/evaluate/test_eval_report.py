"""eval.json / eval.png, the text table, and run_eval (the CLI entry) end to end on a tiny model."""

import argparse
import importlib.util
import json
import math
from dataclasses import fields

import pytest

from qwenscope import QwenscopeError
from qwenscope.cli_args import add_dataclass_args, field_docs, from_args
from qwenscope.evaluate import EvalConfig, evaluate_saes, format_table, run_eval, write_report
from qwenscope.models import load as model_load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_files(tmp_path, llama, token_rows, identity_sae, zero_sae):
    results = evaluate_saes(llama, [identity_sae(), zero_sae()], token_rows, progress=False)
    json_path, png_path = write_report(results, tmp_path / "new" / "folder")
    assert json_path.name == "eval.json" and png_path.name == "eval.png"
    assert json.loads(json_path.read_text()) == results
    assert png_path.read_bytes()[:8] == PNG_MAGIC and png_path.stat().st_size > 5000
    table = format_table(results)
    assert "resid_post.0" in table and "resid_post.1" in table and "recovered" in table


def test_report_with_undefined_values(tmp_path):
    results = {
        "n_tokens": 3,
        "hookpoints": {"a": {"explained_variance": None, "ce_loss_recovered": -0.5, "l0": 2.0, "dead_fraction": 1.0}},
    }
    _, png = write_report(results, tmp_path)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert " - " in format_table(results) + " "
    with pytest.raises(ValueError):  # NaN is not JSON: evaluate_saes gives None instead
        write_report({"hookpoints": {"a": {"l0": math.nan}}}, tmp_path / "nan")
    with pytest.raises(QwenscopeError, match="no hookpoints"):
        write_report({"hookpoints": {}}, tmp_path)


class CharTokenizer:
    """Enough of a tokenizer for chunk_tokens: one id per character, EOS = 2."""

    eos_token_id = 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + ord(c) % 500 for c in text] for text in texts]}


def save_inputs(tmp_path, identity_sae, zero_sae) -> None:
    """sae0 (exact, resid_post.0), sae1 (zero, resid_post.1) and text.txt in ``tmp_path``."""
    identity_sae(hookpoint="resid_post.0").save(tmp_path / "sae0")
    zero_sae(hookpoint="resid_post.1").save(tmp_path / "sae1")
    (tmp_path / "text.txt").write_text("\n\n".join(f"document number {i} with some words" for i in range(20)))


def two_sae_config(tmp_path, **changes) -> EvalConfig:
    """The two saved SAEs (``save_inputs``) on the saved text: 100 tokens in chunks of 16, batches of 3."""
    base = {"sae": f"{tmp_path / 'sae0'},{tmp_path / 'sae1'}", "dataset": str(tmp_path / "text.txt"), "model": "tiny"}
    base |= {"n_tokens": 100, "seq_len": 16, "batch_size": 3, "out": str(tmp_path / "out")}
    return EvalConfig(**base | changes)


def test_run_eval_end_to_end(tmp_path, monkeypatch, llama, identity_sae, zero_sae):
    monkeypatch.setattr(model_load, "load_model", lambda name, device="cpu", dtype=None: (llama, CharTokenizer()))
    save_inputs(tmp_path, identity_sae, zero_sae)
    cfg = two_sae_config(tmp_path)
    results = run_eval(cfg)
    assert results["n_tokens"] >= 100 and results["config"]["seq_len"] == 16 and results["model"] == "tiny"
    hps = results["hookpoints"]
    assert hps["resid_post.0"]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert hps["resid_post.1"]["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == results
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == PNG_MAGIC
    short = run_eval(cfg, texts=["just a few words", "and a few more"])  # texts given directly
    assert short["n_tokens"] == 17 + 15 and short["n_sequences"] == 2  # ran out of text: a chunk and a tail


def test_run_eval_core_and_random_keeps_the_layout(tmp_path, monkeypatch, llama, identity_sae, zero_sae):
    """core,random: one pass for the trained and the random-weight SAEs; eval.json keeps its keys, and the random
    results equal what evaluating the random-weight SAEs on their own gives (bit for bit: the same forwards)."""
    from qwenscope.evaluate.cli import _core
    from qwenscope.models.parts import load_model_and_saes
    from qwenscope.sae.random import random_like

    monkeypatch.setattr(model_load, "load_model", lambda name, device="cpu", dtype=None: (llama, CharTokenizer()))
    save_inputs(tmp_path, identity_sae, zero_sae)
    cfg = two_sae_config(tmp_path, suite="core,random")
    results = run_eval(cfg)
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved == results
    core_keys = [
        "n_sequences",
        "n_tokens",
        "skip_first",
        "dense_threshold",
        "ce_clean",
        "explained_variance_definition",
    ]
    assert list(saved) == ["model", "dataset", "config", *core_keys, "hookpoints", "random"]
    assert list(saved["random"]) == ["hookpoints"]
    assert list(saved["random"]["hookpoints"]) == list(saved["hookpoints"]) == ["resid_post.0", "resid_post.1"]
    for hp, res in saved["random"]["hookpoints"].items():
        assert list(res) == list(saved["hookpoints"][hp])
    randoms = {hp: random_like(sae, seed=cfg.seed) for hp, sae in load_model_and_saes("tiny", cfg.sae).saes.items()}
    separate = _core(cfg, llama, CharTokenizer(), randoms, None)  # the random suite's former second pass
    assert saved["random"]["hookpoints"] == separate["hookpoints"]


def test_config_is_a_cli_command():
    docs = field_docs(EvalConfig)
    assert all(docs.get(f.name) for f in fields(EvalConfig))  # every field has its --help
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, EvalConfig)
    assert "(60% train" in parser.format_help()  # --help (a % in a field's docstring is not a format directive)
    args = parser.parse_args(["--sae", "s", "--dataset", "d.txt", "--no-skip-first", "--n-tokens", "10"])
    cfg = from_args(EvalConfig, args)
    assert cfg.skip_first is False and cfg.n_tokens == 10 and cfg.hookpoints == "" and cfg.k is None
    for bad, match in [
        ({"n_tokens": 0}, "n-tokens"),
        ({"seq_len": 1}, "seq-len"),
        ({"sae": " , "}, "sae"),
        ({"dense_threshold": 1.5}, "dense-threshold"),
    ]:
        with pytest.raises(QwenscopeError, match=match):
            EvalConfig(**{"sae": "s", "dataset": "d", **bad})


def test_run_eval_suites_probing_and_random(tmp_path, monkeypatch, llama, identity_sae, zero_sae):
    pytest.importorskip("zstandard")
    if importlib.util.find_spec("sae_probes") is None:  # a data package: found, not imported
        pytest.skip("could not import 'sae_probes': not installed")
    from tiny_models import make_byte_tokenizer

    monkeypatch.setattr(model_load, "load_model", lambda name, device="cpu", dtype=None: (llama, make_byte_tokenizer()))
    save_inputs(tmp_path, identity_sae, zero_sae)
    cfg = EvalConfig(
        sae=f"{tmp_path / 'sae0'},{tmp_path / 'sae1'}",
        dataset=str(tmp_path / "text.txt"),
        model="tiny",
        n_tokens=64,
        seq_len=16,
        out=str(tmp_path / "out"),
        suite="core,probing,random",
        probe_tasks="glue_sst2,5_hist_fig_ismale",
        probe_train=12,
        probe_test=8,
        probe_k="1,3",
    )
    results = run_eval(cfg)
    probing = results["probing"]
    assert probing["tasks"] == ["92_glue_sst2", "5_hist_fig_ismale"] and probing["ks"] == [1, 3]
    summary = probing["hookpoints"]["resid_post.0"]["summary"]
    assert set(summary) == {f"{m}@{k}" for m in ("sae", "random", "resid_topk") for k in (1, 3)} | {"resid_full"}
    assert all(0 <= s["accuracy_ci95"][0] <= s["accuracy"] <= s["accuracy_ci95"][1] <= 1 for s in summary.values())
    # the random baseline of the exact SAE reconstructs worse than the exact SAE itself
    random_ev = results["random"]["hookpoints"]["resid_post.0"]["explained_variance"]
    assert results["hookpoints"]["resid_post.0"]["explained_variance"] == 1.0 and random_ev < 1.0
    assert "mean-centred" in results["explained_variance_definition"]
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == results
    for name in ("eval.png", "eval_probing.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    only = run_eval(
        EvalConfig(
            sae=cfg.sae,
            model="tiny",
            out=str(tmp_path / "p"),
            suite="probing",
            probe_tasks="glue_sst2",
            probe_train=8,
            probe_test=4,
            probe_k="2",
        )
    )
    assert "hookpoints" not in only and "random@2" not in only["probing"]["hookpoints"]["resid_post.1"]["summary"]
    assert not (tmp_path / "p" / "eval.png").exists() and (tmp_path / "p" / "eval_probing.png").exists()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"suite": "core,absorb"}, "unknown suite 'absorb'; choose from core, probing, absorption, autointerp, random"),
        ({"suite": "random"}, "runs nothing"),
        ({"dataset": ""}, "the core suite evaluates on text: pass --dataset"),
        ({"suite": "probing", "probe_pooling": "max"}, "--probe-pooling is last or mean"),
        ({"suite": "probing", "probe_k": "1,x"}, "--probe-k takes positive integers"),
        ({"suite": "probing", "probe_k": "0"}, "--probe-k takes positive integers"),
        ({"suite": "autointerp", "dataset": ""}, "the autointerp suite evaluates on text: pass --dataset"),
        ({"suite": "absorption", "absorption_words": 10}, "--absorption-words must be at least 50"),
        ({"suite": "autointerp", "interp_examples": 1}, "--interp-examples at least 2"),
        ({"suite": "autointerp", "interp_scoring": "votes"}, "--interp-scoring is auto, list or logprob, got 'votes'"),
        ({"explainer": "http://h/v1", "interp_scoring": "logprob"}, "logprob needs a local scorer; pass --scorer"),
    ],
)
def test_suite_options_are_checked_in_one_line(bad, match):
    with pytest.raises(QwenscopeError, match=match) as err:
        EvalConfig(**{"sae": "s", "dataset": "d", **bad})
    assert "\n" not in str(err.value)


def autointerp_config(tmp_path, monkeypatch, llama, identity_sae, zero_sae, **changes) -> EvalConfig:
    """The autointerp suite on the saved SAE at resid_post.1, the tiny Llama with the byte tokenizer as the model."""
    from tiny_models import make_byte_tokenizer

    monkeypatch.setattr(model_load, "load_model", lambda name, device="cpu", dtype=None: (llama, make_byte_tokenizer()))
    save_inputs(tmp_path, identity_sae, zero_sae)
    base = {"sae": str(tmp_path / "sae1"), "dataset": str(tmp_path / "text.txt"), "model": "tiny"}
    return EvalConfig(**base | {"out": str(tmp_path / "out"), "suite": "autointerp"} | changes)


def test_run_eval_autointerp_suite_with_the_local_explainer(tmp_path, monkeypatch, llama, identity_sae, zero_sae):
    cfg = autointerp_config(tmp_path, monkeypatch, llama, identity_sae, zero_sae, suite="autointerp,random")
    cfg.interp_features, cfg.interp_examples = 2, 3
    results = run_eval(cfg)
    block = results["autointerp"]["hookpoints"]["resid_post.1"]
    assert len(block["features"]) == 2 and "random" in block
    for feature in block["features"].values():  # a local scorer answers by p(yes): every example is scored
        assert (feature["detection"]["n"], feature["detection"]["failed"]) == (6, 0)
        assert 0 <= feature["detection"]["auroc"] <= 1 and 0 <= feature["fuzzing_null"]["auroc"] <= 1
    assert (
        results["autointerp"]["explainer"] == results["autointerp"]["scorer"] == "tiny (the evaluated model, locally)"
    )
    assert results["autointerp"]["scoring"] == "logprob"
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == results


def test_an_explainer_endpoint_that_does_not_answer_is_one_line_naming_the_fallback(
    tmp_path, monkeypatch, llama, identity_sae, zero_sae
):
    # port 9: nothing listens
    cfg = autointerp_config(tmp_path, monkeypatch, llama, identity_sae, zero_sae, explainer="http://127.0.0.1:9/v1")
    with pytest.raises(QwenscopeError) as err:
        run_eval(cfg)
    msg = str(err.value)
    assert "explainer endpoint http://127.0.0.1:9/v1" in msg and "unreachable" in msg and "\n" not in msg
    assert "pass a local model (--explainer <name or folder>) or none (the evaluated model)" in msg
    assert not (tmp_path / "out" / "eval.json").exists()


def test_the_autointerp_table_shows_auroc_for_logprob_scoring_and_balanced_accuracy_for_lists():
    from qwenscope.evaluate.report import format_autointerp

    summary = {f"{n}_{m}": 0.5 for n in ("detection", "detection_null", "fuzzing", "fuzzing_null") for m in ("f1",)}
    summary |= {"detection_auroc": 0.812, "detection_null_auroc": 0.5, "fuzzing_auroc": 0.61, "fuzzing_null_auroc": 0.5}
    summary |= {"detection_balanced_accuracy": 0.7, "detection_null_balanced_accuracy": 0.5}
    summary |= {"fuzzing_balanced_accuracy": 0.6, "fuzzing_null_balanced_accuracy": 0.5}
    block = {"explainer": "e", "scorer": "s", "hookpoints": {"resid_post.1": {"summary": summary}}}
    by_logprob = format_autointerp(block | {"scoring": "logprob"})
    assert "auroc, mean over features" in by_logprob and "0.812" in by_logprob and "0.700" not in by_logprob
    by_list = format_autointerp(block | {"scoring": "list"})
    assert "balanced accuracy, mean over features" in by_list and "0.700" in by_list and "0.812" not in by_list
