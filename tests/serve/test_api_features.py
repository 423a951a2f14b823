"""The feature routes of the API (``qwenscope.serve.features_api``): /v1/features/encode and /v1/features/{sae}/{id},
driven over HTTP against a running server, and wired up by ``qwenscope serve``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time

import httpx
import pytest
import torch
from floats import assert_topk_close
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.errors import QwenscopeError
from qwenscope.features.search import token_features
from qwenscope.features.store import FeatureStore, feature_store_dir
from qwenscope.models.capture import get_activations
from qwenscope.serve.api import Limits, create_app
from qwenscope.steer.steer import SteerSpec, steer_rows

pytest.importorskip("uvicorn")

KEY = "test-key"
NAME = "tiny"
SID = "org/l0"  # an id with a slash, for the path converter
HOOK = "resid_post.0"  # where conftest's SAE reads
PROMPT = "The cat sat on the mat"
MAX_PROMPT = 12
AUTH = {"authorization": f"Bearer {KEY}"}


def _label(i: int) -> str | None:
    return f"label {i}" if i % 2 == 0 else None


@pytest.fixture(scope="module")
def labelled_store(qwen3_store, tmp_path_factory) -> FeatureStore:
    """A copy of conftest's store with the even features labelled."""
    folder = tmp_path_factory.mktemp("labelled") / "store"
    shutil.copytree(qwen3_store.folder, folder)
    store = FeatureStore.open(folder)
    store.set_labels({i: (_label(i), 0.5) for i in range(0, store.d_sae, 2)})
    return store


@pytest.fixture(scope="module")
def l1_sae() -> Sae:
    """A second SAE, at resid_post.1, with no feature store."""
    torch.manual_seed(2)
    return Sae(SaeConfig(d_in=64, d_sae=32, k=4, hookpoint="resid_post.1"))


@pytest.fixture(scope="module")
def base_url(qwen3_parts, labelled_store, l1_sae, serve_app) -> str:
    model, tokenizer, sae = qwen3_parts
    app = create_app(
        model,
        tokenizer,
        {SID: sae, "l1": l1_sae},
        api_key=KEY,
        model_name=NAME,
        limits=Limits(max_new_tokens=64, max_prompt_tokens=MAX_PROMPT),
        stores={SID: labelled_store, "l1": None},
    )
    return serve_app(app)


