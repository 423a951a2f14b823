"""The docs site's generated CLI reference lists every subcommand and every option the parser has."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from qwenscope.cli import build_parser

HOOK = Path(__file__).resolve().parents[1] / "docs" / "hooks" / "cli_reference.py"


def _cli_markdown() -> str:
    spec = importlib.util.spec_from_file_location("cli_reference", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli_markdown()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_and_option_is_in_the_cli_reference():
    page = _cli_markdown()
    commands = _subparsers(build_parser())
    assert len(commands) >= 15
    for name, sub in commands.items():
        section = page.split(f"## `qwenscope {name}`", 1)
        assert len(section) == 2, f"qwenscope {name} is missing from the CLI reference"
        body = section[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = next((s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")), None)
            shown = f"`{flag}`" if flag else f"`{action.dest}`"
            assert shown in body, f"{shown} of qwenscope {name} is missing from the CLI reference"
