"""Crash-safe writes: a file or a folder is either the old one or the complete new one, never a mix.

    atomic_write(path, lambda tmp: tmp.write_text(text))         # a file: temp sibling, fsync, rename
    with atomic_folder(out / "checkpoint", old=out / "checkpoint.old") as tmp:
        ...                                                       # fill tmp; it replaces the folder on success

A temporary file or folder sits beside its target (so the final rename never crosses file systems) and is named
``.{name}.{pid}-{random}.tmp``: hidden, told apart from real files, and removed by the next write to the same target
once the process that left it is gone.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def temp_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (see the module doc)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_leftovers(path: Path) -> None:
    """Delete the temporary siblings of ``path`` left by writers that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.tmp")
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if path.parent.is_dir() else []:
        m = pattern.fullmatch(leftover.name)
        if m and not _alive(int(m[1])):
            logger.info("removing %s, left by a killed write", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary sibling of ``path``, fsync it, rename it onto ``path``, fsync the folder.

    A kill at any moment leaves ``path`` as it was or complete (and at most a leftover that the next write removes);
    an exception in ``write`` leaves ``path`` as it was and no leftover. The file gets the permissions a plain
    ``open(path, "w")`` would give (0666 less the umask), also when ``write`` creates it private (safetensors
    writes 0600).
    """
    path = Path(path)
    remove_leftovers(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def replace_folder(new: str | Path, folder: str | Path, old: str | Path | None = None) -> None:
    """Move the complete folder ``new`` to ``folder``. An existing ``folder`` is first renamed to ``old`` (default:
    a temporary sibling) and deleted after the swap, so a kill leaves ``folder`` or ``old`` complete, never a mix."""
    new, folder = Path(new), Path(folder)
    if not folder.exists():
        os.replace(new, folder)
        return
    old = Path(old) if old is not None else temp_sibling(folder)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(folder: str | Path, *, old: str | Path | None = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``folder`` to fill; when the block ends without error it replaces
    ``folder`` (``replace_folder``, with ``old`` as the swap name); on an error it is deleted and ``folder`` stays."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    tmp = temp_sibling(folder)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, folder, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
