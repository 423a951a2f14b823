"""Optional dependencies: import one or say, in one line, which extra installs it.

sklearn = require("sklearn", "classify", "the classification baselines")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from qwenscope.errors import QwenscopeError

PACKAGES = {"sklearn": "scikit-learn"}
"""The pip package of an optional module whose import name differs from it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``importlib.import_module(module)``, or a QwenscopeError naming ``what`` needs it and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = PACKAGES.get(module.split(".")[0], module.split(".")[0])
        raise QwenscopeError(
            f"{what} needs {package}, which is not installed; install it with: pip install 'qwenscope[{extra}]'"
        ) from None
