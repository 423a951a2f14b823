"""A local HTTP server that impersonates the Hugging Face Hub for a few model repos.

Usage::

    with serve_repos({"Qwen/SAE-Res-Test-W1K-L0_5": folder}) as hub:
        path = hf_hub_download("Qwen/SAE-Res-Test-W1K-L0_5", "layer0.sae.pt")
        assert hub.downloads == ["layer0.sae.pt"]

The real ``huggingface_hub`` code runs unchanged. ``serve_repos`` redirects it by patching (and restoring on exit):

* ``huggingface_hub.constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE``: both are computed from ``HF_ENDPOINT``
  once, at import time, so setting the env var inside a test is not enough. ``hf_hub_download`` builds its URL from
  the template; ``HfApi()`` / ``snapshot_download`` read ``constants.ENDPOINT`` when an ``HfApi`` is created.
* ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi`` singleton behind the top-level functions
  (``huggingface_hub.list_repo_files``, ``model_info``, ``file_exists``, ...) captured the endpoint at import time.
* the cache/token locations (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_XET_CACHE``, ``HF_TOKEN_PATH``, ...) point into a
  fresh temporary directory, ``HF_HUB_OFFLINE`` is forced off and ``HF_HUB_DISABLE_XET`` on; the matching env vars
  are also set (for subprocesses) and ``HF_TOKEN`` is removed.

Endpoints served (model repos only; unknown repo -> ``RepoNotFound``, unknown revision -> ``RevisionNotFound``,
missing file -> ``EntryNotFound``, exactly like the Hub's ``X-Error-Code`` header):

* ``HEAD|GET /{repo_id}/resolve/{revision}/{path}``: the file, with ``ETag`` (sha256), ``X-Repo-Commit`` and
  ``Content-Length`` (no redirects: every file is served like a small non-LFS file).
* ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{revision}``: model info (``sha``, ``siblings``).
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=...``: tree listing (one page).

``revision`` may be ``main`` or the repo's fake commit hash (``FakeHub.commit(repo_id)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub import constants, hf_api

_CHUNK = 1 << 20
_DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class _FileInfo:
    size: int
    sha256: str
    git_sha1: str


@dataclass
class FakeHub:
    """State of a running fake Hub; the request logs are appended to by the server threads."""

    url: str
    repos: dict[str, Path]
    home: Path
    requests: list[str] = field(default_factory=list)  # repo file path of every /resolve/ request (HEAD and GET)
    downloads: list[str] = field(default_factory=list)  # repo file path of every file body sent (GET 200)
    log: list[tuple[str, str]] = field(default_factory=list)  # (method, raw URL path) of every request
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _hashes: dict[tuple[str, int, int], _FileInfo] = field(default_factory=dict, repr=False)

    @property
    def cache_dir(self) -> Path:
        return self.home / "hub"

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()
            self.downloads.clear()
            self.log.clear()

    def files(self, repo_id: str) -> list[str]:
        """Sorted POSIX paths of all files in ``repo_id``'s folder."""
        root = self.repos[repo_id]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def commit(self, repo_id: str) -> str:
        """Fake 40-hex commit hash; changes whenever a file is added, removed or modified."""
        digest = hashlib.sha1(repo_id.encode())
        for rel in self.files(repo_id):
            stat = (self.repos[repo_id] / rel).stat()
            digest.update(f"\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def file_info(self, path: Path) -> _FileInfo:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is None:
            cached = _hash_file(path, stat.st_size)
            with self._lock:
                self._hashes[key] = cached
        return cached

    def _record(self, target: list[Any], item: Any) -> None:
        with self._lock:
            target.append(item)


def _hash_file(path: Path, size: int) -> _FileInfo:
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            git_sha1.update(chunk)
    return _FileInfo(size=size, sha256=sha256.hexdigest(), git_sha1=git_sha1.hexdigest())


class _HubError(Exception):
    def __init__(self, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.commit = code, message, commit


class _Handler(BaseHTTPRequestHandler):
    server: _HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _dispatch(self, head: bool) -> None:
        self.hub._record(self.hub.log, (self.command, self.path))
        split = urlsplit(self.path)
        path = unquote(split.path)
        try:
            if path.startswith("/api/models/"):
                self._api(path.removeprefix("/api/models/"), parse_qs(split.query), head)
            else:
                self._resolve(path.lstrip("/"), head)
        except _HubError as err:
            self._send_error(err)

    # -- /{repo_id}/resolve/{revision}/{path} -------------------------------------------------------------------
    def _resolve(self, path: str, head: bool) -> None:
        repo_id, rest = self._split_repo(path, "/resolve/")
        revision, _, filename = rest.partition("/")
        self.hub._record(self.hub.requests, filename)
        commit = self._check_revision(repo_id, revision)
        file = self.hub.repos[repo_id] / filename
        if not filename or ".." in Path(filename).parts or not file.is_file():
            raise _HubError("EntryNotFound", "Entry not found", commit)
        info = self.hub.file_info(file)
        headers = {"ETag": f'"{info.sha256}"', "X-Repo-Commit": commit, "Accept-Ranges": "none"}
        self._send_head(HTTPStatus.OK, "application/octet-stream", info.size, headers)
        if not head:
            self._copy_file(file)
            self.hub._record(self.hub.downloads, filename)

    def _copy_file(self, file: Path) -> None:
        with file.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                self.wfile.write(chunk)

    # -- /api/models/... ----------------------------------------------------------------------------------------
    def _api(self, path: str, query: dict[str, list[str]], head: bool) -> None:
        for marker in ("/tree/", "/revision/"):
            if marker in path:
                repo_id, rest = self._split_repo(path, marker)
                break
        else:
            repo_id, rest, marker = path.rstrip("/"), _DEFAULT_BRANCH, "/revision/"
            if repo_id not in self.hub.repos:
                raise _HubError("RepoNotFound", "Repository not found")
        if marker == "/revision/":
            payload: Any = self._model_info(repo_id, rest)
        else:
            revision, _, sub = rest.partition("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            payload = self._tree(repo_id, revision, sub.strip("/"), recursive)
        self._send_json(payload, head)

    def _model_info(self, repo_id: str, revision: str) -> dict[str, Any]:
        commit = self._check_revision(repo_id, revision)
        siblings = [{"rfilename": rel} for rel in self.hub.files(repo_id)]
        return {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
        }

    def _tree(self, repo_id: str, revision: str, sub: str, recursive: bool) -> list[dict[str, Any]]:
        commit = self._check_revision(repo_id, revision)
        root = self.hub.repos[repo_id]
        base = root / sub if sub else root
        if not base.is_dir():
            raise _HubError("EntryNotFound", f"{sub} does not exist on {revision}", commit)
        children = sorted(base.rglob("*") if recursive else base.iterdir())
        return [self._tree_entry(root, child) for child in children]

    def _tree_entry(self, root: Path, child: Path) -> dict[str, Any]:
        rel = child.relative_to(root).as_posix()
        if child.is_dir():
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": 0, "path": rel}
        info = self.hub.file_info(child)
        return {"type": "file", "oid": info.git_sha1, "size": info.size, "path": rel}

    # -- helpers ------------------------------------------------------------------------------------------------
    def _split_repo(self, path: str, marker: str) -> tuple[str, str]:
        repo_id, found, rest = path.partition(marker)
        if not found or repo_id not in self.hub.repos:
            raise _HubError("RepoNotFound", "Repository not found")
        return repo_id, rest

    def _check_revision(self, repo_id: str, revision: str) -> str:
        commit = self.hub.commit(repo_id)
        if revision not in (_DEFAULT_BRANCH, commit):
            raise _HubError("RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _send_head(self, status: HTTPStatus, content_type: str, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(self, payload: Any, head: bool, status: HTTPStatus = HTTPStatus.OK, **headers: str) -> None:
        body = json.dumps(payload).encode()
        self._send_head(status, "application/json; charset=utf-8", len(body), headers)
        if not head:
            self.wfile.write(body)

    def _send_error(self, err: _HubError) -> None:
        headers = {"X-Error-Code": err.code, "X-Error-Message": err.message}
        if err.commit is not None:
            headers["X-Repo-Commit"] = err.commit
        self._send_json({"error": err.message}, self.command == "HEAD", HTTPStatus.NOT_FOUND, **headers)


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


def _patch_huggingface_hub(stack: ExitStack, url: str, home: Path) -> None:
    """Point huggingface_hub (module constants + env vars) at ``url`` with all caches under ``home``."""
    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
    }
    for name, value in values.items():
        if hasattr(constants, name):
            stack.enter_context(mock.patch.object(constants, name, value))
    stack.enter_context(mock.patch.object(hf_api.api, "endpoint", url))
    env = {name: str(values[name]) for name in ("HF_HOME", "HF_HUB_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH")}
    env |= {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    stack.enter_context(mock.patch.dict(os.environ, env))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)  # restored by patch.dict on exit


@contextmanager
def serve_repos(repos: dict[str, Path], home: Path | None = None) -> Iterator[FakeHub]:
    """Serve ``{repo_id: folder}`` as Hub model repos; huggingface_hub is redirected to it until exit.

    ``home`` becomes ``HF_HOME`` (default: a fresh temporary directory, deleted on exit).
    """
    with ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fake_hf_home_")))
        server = _HubServer(("127.0.0.1", 0), _Handler)
        host, port = server.server_address[:2]
        hub = FakeHub(url=f"http://{host}:{port}", repos={k: Path(v) for k, v in repos.items()}, home=Path(home))
        server.hub = hub
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), name="fake-hf-hub", daemon=True)
        thread.start()
        stack.callback(thread.join, 5)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        _patch_huggingface_hub(stack, hub.url, hub.home)
        yield hub
