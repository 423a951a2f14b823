"""The playground without a browser: its logic (Playground), the gradio app over HTTP in-process (gradio_client), and
the ``qwenscope playground`` command with ``launch`` replaced."""

from __future__ import annotations

import pytest

from qwenscope.cli import main
from qwenscope.errors import QwenscopeError
from qwenscope.features.density import density_text
from qwenscope.features.search import token_features
from qwenscope.serve.playground import Playground, add_feature, build_app, feature_id
from qwenscope.steer import generate_pair, generate_text
from qwenscope.steer.strength import steering_unit

PROMPT = "Tell me a story"
HOOK = "resid_post.0"  # where conftest's SAE reads


@pytest.fixture(scope="module")
def pg(qwen3_parts):
    return Playground(*qwen3_parts)


def test_analyse_shows_every_token_with_its_top_features(pg, qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    highlighted, table, seen = pg.analyse(PROMPT, 3)
    rows = token_features(model, tokenizer, sae, HOOK, PROMPT, 3)
    assert "".join(t for t, _ in highlighted) == PROMPT and len(table) == len(rows) == 4
    assert [label for _, label in highlighted] == [f"#{r['features'][0]['id']}" for r in rows]
    assert table[1][:2] == [1, "' me'"] and table[1][2].startswith(f"{rows[1]['features'][0]['id']}:")
    best = {
        f["id"]: max(g["act"] for r in rows[1:] for g in r["features"] if g["id"] == f["id"])
        for r in rows[1:]
        for f in r["features"]
    }  # position 0, the attention sink, ranks last
    only_first = [f["id"] for f in rows[0]["features"] if f["id"] not in best]
    assert seen[: len(best)] == sorted(best, key=lambda i: -best[i]) and seen[len(best) :] == only_first


def test_generate_plain_is_greedy_and_steering_changes_it(pg, qwen3_parts):
    model, tokenizer, _ = qwen3_parts
    plain, steered = pg.generate(PROMPT, "3:60", max_new_tokens=8)
    assert plain == generate_text(model, tokenizer, PROMPT, max_new_tokens=8)
    assert steered != plain
    assert pg.generate(PROMPT, "3:0", max_new_tokens=8) == (plain, plain)
    assert pg.generate(PROMPT, "3", mode="ablate", positions="prompt", max_new_tokens=8)[0] == plain


def test_relative_strengths_are_fractions_of_the_residual_size(pg, qwen3_parts):
    model, tokenizer, sae = qwen3_parts
    got = pg.generate(PROMPT, "7:3", relative=True, max_new_tokens=6)  # no feature store needed
    want = generate_pair(
        model,
        tokenizer,
        PROMPT,
        sae,
        {7: 3.0},
        max_new_tokens=6,
        relative=True,
        unit=steering_unit(model, tokenizer, HOOK),
    )
    assert got == want and pg.unit() == steering_unit(model, tokenizer, HOOK)


def test_find_ranks_contrastive_candidates_by_effect(pg, qwen3_parts):
    rows = pg.find("the cat sat\nthe dog ran\n", "\n12 + 30 = 42\nx = y * 2", top=3, candidates=5)
    assert len(rows) == 3 and all(len(r) == 5 for r in rows)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    with pytest.raises(QwenscopeError, match="one per line"):
        pg.find("the cat", "  \n ")


def test_labels_from_the_store_show_in_the_analysis(qwen3_parts, qwen3_store):
    fid = Playground(*qwen3_parts, qwen3_store).analyse(PROMPT)[2][0]
    qwen3_store.set_labels({fid: ("animals & <pets>", 0.9)})
    try:
        _, table, _ = Playground(*qwen3_parts, qwen3_store).analyse(PROMPT)
        assert any(f"{fid}:" in row[2] and ", animals & <pets>)" in row[2] for row in table)
    finally:
        qwen3_store.set_labels({fid: (None, None)})


def test_with_a_store_dense_features_are_left_out_and_every_cell_shows_a_density(qwen3_parts, qwen3_store):
    frequency = qwen3_store.frequencies()
    seen = Playground(*qwen3_parts, qwen3_store, max_density=1.0).analyse(PROMPT, 4)[2]
    threshold = sorted(frequency[seen])[len(seen) // 2]  # call the denser half of the prompt's features always-on
    pg = Playground(*qwen3_parts, qwen3_store, max_density=threshold)
    highlighted, table, kept = pg.analyse(PROMPT, 4)
    assert kept and set(kept) < set(seen) and all(frequency[f] <= threshold for f in kept)
    cells = [cell for row in table for cell in row[2].split("  ") if cell]
    assert cells and all(f"({density_text(frequency[int(c.split(':')[0])])}" in c for c in cells)
    assert all(frequency[int(c.split(":")[0])] <= threshold for c in cells)
    assert all(label is None or frequency[int(label[1:])] <= threshold for _, label in highlighted)
    dense = max(seen, key=lambda f: frequency[f])
    assert "always-on" in pg.describe(dense) and "always-on" not in pg.describe(kept[0])
    with pytest.raises(QwenscopeError, match="--max-density"):
        Playground(*qwen3_parts, qwen3_store, max_density=0)


def test_describe_a_feature(pg, qwen3_parts, qwen3_store):
    assert "Start the playground with a feature store" in pg.describe(5)
    fid = int(qwen3_store.table().sort_values("frequency").iloc[-1]["feature"])
    card = Playground(*qwen3_parts, qwen3_store).describe(str(fid))
    assert f"Feature {fid}</h1>" in card and "<svg" in card and "Top contexts" in card
    assert "<b>bold</b>" not in card  # context text is escaped


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda pg: pg.generate(PROMPT, "x:1"), "cannot read feature 'x:1'"),
        (lambda pg: pg.generate(PROMPT, "999:1"), "feature id 999 is outside this SAE"),
        (lambda pg: pg.generate(PROMPT, "3:1", mode="boost"), "unknown steering mode 'boost'"),
        (lambda pg: pg.generate(PROMPT, "3:1", positions="end"), "unknown positions 'end'"),
        (lambda pg: pg.find("a cat", ""), "one per line"),
        (lambda pg: pg.generate(" ", "3:1"), "the prompt is empty"),
        (lambda pg: pg.analyse("  "), "the prompt is empty"),
        (lambda pg: pg.describe(128), "feature 128 is not an id of this SAE; pick one in 0..127"),
    ],
)
def test_errors_are_one_line(pg, call, message):
    with pytest.raises(QwenscopeError, match=message) as info:
        call(pg)
    assert "\n" not in str(info.value)


