"""SASFT on a tiny Qwen3: λ = 0 is plain SFTTrainer, the penalty's gradient is the hand-written one, bad data gets one
line, and the CLI trains, saves and resumes."""

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tiny_models import build_tiny, make_byte_tokenizer
from trl import SFTConfig, SFTTrainer

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.posttrain.language import LanguageFeatures
from qwenscope.apps.posttrain.sasft import LANG_KEY, SasftConfig, SasftTrainer
from qwenscope.cli import main

D_SAE = 32
ROWS = [
    {"prompt": "Pregunta: ¿qué tal?", "completion": " Muy bien, gracias por preguntar.", "lang": "es"},
    {"prompt": "Question: how are you?", "completion": " Very well, thanks for asking.", "lang": "en"},
    {"prompt": "Domanda: come va?", "completion": " Molto bene, grazie di aver chiesto.", "lang": "it"},
    {"prompt": "Pregunta: ¿y tú?", "completion": " Yo también estoy bien, well fine.", "lang": "es"},
] * 2


def tiny_model(num_layers=2):
    """A tiny random Qwen3 (vocab 512) and a byte tokenizer: a training step takes milliseconds."""
    return build_tiny("qwen3", num_layers=num_layers).train(), make_byte_tokenizer()


def tiny_sae(hookpoint="resid_post.0", d_in=64, seed=3):
    torch.manual_seed(seed)
    return Sae(SaeConfig(d_in=d_in, d_sae=D_SAE, k=4, hookpoint=hookpoint))


def features(ids=(1, 5, 9), hookpoint="resid_post.0", lang="en"):
    """English features with hand-set thresholds: Spanish and Italian samples are held to different alphas."""
    nu = torch.linspace(-1, 1, D_SAE)
    # the tiny model's pre-activations are ~ +-0.02: these thresholds leave some tokens under and some over
    alpha = {"en": torch.full((D_SAE,), -1.0), "es": torch.zeros(D_SAE), "it": torch.full((D_SAE,), 0.008)}
    return LanguageFeatures(hookpoint, lang, list(ids), nu, alpha)


def sft_args(tmp_path, steps=3, **kw):
    return SFTConfig(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        **kw,
    )


