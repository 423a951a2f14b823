"""generate_pair and the `qwenscope steer` command, on a tiny Qwen3 saved with the real Qwen3 tokenizer."""

import pytest

from qwenscope import QwenscopeError
from qwenscope.cli import main
from qwenscope.models.load import load_model
from qwenscope.sae.load import load_sae
from qwenscope.steer import generate_pair, generate_text, parse_features


def test_generate_pair_plain_matches_generate_and_steering_changes_it(folders):
    model, tokenizer = load_model(str(folders[0]))
    sae = load_sae(str(folders[1]))
    plain, steered = generate_pair(model, tokenizer, "Tell me a story", sae, {3: 60.0}, max_new_tokens=8)
    assert plain == generate_text(model, tokenizer, "Tell me a story", max_new_tokens=8)
    assert plain != steered
    same, zero = generate_pair(model, tokenizer, "Tell me a story", sae, {3: 0.0}, max_new_tokens=8)
    assert same == zero == plain


def test_steer_cli_side_by_side(folders, capsys):
    args = [
        "steer",
        "--model",
        str(folders[0]),
        "--sae",
        str(folders[1]),
        "--features",
        "3:60,5:-10",
        "--prompt",
        "Tell me a story",
        "--max-new-tokens",
        "6",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "steering add 3:60, 5:-10" in out and "unsteered" in out and " | steered" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--features", "999:1", "--prompt", "hi"], "feature id 999 is outside this SAE"),
        (["--features", "3:nan", "--prompt", "hi"], "strength of feature 3 is nan"),
        (["--features", "3:1", "--prompt", "  "], "--prompt is empty"),
        (["--features", "x:1", "--prompt", "hi"], "cannot read feature 'x:1'"),
        (["--features", "3:1", "--prompt", "hi", "--hookpoint", "resid_post.1"], "trained on resid_post.0"),
    ],
)
def test_steer_cli_errors_are_one_line(folders, capsys, extra, message):
    assert main(["steer", "--model", str(folders[0]), "--sae", str(folders[1]), *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: only the weight-loading bar
    assert last.startswith("error: ") and message in last


def test_parse_features_and_empty_prompt():
    assert parse_features("1:2, 3 ,4:-0.5") == {1: 2.0, 3: 1.0, 4: -0.5}
    with pytest.raises(QwenscopeError, match="the prompt is empty"):
        generate_text(None, None, "")
