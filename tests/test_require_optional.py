"""QWENSCOPE_REQUIRE_OPTIONAL=1 (``make test`` sets it) turns a skip for a missing library into a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CASES = {
    "test_in_a_test.py": "import pytest\n\ndef test_it():\n    pytest.importorskip('no_such_lib_qwenscope')\n",
    "test_at_import.py": "import pytest\n\npytest.importorskip('no_such_lib_qwenscope')\n\ndef test_it():\n    pass\n",
    "test_other_skip.py": "import pytest\n\ndef test_it():\n    pytest.skip('apt-get install fortunes')\n",
}


def _run(tmp_path: Path, require: str | None) -> str:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())  # the suite's hooks
    for name, text in CASES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "QWENSCOPE_REQUIRE_OPTIONAL"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if require is not None:
        env["QWENSCOPE_REQUIRE_OPTIONAL"] = require
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    cmd.append(str(tmp_path))  # a failed collection (a module-level importorskip) otherwise stops the run
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.mark.parametrize("require", [None, "0"])
def test_without_it_missing_libraries_skip(tmp_path, require):
    out = _run(tmp_path, require)
    assert re.search(r"\b3 skipped\b", out) and "failed" not in out and "error" not in out, out


def test_with_it_missing_libraries_fail_and_other_skips_stay(tmp_path):
    out = _run(tmp_path, "1")
    assert re.search(r"\b1 failed\b", out) and re.search(r"\b1 skipped\b", out) and re.search(r"\b1 error\b", out), out
    assert out.count("QWENSCOPE_REQUIRE_OPTIONAL=1 but could not import 'no_such_lib_qwenscope'") >= 2, out
    assert "SKIPPED" in out and "apt-get install fortunes" in out