def sasft_trainer(tmp_path, lam, rows=ROWS, model=None, sae=None, feats=None, positions="response", **kw):
    model = model if model is not None else tiny_model()[0]
    tokenizer = make_byte_tokenizer()
    return SasftTrainer(
        model,
        sft_args(tmp_path, **kw),
        sae=sae or tiny_sae(),
        sasft=SasftConfig(feats or features(), lam=lam, positions=positions),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def test_lambda_zero_gives_the_weights_of_plain_sft(tmp_path):
    """Bit-identical: same seed, data and steps; the hook, the collator and the 0 * penalty change nothing."""
    model, tokenizer = tiny_model()
    plain = SFTTrainer(
        model, sft_args(tmp_path / "plain"), train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer
    )
    plain.train()
    zero = sasft_trainer(tmp_path / "zero", lam=0.0)
    zero.train()
    pushed = sasft_trainer(tmp_path / "pushed", lam=100.0)
    pushed.train()
    a, b, c = plain.model.state_dict(), zero.model.state_dict(), pushed.model.state_dict()
    # the same forwards of the same batches, and adding 0 * a finite gradient is exact: same kernels, same shapes:
    # bit-identical
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.down_proj.weight"], c["model.layers.0.mlp.down_proj.weight"])
    logged = [e["sasft_penalty"] for e in zero.state.log_history if "sasft_penalty" in e]
    assert len(logged) == 3 and max(logged) > 0  # the penalty was computed (and logged) even at λ = 0


def hand_penalty(model, sae, feats, batch, rows, positions="response"):
    """The SASFT term from ``output_hidden_states`` and ``sae.pre_acts``: mean over the response tokens of the non-
    English rows (``predicting``: the positions just before them) of the sum over features of
    ReLU(f_s - alpha_lang[s])."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    layer = int(feats.hookpoint.split(".")[1])
    pre = sae.pre_acts(out.hidden_states[layer + 1])[..., feats.ids]  # resid_post.L: (batch, seq, n)
    terms = []
    for b, row in enumerate(rows):
        if row["lang"] == feats.lang:
            continue
        response = batch["labels"][b] != -100
        if positions == "predicting":
            first, last = response.nonzero()[[0, -1], 0].tolist()
            assert response[first : last + 1].all()  # one response span: shift it one to the left
            response = torch.zeros_like(response)
            response[first - 1 : last] = True
        terms.append(F.relu(pre[b, response] - feats.alpha[row["lang"]][feats.ids]).sum(-1))
    return torch.cat(terms).mean()


def grads(model, loss_fn):
    """The gradient of ``loss_fn()`` for every parameter it reaches."""
    model.zero_grad()
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("positions", ["response", "predicting"])
def test_penalty_gradient_equals_hand_written_autograd(tmp_path, positions):
    model = tiny_model()[0]
    sae, feats = tiny_sae(), features()
    with_penalty = sasft_trainer(tmp_path / "a", lam=1.0, model=model, sae=sae, feats=feats, positions=positions)
    without = sasft_trainer(tmp_path / "b", lam=0.0, model=model, sae=sae, feats=feats)
    rows = [with_penalty.train_dataset[i] for i in range(4)]
    batch = with_penalty.data_collator(rows)
    assert batch[LANG_KEY].tolist() == [0, -1, 1, 0]  # es, en (not penalised), it, es

    g1 = grads(model, lambda: with_penalty.compute_loss(model, dict(batch)))
    g0 = grads(model, lambda: without.compute_loss(model, dict(batch)))
    expected = hand_penalty(model, sae, feats, batch, rows, positions)
    assert expected > 0
    g = grads(model, lambda: hand_penalty(model, sae, feats, batch, rows, positions))
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
    ]:
        assert g[name].abs().max() > 0
        torch.testing.assert_close(g1[name] - g0[name], g[name], atol=1e-6, rtol=1e-4)
    later = "model.layers.1.mlp.down_proj.weight"  # after the hookpoint: the penalty does not reach it
    assert later not in g and torch.equal(g1[later], g0[later])
    assert all(p.grad is None for p in sae.parameters())  # the SAE stays frozen


def test_two_hookpoints_add_their_penalties_and_log_each(tmp_path):
    """Feature sets at resid_post.0 and resid_post.1, each with its SAE: the gradient is the hand-written sum of the
    two terms, layer 1 now gets a penalty gradient, and each hookpoint's penalty is logged. (Three layers: the last
    one's hidden state in ``output_hidden_states`` is after the final norm.)"""
    model, tokenizer = tiny_model(num_layers=3)
    saes = [tiny_sae(), tiny_sae("resid_post.1", seed=4)]
    sets = [features(), features(ids=(2, 7), hookpoint="resid_post.1")]

    def trainer(lam, path, steps=3):
        return SasftTrainer(
            model,
            sft_args(tmp_path / path, steps=steps),
            sae=saes,
            sasft=SasftConfig(sets, lam=lam),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )

    both, none = trainer(1.0, "a"), trainer(0.0, "b")
    rows = [both.train_dataset[i] for i in range(4)]
    batch = both.data_collator(rows)

    g1 = grads(model, lambda: both.compute_loss(model, dict(batch)))
    g0 = grads(model, lambda: none.compute_loss(model, dict(batch)))
    terms = [hand_penalty(model, sae, f, batch, rows) for sae, f in zip(saes, sets)]
    assert min(terms) > 0
    g = grads(model, lambda: sum(hand_penalty(model, sae, f, batch, rows) for sae, f in zip(saes, sets)))
    for name in ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]:
        assert g[name].abs().max() > 0
        torch.testing.assert_close(g1[name] - g0[name], g[name], atol=1e-6, rtol=1e-4)
    later = "model.layers.2.mlp.down_proj.weight"
    assert later not in g and torch.equal(g1[later], g0[later])
    run = trainer(1.0, "c", steps=2)
    run.train()
    logged = next(e for e in run.state.log_history if "sasft_penalty" in e)
    torch.testing.assert_close(
        logged["sasft_penalty"], logged["sasft_penalty/resid_post.0"] + logged["sasft_penalty/resid_post.1"]
    )
    assert logged["sasft_penalty/resid_post.1"] > 0


