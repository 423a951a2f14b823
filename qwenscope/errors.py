"""The one exception type that qwenscope raises for bad input.

Every message is a single line that names the problem and, where there is one, the fix.
The CLI prints it as ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class QwenscopeError(ValueError):
    """Bad input: a wrong shape, layer, hookpoint, file or checkpoint. The message says what to do."""
