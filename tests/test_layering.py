"""The applications use the core only through its public API, and no application imports another.

An app (a package under ``qwenscope/apps/``) may import ``qwenscope`` or a core subpackage's ``__init__``
(``from qwenscope.features import FeatureStore``), never a core module's file (``qwenscope.features.store``), a
private name (``_helper``) of the core, or another app; its own modules are fine. Every import is walked, those
inside functions too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import qwenscope

PACKAGE = Path(qwenscope.__file__).parent
APPS = PACKAGE / "apps"


def public_modules() -> set[str]:
    """``qwenscope`` and ``qwenscope.<sub>`` for every core subpackage (a folder with ``__init__.py``)."""
    subs = {p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "apps"}
    return {"qwenscope", *(f"qwenscope.{s}" for s in subs)}


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in ``tree``, nested ones included; relative imports
    are resolved against ``package`` (the importing module's package)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            out.append((node.lineno, module, [alias.name for alias in node.names]))
    return out


def _is_module(dotted: str) -> bool:
    """Whether ``from qwenscope.x import y`` imports the module file ``y``, not a name that ``qwenscope.x`` exports
    (``from qwenscope.models import splice`` is the function, re-exported over its module's name)."""
    parent, name = dotted.rsplit(".", 1)
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    is_file = path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    if not is_file or parent.startswith("qwenscope.apps"):
        return is_file
    return name not in getattr(importlib.import_module(parent), "__all__", [])


def violations(source: str, path: str, app: str, public: set[str]) -> list[str]:
    """One line per bad import in ``source`` (a module of app ``app``), naming file, line and the fix."""
    bad = []
    parts = Path(path).with_suffix("").parts
    package = ".".join(parts[:-1]) if parts[0] == "qwenscope" else f"qwenscope.apps.{app}"
    for line, module, names in _imports(ast.parse(source), package):
        if module != "qwenscope" and not module.startswith("qwenscope."):
            continue
        where = f"{path}:{line}"
        targets = [module, *(f"{module}.{n}" for n in names if _is_module(f"{module}.{n}"))]
        other = [t for t in targets if t.startswith("qwenscope.apps.") and t.split(".")[2] != app]
        if other or module == "qwenscope.apps":
            bad.append(
                f"{where}: imports the app {other[0] if other else module}; apps do not import each other: move "
                "what both need into the core's public API (e.g. qwenscope.features)"
            )
            continue
        if module.startswith("qwenscope.apps."):
            continue  # the app's own modules
        files = [t for t in targets if t not in public]
        if files:
            sub = ".".join(files[0].split(".")[:2])
            sub = sub if sub in public else "qwenscope"  # a top-level module such as qwenscope.errors
            bad.append(
                f"{where}: imports the core module {files[0]}; import from {sub} (re-export the name in "
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
        ("from qwenscope.features import store", "core module qwenscope.features.store"),
        ("from qwenscope.apps import classify", "imports the app qwenscope.apps.classify"),
        ("from ..classify.pooled import Pooled", "imports the app qwenscope.apps.classify.pooled"),
        ("from qwenscope.errors import QwenscopeError", "core module qwenscope.errors; import from qwenscope ("),
    ],
)
def test_the_check_catches_a_bad_import(source, needle):
    found = violations(source, "x.py", "synthesize", public_modules())
    assert len(found) == 1 and needle in found[0]


def test_the_check_passes_good_imports():
    source = (
        "import numpy\nfrom qwenscope import Sae\nfrom qwenscope.features import FeatureStore\n"
        "from qwenscope.apps.synthesize.inventory import Target\nimport qwenscope.util\n"
        "from . import verify\nfrom .generate import Arm\nfrom qwenscope.features import FeatureStore as Store\n"
    )
    assert violations(source, "x.py", "synthesize", public_modules() | {"qwenscope.util"}) == []


def core_imports(package: str) -> set[str]:
    """The ``qwenscope.*`` modules that the core subpackage ``package`` imports (inside functions too)."""
    found: set[str] = set()
    for path in sorted((PACKAGE / package).rglob("*.py")):
        module = f"qwenscope.{path.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}"
        for _, target, _ in _imports(ast.parse(path.read_text()), module):
            found.add(target)
    return found


def test_steer_does_not_import_features():
    """features may use steering (search by effect); steer must not reach back into features (the LM-head helpers
    it needs live in qwenscope.models), so the two never import each other."""
    back = sorted(t for t in core_imports("steer") if t == "qwenscope.features" or t.startswith("qwenscope.features."))
    assert not back, f"qwenscope.steer imports {back}: move what it needs into qwenscope.models or qwenscope.sae"