def test_bad_data_and_saes_get_one_line(tmp_path):
    english_only = [r for r in ROWS if r["lang"] == "en"]
    no_column = [{k: v for k, v in r.items() if k != "lang"} for r in ROWS]
    german = ROWS + [{**ROWS[0], "lang": "de"}]
    cases = [
        (lambda: sasft_trainer(tmp_path, 1.0, rows=english_only), "no sample in a language other than 'en'"),
        (lambda: sasft_trainer(tmp_path, 1.0, rows=no_column), "no 'lang' column"),
        (lambda: sasft_trainer(tmp_path, 1.0, rows=german), "no alpha for language 'de'"),
        (lambda: sasft_trainer(tmp_path, 1.0, sae=tiny_sae(d_in=32)), "belongs to another model"),
        (lambda: sasft_trainer(tmp_path, 1.0, sae=tiny_sae("resid_post.1")), "another layer"),
        (lambda: sasft_trainer(tmp_path, 1.0, feats=features(ids=(1, D_SAE))), "beyond the SAE's width"),
        (lambda: sasft_trainer(tmp_path, 1.0, packing=True, max_length=64), "packing=False"),
        (lambda: SasftConfig(features(), lam=-1.0), "lam"),
        (lambda: SasftConfig(features(), positions="prompt"), "choose one of response, predicting"),
        (lambda: SasftConfig([features(), features(lang="es", hookpoint="resid_post.1")]), "different languages"),
        (lambda: SasftConfig([features(), features(ids=(2,))]), "two feature sets at resid_post.0"),
        (lambda: SasftConfig([]), "empty list"),
        (
            lambda: SasftTrainer(
                tiny_model()[0],
                sft_args(tmp_path),
                sae=tiny_sae(),
                sasft=SasftConfig([features(), features(hookpoint="resid_post.1")]),
                train_dataset=Dataset.from_list(ROWS),
            ),
            "one SAE per feature set",
        ),
        (
            lambda: sasft_trainer(
                tmp_path, 1.0, sae=[tiny_sae(), tiny_sae()], feats=[features(), features(hookpoint="resid_post.1")]
            ),
            "another layer",
        ),
    ]
    for call, match in cases:
        with pytest.raises(QwenscopeError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_trains_saves_and_resumes(tmp_path, capsys):
    model, tokenizer = tiny_model()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tiny_sae().save(tmp_path / "sae")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    base = [
        "sasft",
        "--model",
        str(model_dir),
        "--sae",
        str(tmp_path / "sae"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--unwanted",
        "en",
        "--lam",
        "0.5",
        "--top",
        "3",
        "--batch-size",
        "2",
        "--save-steps",
        "2",
    ]
    assert main([*base, "--steps", "2"]) == 0
    first = json.loads((out / "sasft.json").read_text())
    assert first["resumed_from"] is None and len(first["features"][0]["ids"]) == 3
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "config.json").is_file()
    feats = LanguageFeatures.load(out / "language_features.json")  # measured on the data's responses
    assert set(feats.alpha) == {"en", "es", "it"} and feats.ids == first["features"][0]["ids"]
    assert main([*base, "--steps", "3"]) == 0  # the same command, more steps: resumes from checkpoint-2
    second = json.loads((out / "sasft.json").read_text())
    assert second["resumed_from"].endswith("checkpoint-2") and [e["step"] for e in second["log"]][-1] == 3
    assert any("sasft_penalty" in e for e in second["log"])
    capsys.readouterr()
    assert (
        main(
            [
                "sasft",
                "--model",
                str(model_dir),
                "--sae",
                str(tmp_path / "sae"),
                "--data",
                str(data),
                "--out",
                str(out),
                "--unwanted",
                "de",
            ]
        )
        == 2
    )
    assert "no 'de' texts" in capsys.readouterr().err
    assert main([*base, "--positions", "prompt"]) == 2
    assert "--positions 'prompt': choose one of response, predicting" in capsys.readouterr().err


def test_cli_penalises_several_hookpoints(tmp_path, capsys):
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_sae().save(tmp_path / "sae0")
    tiny_sae("resid_post.1", seed=4).save(tmp_path / "sae1")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    base = [
        "sasft",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--lam",
        "0.5",
        "--top",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--hookpoint",
        "resid_post.0,resid_post.1",
    ]
    assert main([*base, "--sae", f"{tmp_path / 'sae0'},{tmp_path / 'sae1'}"]) == 0
    summary = json.loads((out / "sasft.json").read_text())
    assert [f["hookpoint"] for f in summary["features"]] == ["resid_post.0", "resid_post.1"]
    for hookpoint in ("resid_post.0", "resid_post.1"):
        assert LanguageFeatures.load(out / f"language_features.{hookpoint}.json").hookpoint == hookpoint
    assert any(e.get("sasft_penalty/resid_post.1", 0) > 0 for e in summary["log"])
    capsys.readouterr()
    for extra, message in [
        (["--sae", str(tmp_path / "sae0")], "trained at resid_post.0, not at resid_post.1"),
        (["--sae", "a,b,c"], "--sae names 3 SAEs for 2 hookpoint(s)"),
        (["--sae", "a,b", "--feature-ids", "1,2"], "--feature-ids picks the features of one"),
        (["--sae", "a,b", "--features", "f.json"], "--features names 1 file(s) for 2"),
    ]:
        assert main([*base, "--out", str(tmp_path / "bad"), *extra]) == 2
        assert message in capsys.readouterr().err


def test_lora_trains_the_adapter_only_and_still_reads_the_hookpoint(tmp_path):
    from peft import LoraConfig

    model, tokenizer = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SasftTrainer(
        model,
        sft_args(tmp_path, steps=2),
        sae=tiny_sae(),
        sasft=SasftConfig(features(), lam=1.0),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainer.train()
    assert type(trainer.model).__name__.startswith("Peft")
    assert next(e["sasft_penalty"] for e in trainer.state.log_history if "sasft_penalty" in e) > 0
    merged = trainer.model.get_base_model()
    assert torch.equal(
        merged.model.layers[0].mlp.down_proj.base_layer.weight, before["model.layers.0.mlp.down_proj.weight"]
    )
    assert any(("lora_B" in n) and p.abs().max() > 0 for n, p in trainer.model.named_parameters())


def test_the_penalty_is_float32_for_a_float16_sae_and_residuals_beyond_its_range():
    """gemma3's residual stream holds values beyond float16's 65504: a float16 SAE (as shipped) must not turn them into
    an infinite penalty (the first H200 run logged one)."""
    from qwenscope import Sae, SaeConfig
    from qwenscope.apps.posttrain.sasft import sasft_penalty

    torch.manual_seed(0)
    sae32 = Sae(SaeConfig(d_in=8, d_sae=16, k=4))
    sae16 = Sae(SaeConfig(d_in=8, d_sae=16, k=4)).half()
    sae16.load_state_dict({k: v.half() for k, v in sae32.state_dict().items()})
    x = torch.randn(2, 3, 8) * 7e4
    ids, alpha, mask = torch.tensor([1, 5, 9]), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    p16, _ = sasft_penalty(x.clone().requires_grad_(), sae16, ids, alpha, mask)
    ref = Sae(SaeConfig(d_in=8, d_sae=16, k=4))
    ref.load_state_dict({k: v.half().float() for k, v in sae32.state_dict().items()})  # the same rounded weights
    p32, _ = sasft_penalty(x, ref, ids, alpha, mask)
    assert torch.isfinite(p16) and p16 > 0
    # fp16 SAE upcast inside vs the fp32 one of the same rounded weights: other kernels, fp32 ~1e-6
    torch.testing.assert_close(p16, p32, rtol=1e-5, atol=0)


def test_read_rows_takes_jsonl_or_a_json_list_and_names_a_bad_line(tmp_path):
    from qwenscope.apps.posttrain.cli import read_rows

    rows = [{"prompt": "a", "completion": "b", "lang": "es"}, {"prompt": "c", "completion": "d", "lang": "en"}]
    lines, listed = tmp_path / "rows.jsonl", tmp_path / "rows.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    listed.write_text("  \n" + json.dumps(rows))
    assert read_rows(str(lines)) == rows and read_rows(str(listed)) == rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(QwenscopeError, match=r"bad.jsonl, line 2: not JSON"):
        read_rows(str(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(QwenscopeError, match="holds no samples"):
        read_rows(str(tmp_path / "empty.jsonl"))
