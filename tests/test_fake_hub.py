"""The fake Hub server drives the real huggingface_hub download code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from fake_hub import FakeHub, serve_repos
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

REPO = "Qwen/SAE-Res-Test-W1K-L0_5"
FILES = {
    "layer0.sae.pt": os.urandom(3000),
    "layer1.sae.pt": os.urandom(2000),
    "README.md": b"# test SAE\n",
    "sub/a.json": b'{"a": 1}\n',
}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def hub(repo_dir: Path, tmp_path: Path) -> Iterator[FakeHub]:
    with serve_repos({REPO: repo_dir}, home=tmp_path / "hf_home") as server:
        yield server


def test_hf_hub_download_fetches_only_that_file(hub: FakeHub) -> None:
    path = Path(hf_hub_download(REPO, "layer1.sae.pt"))
    assert path.read_bytes() == FILES["layer1.sae.pt"]
    assert path.is_relative_to(hub.cache_dir)
    assert set(hub.requests) == {"layer1.sae.pt"}  # one HEAD + one GET
    assert hub.downloads == ["layer1.sae.pt"]


def test_cached_file_is_not_downloaded_twice(hub: FakeHub) -> None:
    hf_hub_download(REPO, "layer0.sae.pt")
    hub.clear()
    assert Path(hf_hub_download(REPO, "layer0.sae.pt")).read_bytes() == FILES["layer0.sae.pt"]
    assert hub.downloads == []  # only the HEAD revalidation


def test_snapshot_download_allow_patterns(hub: FakeHub) -> None:
    folder = Path(snapshot_download(REPO, allow_patterns="sub/*"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["sub/a.json"]
    assert (folder / "sub/a.json").read_bytes() == FILES["sub/a.json"]
    assert folder.name == hub.commit(REPO)
    assert hub.downloads == ["sub/a.json"]
    assert set(hub.requests) == {"sub/a.json"}


def test_list_repo_files(hub: FakeHub) -> None:
    assert HfApi().list_repo_files(REPO) == sorted(FILES)
    assert huggingface_hub.list_repo_files(REPO) == sorted(FILES)  # module-level HfApi singleton
    assert hub.downloads == []


def test_missing_file_raises_entry_not_found(hub: FakeHub) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as info:
        hf_hub_download(REPO, "layer7.sae.pt")
    assert isinstance(info.value, EntryNotFoundError)
    assert info.value.response.status_code == 404
    assert hub.requests == ["layer7.sae.pt"]
    assert not huggingface_hub.file_exists(REPO, "layer7.sae.pt")


def test_missing_repo_raises_repository_not_found(hub: FakeHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("Qwen/does-not-exist", "layer0.sae.pt")


def test_explicit_endpoint_argument_also_works(hub: FakeHub) -> None:
    path = hf_hub_download(REPO, "README.md", endpoint=hub.url)
    assert Path(path).read_bytes() == FILES["README.md"]


def test_patches_are_restored(repo_dir: Path) -> None:
    before = (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT"))
    with serve_repos({REPO: repo_dir}) as hub:
        assert constants.ENDPOINT == hub.url == os.environ["HF_ENDPOINT"]
        assert str(hub.cache_dir) == constants.HF_HUB_CACHE
        home = hub.home
    assert (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT")) == before
    assert not home.exists()  # the default temporary HF_HOME is deleted
