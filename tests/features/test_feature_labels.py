"""Labels: our OpenAI-compatible client against a local http.server (this tests our client and request shape, not
any real LLM), the HF labeller on a tiny model, detection scores, fallback labels, labelling a store."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from qwenscope.errors import QwenscopeError
from qwenscope.features.labels import (
    HFLabeller,
    OpenAILabeller,
    clean_label,
    detection_score,
    fallback_label,
    label_feature,
    label_store,
)
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import Context, FeatureInfo, FeatureStore


class _Chat(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions: 'yes' when the text mentions Paris, 'no' otherwise, a label for label prompts."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        if "Does the description apply" in prompt:
            answer = "Yes." if "Paris" in prompt.split("Text:")[1] else "no"
        else:
            answer = '<think>hmm</think>\nLabel: "French places"\nbecause...'
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Chat.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _info(contexts=None, count=3) -> FeatureInfo:
    contexts = (
        contexts
        if contexts is not None
        else [
            Context([" in", " Paris", "."], [0.0, 2.0, 0.1], 2.0),
            Context([" to", " Lyon"], [0.0, 1.5], 1.5),
            Context([" Paris", " is"], [1.2, 0.0], 1.2),
        ]
    )
    return FeatureInfo(
        7,
        0.01,
        count,
        1.5,
        2.0,
        [0.0, 3.0],
        [(" France", 3.0), (" French", 2.0)],
        [(" the", -1.0)],
        None,
        None,
        contexts,
    )


def test_openai_labeller_request_shape_and_answers(server):
    labeller = OpenAILabeller(server + "/v1/", "tiny-llm", api_key="sk-test")
    assert label_feature(_info(), labeller) == "French places"
    sent = _Chat.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    body = sent["body"]
    assert body["model"] == "tiny-llm" and body["temperature"] == 0 and body["max_tokens"] > 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "<< Paris>>" in body["messages"][1]["content"] and "' France'" in body["messages"][1]["content"]
    score = detection_score(labeller, "Paris", ["I live in Paris", "Paris!", "near Lyon"], ["a cat", "Paris dog"])
    assert score == pytest.approx(0.5 * (2 / 3 + 1 / 2))
    with pytest.raises(QwenscopeError, match="did not answer like|failed"):
        OpenAILabeller(server + "/nope", "m").complete("hi")


def test_hf_labeller_is_greedy_on_a_tiny_model(llama, byte_tokenizer):
    labeller = HFLabeller(llama, byte_tokenizer)
    first = labeller.complete("Label this feature", max_tokens=4)
    assert isinstance(first, str) and first == labeller.complete("Label this feature", max_tokens=4)
    assert len(byte_tokenizer.encode(first, add_special_tokens=False)) <= 4
    templated = HFLabeller(llama, _with_template(byte_tokenizer))  # the chat-template path
    assert isinstance(templated.complete("x", max_tokens=3), str)


def _with_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    return tok


def test_fallback_and_clean_labels():
    assert fallback_label(_info()) == "fires on ' Paris', ' Lyon'; promotes ' France', ' French'"
    assert fallback_label(_info(contexts=[], count=0)) == "dead feature (never fired)"
    assert clean_label("\n\n**Label: 'numbers in lists'.**\nmore") == "numbers in lists"
    assert label_feature(_info(contexts=[], count=0), labeller=None) == "dead feature (never fired)"  # type: ignore[arg-type]


class _Keyword:
    """A labeller that labels every feature 'e' and says yes to texts with an 'e'."""

    def complete(self, prompt: str, max_tokens: int = 40) -> str:
        if "Does the description apply" in prompt:
            return "yes" if "e" in prompt.split("Text:")[1] else "no"
        return "the letter e"


def test_label_store(llama, byte_tokenizer, sae, docs, tmp_path):
    cfg = StatsConfig(n_tokens=10**6, seq_len=32, top_n=3, window_before=4, window_after=1, progress=False)
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, cfg)
    store = FeatureStore.write(tmp_path / "store", stats, byte_tokenizer, {"model": "m", "sae": "s"})
    alive = [int(i) for i in (stats.count > 0).nonzero()[:, 0]]
    labels = label_store(store, None)
    assert sorted(labels) == alive and all(text.startswith("fires on") and s is None for text, s in labels.values())
    assert FeatureStore.open(store.folder).feature(alive[0]).label == labels[alive[0]][0]
    scored = label_store(store, _Keyword(), features=alive[:2], n_detect=2)
    again = FeatureStore.open(store.folder)
    for i in alive[:2]:
        assert again.feature(i).label == "the letter e" and 0 <= again.feature(i).label_score <= 1
        assert scored[i][1] == again.feature(i).label_score
    assert set(again.search_label("letter e")) >= set(alive[:2])
