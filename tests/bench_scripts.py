"""Import a ``bench/perf/`` or ``experiments/<question>/`` script as a module, so tests can call its functions (neither
folder is a package)."""

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def script_path(name: str) -> Path:
    """The one script called ``name``: ``bench/perf/<name>.py`` or ``experiments/*/<name>.py``."""
    found = [ROOT / "bench" / "perf" / f"{name}.py", *ROOT.glob(f"experiments/*/{name}.py")]
    found = [path for path in found if path.is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one script named {name}.py, found {found}")
    return found[0]


@contextmanager
def bench_script(name: str) -> Iterator[ModuleType]:
    """The script ``name`` as a module, registered in ``sys.modules`` while in use (dataclasses look their module up
    there) and removed afterwards."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", script_path(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
