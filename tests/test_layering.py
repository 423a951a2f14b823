"""The applications use the core only through its public API, and no application imports another.

An app (a package under ``qwenscope/apps/``) may import ``qwenscope`` or a core subpackage's ``__init__``
(``from qwenscope.features import FeatureStore``), never a core module's file (``qwenscope.features.store``), a
private name (``_helper``) of the core, or another app; its own modules are fine. Every import is walked, those
inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qwenscope

PACKAGE = Path(qwenscope.__file__).parent
APPS = PACKAGE / "apps"


def public_modules() -> set[str]:
    """``qwenscope`` and ``qwenscope.<sub>`` for every core subpackage (a folder with ``__init__.py``)."""
    subs = {p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "apps"}
    return {"qwenscope", *(f"qwenscope.{s}" for s in subs)}


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every absolute import in ``tree``, nested ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def violations(source: str, path: str, app: str, public: set[str]) -> list[str]:
    """One line per bad import in ``source`` (a module of app ``app``), naming file, line and the fix."""
    bad = []
    for line, module, names in _imports(ast.parse(source)):
        if module != "qwenscope" and not module.startswith("qwenscope."):
            continue
        where = f"{path}:{line}"
        if module.startswith("qwenscope.apps."):
            other = module.split(".")[2]
            if other != app:
                bad.append(
                    f"{where}: imports the app {module}; apps do not import each other: move what both "
                    "need into the core's public API (e.g. qwenscope.features)"
                )
            continue
        if module not in public:
            sub = ".".join(module.split(".")[:2])
            bad.append(
                f"{where}: imports the core module {module}; import from {sub} (re-export the name in "
                f"{sub.replace('.', '/')}/__init__.py)"
            )
        bad.extend(
            f"{where}: imports the private name {name} from {module}; make it public in the core or keep it out"
            for name in names
            if name.startswith("_")
        )
    return bad


def test_apps_import_only_the_public_core_and_not_each_other():
    public = public_modules()
    bad = []
    for path in sorted(APPS.rglob("*.py")):
        rel = path.relative_to(APPS)
        if len(rel.parts) < 2:
            continue  # qwenscope/apps/__init__.py
        bad += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)), rel.parts[0], public)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source, needle",
    [
        ("from qwenscope.features.store import FeatureStore", "core module qwenscope.features.store"),
        ("import qwenscope.models.load", "core module qwenscope.models.load"),
        ("def f():\n    from qwenscope.data.tokens import token_mask\n", "x.py:2: imports the core module"),
        ("from qwenscope.features import _LAZY", "private name _LAZY"),
        ("from qwenscope.apps.classify.rule import rank", "imports the app qwenscope.apps.classify.rule"),
        ("import qwenscope.apps.classify", "imports the app qwenscope.apps.classify"),
    ],
)
def test_the_check_catches_a_bad_import(source, needle):
    found = violations(source, "x.py", "synthesize", public_modules())
    assert len(found) == 1 and needle in found[0]


def test_the_check_passes_good_imports():
    source = (
        "import numpy\nfrom qwenscope import Sae\nfrom qwenscope.features import FeatureStore\n"
        "from qwenscope.apps.synthesize.inventory import Target\nimport qwenscope.util\n"
    )
    assert violations(source, "x.py", "synthesize", public_modules() | {"qwenscope.util"}) == []
