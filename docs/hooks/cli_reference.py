"""mkdocs hook: the CLI reference page, generated from the subcommands' config dataclasses (their field docstrings
are the ``--help`` text), so it cannot drift from the code."""

from __future__ import annotations

import dataclasses
from typing import Any

PAGE = "reference/cli.md"


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def cli_markdown() -> str:
    """Markdown of every ``qwenscope`` subcommand: its summary and one table row per option."""
    from qwenscope.cli import COMMANDS
    from qwenscope.cli_args import field_docs

    out = [
        "# CLI reference",
        "",
        "`qwenscope COMMAND --help` prints the same text. Options come from each command's",
        "config dataclass; positionals are marked.",
        "",
    ]
    for name, (summary, getter, positional) in COMMANDS.items():
        configs, _run = getter()
        out += [f"## `qwenscope {name}`", "", summary, "", "| option | type | default | help |", "|---|---|---|---|"]
        for cls in configs:
            docs = field_docs(cls)
            for field in dataclasses.fields(cls):
                if not field.init:
                    continue
                flag = field.name if field.name in positional else "--" + field.name.replace("_", "-")
                kind = getattr(field.type, "__name__", str(field.type))
                text = (
                    " ".join(docs.get(field.name, "").split())
                    .replace("|", "\\|")
                    .replace("[", "\\[")
                    .replace("]", "\\]")
                )
                out.append(f"| `{flag}` | `{kind}` | {_default(field)} | {text} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return cli_markdown() if page.file.src_uri == PAGE else markdown
