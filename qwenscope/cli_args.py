"""Build argparse options from a dataclass config: one option per field, the field's docstring is its help."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (``x: int = 1`` followed by ``\"\"\"help\"\"\"``), inherited
    fields included (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``Literal[...]`` stays."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """One option per field of ``cls`` (``--field-name``); fields named in ``positional`` become positionals."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict[str, Any] = {"help": docs.get(f.name, "").replace("%", "%%"), "dest": f.name}  # argparse formats
        if typing.get_origin(tp) is typing.Literal:
            kw["choices"], tp = list(typing.get_args(tp)), type(typing.get_args(tp)[0])
        if tp is bool:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default, **kw
            )
            continue
        if typing.get_origin(tp) is tuple and f.name in positional:  # tuple[str, ...] from "a b c"
            parser.add_argument(f.name, nargs="*" if has_default else "+", type=typing.get_args(tp)[0], help=kw["help"])
            continue
        if typing.get_origin(tp) is tuple:  # tuple[int, ...] from "16,32"
            item = typing.get_args(tp)[0]
            kw["type"] = lambda text, item=item: tuple(item(v) for v in text.split(",") if v.strip())
            kw["metavar"] = "A,B,..."
            if default:
                kw["help"] += f" (default: {','.join(map(str, default))})"
        else:
            kw["type"] = tp if tp in (int, float, str) else str
        if f.name in positional:
            kw.pop("dest")
            parser.add_argument(f.name, nargs="?" if has_default else None, default=default, **kw)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", default=default, required=not has_default, **kw)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass instance described by parsed arguments (its ``__post_init__`` validates it); a positional
    tuple field's list becomes a tuple."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