def _encode(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/features/encode", json=body, headers=AUTH, timeout=60)


def _expected(model, tokenizer, sae: Sae, hookpoint: str, text: str) -> torch.Tensor:
    """The SAE's encode (tokens x features) of ``text``'s activations, computed directly: the tokenizer's batch with
    its attention mask (the server forwards the bare ids, another attention path)."""
    acts = get_activations(model, tokenizer(text, return_tensors="pt"), [hookpoint])[hookpoint][0]
    with torch.no_grad():
        return sae.encode(acts)


def _pairs(body: dict) -> list[list[tuple[int, float]]]:
    return [[(f["id"], f["activation"]) for f in token["features"]] for token in body["data"]]


def test_encode_gives_the_saes_top_features_per_token_with_labels(base_url, qwen3_parts, one_thread):
    model, tokenizer, sae = qwen3_parts
    response = _encode(base_url, sae=SID, input=PROMPT, top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    ids = tokenizer(PROMPT)["input_ids"]
    assert (body["object"], body["sae"], body["hookpoint"], body["usage"]) == (
        "list",
        SID,
        HOOK,
        {"prompt_tokens": len(ids)},
    )
    assert [t["index"] for t in body["data"]] == list(range(len(ids)))
    assert [t["token_id"] for t in body["data"]] == ids
    assert "".join(t["token"] for t in body["data"]) == PROMPT
    # server vs direct: other attention inputs (ids alone vs with a mask), other reduction order: fp32 ~1e-6 relative;
    # the top features may swap only among near-ties
    assert_topk_close(_pairs(body), _expected(model, tokenizer, sae, HOOK, PROMPT), 3, rtol=1e-5, atol=1e-6)
    features = [f for t in body["data"] for f in t["features"]]
    assert all(f["label"] == _label(f["id"]) for f in features)
    assert {f["label"] is None for f in features} == {True, False}  # some labelled, some not


def test_encode_by_hookpoint_of_an_sae_without_store(base_url, qwen3_parts, l1_sae):
    model, tokenizer, _ = qwen3_parts
    body = _encode(base_url, sae="resid_post.1", input=PROMPT).json()  # top_k 5 by default; this SAE's k is 4
    assert (body["sae"], body["hookpoint"]) == ("l1", "resid_post.1")
    # server vs direct: other attention inputs (ids alone vs with a mask), other reduction order: fp32 ~1e-6 relative
    # (on an AMD EPYC they differ in the 8th digit); the top features may swap only among near-ties
    direct = _expected(model, tokenizer, l1_sae, "resid_post.1", PROMPT)
    assert_topk_close(_pairs(body), direct, 5, rtol=1e-5, atol=1e-6)
    assert max(len(t["features"]) for t in body["data"]) == 4
    assert all(f["label"] is None for t in body["data"] for f in t["features"])


def _record(store: FeatureStore, i: int) -> dict:
    """The store's record of feature ``i`` as JSON gives it back."""
    return json.loads(json.dumps(dataclasses.asdict(store.feature(i))))


def test_feature_record_is_the_stores(base_url, labelled_store):
    i = next(i for i in range(0, labelled_store.d_sae, 2) if labelled_store.feature(i).count > 0)
    response = httpx.get(f"{base_url}/v1/features/{SID}/{i}", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = _record(labelled_store, i)
    assert {k: body[k] for k in expected} == expected
    assert body["label"] == _label(i) and body["contexts"] and body["promoted"]
    assert (body["object"], body["sae"], body["hookpoint"]) == ("feature", SID, HOOK)
    assert body["density"] == body["frequency"] > 0
    assert body["hist_edges"] == labelled_store.hist_edges and len(body["hist"]) == len(body["hist_edges"]) - 1
    assert httpx.get(f"{base_url}/v1/features/{HOOK}/{i}", headers=AUTH).json() == body  # by hookpoint


def _get(base_url: str, path: str) -> httpx.Response:
    return httpx.get(f"{base_url}{path}", headers=AUTH)


def _post(base_url: str, content: str) -> httpx.Response:
    headers = AUTH | {"content-type": "application/json"}
    return httpx.post(f"{base_url}/v1/features/encode", content=content, headers=headers, timeout=60)


LONG = " ".join(["cat"] * (MAX_PROMPT + 1))


@pytest.mark.parametrize(
    ("request_", "status", "says", "code"),
    [
        (("GET", "/v1/features/nope/1"), 404, "unknown SAE 'nope'", "sae_not_found"),
        (("GET", f"/v1/features/{SID}/128"), 400, "it has 128 features", None),
        (("GET", f"/v1/features/{SID}/-1"), 400, "it has 128 features", None),
        (("GET", f"/v1/features/{SID}/x"), 400, "ids 0..127", None),
        (("GET", "/v1/features/l1/3"), 404, "qwenscope stats --model tiny --sae l1", "feature_store_not_found"),
        (("GET", "/v1/features/l1"), 404, "/v1/features/{sae}/{feature id}", "not_found"),
        (("POST", '{"sae": "nope", "input": "hi"}'), 404, "unknown SAE 'nope'", "sae_not_found"),
        (("POST", f'{{"sae": "l1", "input": "{LONG}"}}'), 400, "the limit is 12", "context_length_exceeded"),
        (("POST", '{"sae": "l1", "input": "hi", "frobnicate": 1}'), 400, "frobnicate", None),
        (("POST", '{"sae": "l1", "input": "hi", "top_k": NaN}'), 400, "top_k", None),
        (("POST", '{"sae": "l1", "input": "hi", "top_k": 65}'), 400, "top_k", None),
        (("POST", '{"sae": "l1", "input": ""}'), 400, "empty", None),
        (("POST", '{"sae": "l1"}'), 400, "input", None),
        (("POST", '{"sae": "l1", "input": '), 400, "not valid JSON", None),
    ],
)
def test_bad_requests_get_4xx_with_an_openai_error_body(base_url, request_, status, says, code):
    method, what = request_
    response = _get(base_url, what) if method == "GET" else _post(base_url, what)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says in error["message"] and error["code"] == code


def test_api_key_is_needed_on_the_feature_routes(base_url):
    assert httpx.get(f"{base_url}/v1/features/{SID}/0").status_code == 401
    response = httpx.post(f"{base_url}/v1/features/encode", json={"sae": SID, "input": "hi"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_encode_during_a_steered_generation_is_unaffected(base_url, qwen3_parts):
    """An encode sent while a steered stream generates gives what it gives alone: the steering's hooks are not on
    the model during the encode (and they would change it: checked in-process first)."""
    model, tokenizer, sae = qwen3_parts
    alone = _encode(base_url, sae=SID, input=PROMPT, top_k=4).json()
    with steer_rows(model, [[SteerSpec(sae, {3: 40.0})]]):
        steered = token_features(model, tokenizer, sae, HOOK, PROMPT, 4, digits=None)
    assert [[(f["id"], f["act"]) for f in r["features"]] for r in steered] != _pairs(alone)

    slow = model.model.layers[-1].register_forward_hook(lambda *_: time.sleep(0.02))  # encode stops before it
    first, chunks = threading.Event(), []

    def stream() -> None:
        body = {
            "model": NAME,
            "prompt": PROMPT,
            "max_tokens": 40,
            "temperature": 0,
            "stream": True,
            "steering": [{"sae": SID, "features": {"3": 40.0}}],
        }
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, headers=AUTH, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(time.monotonic())
                    first.set()

    thread = threading.Thread(target=stream)
    try:
        thread.start()
        assert first.wait(30)
        sent = time.monotonic()
        during = _encode(base_url, sae=SID, input=PROMPT, top_k=4).json()
        thread.join(60)
    finally:
        slow.remove()
    assert sent < chunks[-1]  # the encode was sent while the generation ran
    assert during == alone  # the same server path (same kernels, same shapes) both times: bit-identical


def test_serve_command_finds_the_saes_store(tmp_path, monkeypatch, qwen3_parts, labelled_store):
    """``qwenscope serve`` passes each SAE's cached store (``find_store``) to the app: labels and records."""
    import uvicorn
    from fastapi.testclient import TestClient

    from qwenscope.cli import main
    from qwenscope.features.packed import sae_fingerprint
    from qwenscope.sae.load import load_sae

    _, _, sae = qwen3_parts
    model_dir, sae_dir = save_tiny_qwen3(tmp_path / "model"), tmp_path / "sae"
    sae.save(sae_dir)
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    cached = feature_store_dir("model", str(sae_dir), HOOK)
    shutil.copytree(labelled_store.folder, cached)
    meta = json.loads((cached / "meta.json").read_text())
    (cached / "meta.json").write_text(json.dumps(meta | {"sae_fingerprint": sae_fingerprint(load_sae(str(sae_dir)))}))
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    assert main(["serve", "--model", str(model_dir), "--sae", str(sae_dir)]) == 0
    client = TestClient(served["app"])
    response = client.get(f"/v1/features/{HOOK}/2")
    assert response.status_code == 200, response.text
    assert response.json()["sae"] == str(sae_dir) and response.json()["label"] == "label 2"
    encoded = client.post("/v1/features/encode", json={"sae": HOOK, "input": PROMPT}).json()
    assert any(f["label"] for t in encoded["data"] for f in t["features"])


def test_a_store_that_does_not_fit_its_sae_is_refused_at_start(qwen3_parts, labelled_store, l1_sae):
    model, tokenizer, sae = qwen3_parts
    with pytest.raises(QwenscopeError, match="has 128 features but SAE 'l1' has 32"):
        create_app(model, tokenizer, {"l1": l1_sae}, stores={"l1": labelled_store})
    with pytest.raises(QwenscopeError, match="'l2', which is not one of the served SAEs: l0"):
        create_app(model, tokenizer, {"l0": sae}, stores={"l2": labelled_store})
