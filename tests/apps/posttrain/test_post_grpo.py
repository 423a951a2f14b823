"""GRPO with steered negatives on a tiny model: exactly one rollout per group is steered and the others are what plain
generation gives with the same seed; the metrics are logged; bad input gets one line; the CLI trains and resumes."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
from tiny_models import EOS_ID, PAD_ID, build_tiny, make_byte_tokenizer

pytest.importorskip("trl")
from datasets import Dataset
from trl import GRPOConfig

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.posttrain.cli import GrpoCommand, command, run_grpo
from qwenscope.apps.posttrain.grpo import (
    GrpoSteerConfig,
    SteeredGRPOTrainer,
    answer_reward,
    check_steering,
    steered_rows,
)
from qwenscope.apps.posttrain.repetition import repeat_ratio, strip_completion
from qwenscope.cli_args import add_dataclass_args, from_args
from qwenscope.steer.steer import steer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
G = 3
PROMPTS = ["hello world", "abc", "the cat sat", "zq"]


def make_sae() -> Sae:
    torch.manual_seed(0)
    return Sae(SaeConfig(d_in=64, d_sae=48, k=8, hookpoint="resid_post.0")).requires_grad_(False)


def peaked_tiny():
    """A tiny llama whose next-token distributions are peaked (random init gives nearly flat ones), so sampling and
    steering both show in the tokens."""
    model = build_tiny("llama", num_layers=2, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    return model


def train(tmp_path, steering: GrpoSteerConfig | None, *, do_sample: bool, steps: int = 1, peft_config=None):
    """(completion ids of every reward call, trainer) after ``steps`` steps of 2 groups of G rollouts."""
    seen: list[list[list[int]]] = []

    def distinct_reward(completions, completion_ids, **kwargs):
        seen.append(completion_ids)
        return [float(len(set(c))) for c in completion_ids]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        num_generations=G,
        per_device_train_batch_size=2 * G,
        max_completion_length=12,
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        shuffle_dataset=False,
        generation_kwargs={"do_sample": do_sample},
        disable_tqdm=True,
    )
    trainer = SteeredGRPOTrainer(
        peaked_tiny(),
        reward_funcs=[distinct_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=make_byte_tokenizer(),
        sae=make_sae(),
        steering=steering,
        peft_config=peft_config,
    )
    trainer.train()
    return seen, trainer


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_one_rollout_per_group_is_steered_the_others_are_plain(tmp_path, do_sample):
    steering = GrpoSteerConfig(feature=7, alpha=300.0, relative=False, steered_index=1)
    (steered,), trainer = train(tmp_path / "s", steering, do_sample=do_sample)
    (plain,), _ = train(tmp_path / "p", GrpoSteerConfig(feature=7, enabled=False), do_sample=do_sample)
    assert len(steered) == len(plain) == 2 * G
    for i in range(2 * G):
        if i % G == 1:
            assert steered[i] != plain[i]
            assert repeat_ratio(steered[i], 2) > 0.5  # the push makes it loop
        else:
            assert steered[i] == plain[i]  # same seed, same tokens: the plain rows are untouched
    logged = trainer.state.log_history[0]
    for key in (
        "reward",
        "reward/plain",
        "reward/steered",
        "repeat_ratio/plain",
        "repeat_ratio/steered",
        "loop_share/plain",
        "loop_share/steered",
    ):
        assert key in logged
    ratios = [repeat_ratio(strip_completion(c, [EOS_ID, PAD_ID]), 4) for c in steered]
    assert logged["repeat_ratio/steered"] == pytest.approx(sum(ratios[1::G]) / 2)
    assert logged["repeat_ratio/plain"] == pytest.approx((sum(ratios) - sum(ratios[1::G])) / (2 * G - 2))
    rewards = [float(len(set(c))) for c in steered]
    assert logged["reward/steered"] == pytest.approx(sum(rewards[1::G]) / 2)
    assert logged["reward/plain"] == pytest.approx((sum(rewards) - sum(rewards[1::G])) / (2 * G - 2))


def make_trainer(
    tmp_path, steering: GrpoSteerConfig | None, do_sample: bool = True, steps_per_generation: int = 1
) -> SteeredGRPOTrainer:
    args = GRPOConfig(
        output_dir=str(tmp_path),
        num_generations=G,
        per_device_train_batch_size=2 * G,
        max_completion_length=12,
        max_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=0,
        temperature=0.7,
        disable_tqdm=True,
        generation_kwargs={"do_sample": do_sample},
        steps_per_generation=steps_per_generation,
    )
    return SteeredGRPOTrainer(
        peaked_tiny(),
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=make_byte_tokenizer(),
        sae=make_sae(),
        steering=steering,
    )


def completion_logps(trainer, out, row: int, steered: GrpoSteerConfig | None, positions=None) -> torch.Tensor:
    """Hand-computed log-probabilities (at the trainer's temperature) of one row's completion tokens, alone, under
    ``steer`` at ``positions`` when ``steered``; and whether each token is the argmax, up to a near-tie: generation
    (one token at a time, with a KV cache) vs this full forward runs other shapes, logits ~1e-6 apart, so a token
    within 1e-4 of the maximum counts as the argmax."""
    ids = torch.cat([out["prompt_ids"][row], out["completion_ids"][row]])[None]
    mask = torch.cat([out["prompt_mask"][row], out["completion_mask"][row]])[None]
    n, tokens = out["completion_ids"].size(1), out["completion_ids"][row]
    push = (
        steer(trainer.model, make_sae(), {steered.feature: steered.alpha}, relative=False, positions=positions)
        if steered
        else nullcontext()
    )
    with torch.no_grad(), push:
        logits = trainer.model(input_ids=ids, attention_mask=mask).logits[0, -n - 1 : -1] / trainer.temperature
    logps = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    keep = out["completion_mask"][row].bool()
    greedy = logits.gather(-1, tokens[:, None])[:, 0] >= logits.amax(-1) - 1e-4
    return logps[keep], greedy[keep]


@pytest.mark.parametrize("steps_per_generation", [1, 2], ids=["aligned", "trl-computes-old"])
def test_the_steered_rollouts_old_logprobs_are_the_steered_models(tmp_path, steps_per_generation):
    steering = GrpoSteerConfig(feature=7, alpha=300.0, relative=False, steered_index=1)
    trainer = make_trainer(tmp_path, steering, steps_per_generation=steps_per_generation)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(G)])
    old = out["old_per_token_logps"]
    for row in range(2 * G):
        want, _ = completion_logps(trainer, out, row, steering if row % G == 1 else None)
        # TRL's batched forward vs ours: other shapes, fp32 log-probs ~1e-6
        assert old[row][out["completion_mask"][row].bool()] == pytest.approx(want.tolist(), abs=1e-4)
    if steps_per_generation > 1:  # TRL computed the plain rows' old log-probabilities itself; the rest is the same
        return
    # the steered rows are far off-policy: the policy finds their tokens much less likely than the steered model did
    metrics = trainer._metrics["train"]
    assert metrics["steered/logp_gap"][-1] > 1.0
    assert 0.0 < metrics["steered/below_clip"][-1] <= 1.0
    # a process whose rows hold no steered rollout (groups split across processes) keeps TRL's ratio 1 and still
    # joins the metrics' gather (all processes must), logging no value of its own
    trainer._global_steered = lambda *args: []
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(G)])
    assert out.get("old_per_token_logps") is None
    assert math.isnan(metrics["steered/logp_gap"][-1]) and len(metrics["steered/logp_gap"]) == 2
    # "plain": no old log-probabilities, so TRL's ratio is 1 on every token (the policy's own, detached)
    trainer = make_trainer(
        tmp_path / "plain",
        GrpoSteerConfig(feature=7, alpha=300.0, relative=False, steered_index=1, old_logprobs="plain"),
    )
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(G)])
    assert out.get("old_per_token_logps") is None
    assert "steered/logp_gap" not in trainer._metrics["train"]


def test_steering_only_the_generated_tokens_scores_them_as_generated(tmp_path):
    steering = GrpoSteerConfig(feature=7, alpha=300.0, relative=False, steered_index=0, positions="generated")
    trainer = make_trainer(tmp_path, steering, do_sample=False)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(G)])
    prompt_len = out["prompt_ids"].size(1)
    for row in (0, G):  # greedy: each generated token is the argmax of the model steered at the generated positions
        want, argmax = completion_logps(trainer, out, row, steering, positions=slice(prompt_len, None))
        assert bool(argmax.all())
        old = out["old_per_token_logps"][row][out["completion_mask"][row].bool()]
        # TRL's batched forward vs ours: other shapes, fp32 log-probs ~1e-6
        assert old.tolist() == pytest.approx(want.tolist(), abs=1e-4)
        everywhere, _ = completion_logps(trainer, out, row, steering)  # steering the prompt too scores otherwise
        assert everywhere.tolist() != pytest.approx(want.tolist(), abs=1e-2)


def test_lora_steers_the_model_under_the_adapters(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    steering = GrpoSteerConfig(feature=7, alpha=300.0, relative=False, steered_index=0)
    (steered,), trainer = train(tmp_path / "s", steering, do_sample=False, peft_config=lora)
    (plain,), _ = train(tmp_path / "p", None, do_sample=False, peft_config=lora)
    assert type(trainer.model).__name__ == "PeftModelForCausalLM"
    assert [i for i in range(2 * G) if steered[i] != plain[i]] == [0, G]


def test_plain_grpo_logs_the_plain_metrics_only(tmp_path):
    (_,), trainer = train(tmp_path, None, do_sample=True)
    logged = trainer.state.log_history[0]
    assert "repeat_ratio/plain" in logged and "reward/plain" in logged
    assert "repeat_ratio/steered" not in logged and "reward/steered" not in logged
    assert logged["reward/plain"] == pytest.approx(logged["reward"])


def test_steered_rows_follow_the_global_row():
    assert steered_rows(6, 3, 1) == [1, 4]
    assert steered_rows(6, 3, -1) == [2, 5]
    assert steered_rows(4, 3, 0, offset=4) == [2]  # this process holds global rows 4..7


def test_bad_input_gets_one_line():
    model, sae = build_tiny("llama", num_layers=2), make_sae()
    with pytest.raises(QwenscopeError, match="at least 2 rollouts"):
        check_steering(GrpoSteerConfig(feature=3), sae, model, 1)
    with pytest.raises(QwenscopeError, match="feature 48 is outside this SAE"):
        check_steering(GrpoSteerConfig(feature=48), sae, model, 4)
    with pytest.raises(QwenscopeError, match="trained at resid_post.0, not at resid_post.1"):
        check_steering(GrpoSteerConfig(feature=3, hookpoint="resid_post.1"), sae, model, 4)
    other = Sae(SaeConfig(d_in=32, d_sae=48, k=8, hookpoint="resid_post.0", model="other-model"))
    with pytest.raises(QwenscopeError, match="belongs to another model"):
        check_steering(GrpoSteerConfig(feature=3), other, model, 4)
    with pytest.raises(QwenscopeError, match="old_logprobs='policy': use steered or plain"):
        GrpoSteerConfig(feature=3, old_logprobs="policy")  # type: ignore[arg-type]
    with pytest.raises(QwenscopeError, match="outside a group of 4"):
        check_steering(GrpoSteerConfig(feature=3, steered_index=4), sae, model, 4)
    with pytest.raises(QwenscopeError) as error:
        check_steering(GrpoSteerConfig(feature=3), sae, model, 1)
    assert "\n" not in str(error.value)


def test_answer_reward_reads_the_last_number():
    completions = ["5 + 37 = 42.", "42, no 41", [{"role": "assistant", "content": "I count 1,234"}], "Paris!", "none"]
    assert answer_reward(completions, answer=[42, "42", "1234", "paris", 3]) == [1.0, 0.0, 1.0, 1.0, 0.0]


def build_parser():
    """The grpo subcommand's parser, built as ``qwenscope`` builds each command from its loader."""
    import argparse

    (cls,), _ = command()
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, cls, ())
    return parser


