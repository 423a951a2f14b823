"""Crash-safe writes: the target is the old or the complete new one after an error or a SIGKILL mid-write."""

import multiprocessing as mp
import os
import signal

import pytest

from qwenscope.util.atomic import atomic_folder, atomic_write, temp_sibling


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "a.json"
    assert atomic_write(path, lambda tmp: tmp.write_text("one")) == path
    atomic_write(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    umask = os.umask(0o022)
    try:
        atomic_write(path, lambda tmp: tmp.write_text("three"))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # the usual permissions, not a temp file's 0600


def test_atomic_write_error_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def half(tmp):
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def _killed_mid_write(path) -> None:
    def half(tmp):
        tmp.write_text("ne")
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(path, half)


def test_sigkill_mid_write_keeps_the_old_file_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    proc = mp.get_context("fork").Process(target=_killed_mid_write, args=(path,))  # no torch work in the child
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert path.read_text() == "old"
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "a.json"]
    assert leftover.name.startswith(".a.json.") and leftover.name.endswith(".tmp")
    alive = temp_sibling(path)  # a live writer's temp file (this process): never touched
    alive.write_text("mine")
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == sorted([path, alive])


def test_atomic_folder_swaps_in_only_complete_folders(tmp_path):
    folder = tmp_path / "store"
    with atomic_folder(folder) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:
        (tmp / "x").write_text("2")
        raise RuntimeError("killed half-way")
    assert (folder / "x").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["store"]
    with atomic_folder(folder, old=tmp_path / "store.old") as tmp:
        (tmp / "y").write_text("3")
    assert [p.name for p in folder.iterdir()] == ["y"] and [p.name for p in tmp_path.iterdir()] == ["store"]


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    """safetensors creates its files 0600; a saved SAE must be readable like any file the user writes."""

    def private(tmp):
        tmp.write_text("x")
        os.chmod(tmp, 0o600)

    old = os.umask(0o022)
    try:
        assert (atomic_write(tmp_path / "f", private).stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write(tmp_path / "g", private).stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