def test_feature_ids_and_adding_them():
    assert [feature_id(v, 10) for v in (3, 3.0, "3", " 7 some label")] == [3, 3, 3, 7]
    for bad in (None, "", "x", 2.5, -1, 10):
        with pytest.raises(QwenscopeError, match="is not an id of this SAE"):
            feature_id(bad, 10)
    assert add_feature("", 7, 8.0) == "7:8"
    assert add_feature("3:60, 5:-2", 5, 2.5) == "3:60,5:2.5"


def test_app_over_http(qwen3_parts, qwen3_store, port):
    """The app's endpoints as a browser would call them; an error arrives as one line."""
    from gradio_client import Client

    model, tokenizer, sae = qwen3_parts
    app = build_app(model, tokenizer, sae, qwen3_store)
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        plain, steered = client.predict(PROMPT, "3:60", "add", "all", 8, False, True, api_name="/steer")
        assert plain == generate_text(model, tokenizer, PROMPT, max_new_tokens=8) and steered != plain
        tokens, table, pick = client.predict(PROMPT, 2, api_name="/analyse")
        assert [t["token"] for t in tokens] == ["Tell", " me", " a", " story"] and len(table["data"]) == 4
        assert pick["value"] == pick["choices"][0][1]
        assert client.predict("3:60", pick["value"], 4, api_name="/add_feature") == f"3:60,{pick['value']}:4"
        assert f"Feature {pick['value']}</h1>" in client.predict(pick["value"], api_name="/describe")
        found, best = client.predict("the cat sat\nthe dog ran", "12 + 30 = 42", api_name="/find")
        assert best["value"] == found["data"][0][0]
        added = client.predict("", best["value"], 0.5, api_name="/add_found")
        assert tuple(added) == (f"{best['value']}:0.5", True)  # the relative box is ticked
        with pytest.raises(Exception, match="cannot read feature 'oops'"):
            client.predict(PROMPT, "oops", "add", "all", 8, False, True, api_name="/steer")
    finally:
        app.close()


def test_playground_command(qwen3_parts, tmp_path, monkeypatch):
    import gradio as gr

    model, tokenizer, sae = qwen3_parts
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    sae.save(tmp_path / "sae")
    launched: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(kw))
    args = ["playground", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae")]
    assert main([*args, "--port", "8123"]) == 0
    assert launched == [{"server_name": "127.0.0.1", "server_port": 8123, "share": False}]
    assert main([*args, "--port", "0"]) == 2