@pytest.fixture
def folders(tmp_path):
    model_dir = tmp_path / "model"
    build_tiny("llama", num_layers=2, seed=3).save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    make_sae().save(tmp_path / "sae")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": i}) + "\n" for i, p in enumerate(PROMPTS)))
    return model_dir, tmp_path / "sae", prompts


def test_cli_refuses_bad_input_before_loading(folders, tmp_path):
    _, _, prompts = folders
    parsed = build_parser().parse_args(["--prompts", str(prompts), "--out", "o", "--group", "3", "--no-steered"])
    assert from_args(GrpoCommand, parsed).steered is False
    parsed = build_parser().parse_args(
        ["--prompts", str(prompts), "--out", "o", "--feature", "3", "--old-logprobs", "plain"]
    )
    assert from_args(GrpoCommand, parsed).old_logprobs == "plain"
    with pytest.raises(SystemExit):  # argparse's one line: invalid choice
        build_parser().parse_args(["--prompts", str(prompts), "--out", "o", "--old-logprobs", "policy"])
    with pytest.raises(QwenscopeError, match="--group 1"):
        GrpoCommand(prompts=str(prompts), out=str(tmp_path / "o"), feature=3, group=1)
    with pytest.raises(QwenscopeError, match="--feature is required"):
        GrpoCommand(prompts=str(prompts), out=str(tmp_path / "o"))
    with pytest.raises(QwenscopeError, match="no such file"):
        GrpoCommand(prompts=str(tmp_path / "missing.txt"), out=str(tmp_path / "o"), steered=False)
    with pytest.raises(QwenscopeError, match="use answer, module:function"):
        GrpoCommand(prompts=str(prompts), out=str(tmp_path / "o"), steered=False, reward="nonsense")


def test_cli_trains_two_steps_and_a_rerun_resumes_from_the_checkpoint(folders, tmp_path):
    model_dir, sae_dir, prompts = folders
    out, calls = tmp_path / "run", tmp_path / "calls.txt"
    reward = tmp_path / "counting_reward.py"  # a user's reward file that notes each call (one per step)
    reward.write_text(
        f"def reward(completions, **kw):\n    open({str(calls)!r}, 'a').write('call\\n')\n"
        "    return [float(len(c)) for c in completions]\n"
    )
    cfg = GrpoCommand(
        prompts=str(prompts),
        out=str(out),
        feature=7,
        model=str(model_dir),
        sae=str(sae_dir),
        alpha=2.0,
        steps=2,
        group=G,
        save_steps=1,
        max_new_tokens=8,
        learning_rate=1e-3,
        reward=f"{reward}:reward",
    )
    trainer = run_grpo(cfg)
    assert trainer.state.global_step == 2 and (out / "checkpoint-2").is_dir()
    assert len(calls.read_text().splitlines()) == 2
    assert json.loads((out / "grpo.json").read_text())["unit"] > 0  # relative strength: the unit was measured
    cfg.steps = 3
    resumed = run_grpo(cfg)
    history = resumed.state.log_history
    assert resumed.state.global_step == 3 and (out / "checkpoint-3").is_dir()
    assert len(calls.read_text().splitlines()) == 3  # only step 3 was trained again
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]  # the log of steps 1-2 was restored
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in lines if "repeat_ratio/steered" in h] == [1, 2, 3]
    assert [h["step"] for h in lines if "steered/logp_gap" in h] == [1, 2, 3]  # off-policy negatives by default
