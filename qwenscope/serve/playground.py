"""The playground: a gradio app to read a prompt's features token by token and to steer generation with them.

    app = build_app(model, tokenizer, sae, store=store)       # store (optional): labels, contexts, logit lens
    app.launch()                                              # or: qwenscope playground --model M --sae S

Modelled on the Qwen-Scope demo: type a prompt and see the strongest features of every token (with a feature store:
each with its density, and always-on features, denser than ``max_density``, left out: ``qwenscope.features.density``);
look a feature up (label, density, top contexts and logit lens when a feature store is given); pick features with a
strength, a mode (add, clamp, ablate) and the positions to steer; compare the unsteered and the steered greedy
continuations side by side; find the features that steer toward a concept from texts about it and texts not about it
(``effect_ranked``). The logic lives in ``Playground`` (plain Python, tested without a browser); ``build_app`` only
lays it out. One lock serialises every model call: steering hooks are global to the model, so two requests must not
overlap.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.features.density import MAX_DENSITY, check_max_density, dense_features, density_text
from qwenscope.sae.model import Sae
from qwenscope.steer.steer import MODES

if TYPE_CHECKING:
    import gradio as gr

    from qwenscope.features.store import FeatureStore

logger = logging.getLogger(__name__)

POSITIONS = ("all", "prompt", "generated")


class Playground:
    """What the app does, without the app: analyse a prompt, describe a feature, generate with and without steering."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        sae: Sae,
        store: FeatureStore | None = None,
        hookpoint: str | None = None,
        max_density: float = MAX_DENSITY,
    ) -> None:
        from qwenscope.models.hookpoints import check_sae_fits

        self.model, self.tokenizer, self.sae, self.store = model, tokenizer, sae, store
        self.hookpoint = check_sae_fits(sae, model, hookpoint).name
        self.max_density = check_max_density(max_density)
        self.frequency = store.frequencies() if store is not None else None
        self.dense = dense_features(store, max_density) if store is not None else {}
        self.lock = threading.Lock()
        self.labels: dict[int, str] = store.labels() if store is not None else {}
        self._unit: float | None = None

    def unit(self) -> float:
        """The unit of relative strengths at the hookpoint (``steering_unit``), measured on first use."""
        from qwenscope.steer.strength import steering_unit

        if self._unit is None:
            self._unit = steering_unit(self.model, self.tokenizer, self.hookpoint)
        return self._unit

    def token_features(self, prompt: str, top: int = 5) -> list[dict[str, Any]]:
        """Per token of ``prompt``: {"pos", "token", "features": [{"id", "act"}]}, strongest first; the always-on
        features (``self.dense``) left out."""
        from qwenscope.features.search import token_features

        if not prompt.strip():
            raise QwenscopeError("the prompt is empty; type some text to analyse")
        top = max(1, int(top))
        with self.lock:
            rows = token_features(self.model, self.tokenizer, self.sae, self.hookpoint, prompt, top + len(self.dense))
        for r in rows:
            r["features"] = [f for f in r["features"] if f["id"] not in self.dense][:top]
        return rows

    def analyse(self, prompt: str, top: int = 5) -> tuple[list[tuple[str, str | None]], list[list[Any]], list[int]]:
        """(tokens labelled by their strongest feature, one table row per token, the features seen, strongest first).

        The features seen are ranked by their largest activation after position 0 (the attention sink, whose
        activations are far larger and which feature statistics leave out); those only at position 0 come last.
        """
        rows = self.token_features(prompt, top)
        highlighted = [(r["token"], f"#{r['features'][0]['id']}" if r["features"] else None) for r in rows]
        table = [[r["pos"], repr(r["token"]), "  ".join(self._feature_cell(f) for f in r["features"])] for r in rows]
        later = rank_features(rows[1:])
        return highlighted, table, later + [f for f in rank_features(rows[:1]) if f not in later]

    def _feature_cell(self, f: dict[str, Any]) -> str:
        notes = [density_text(float(self.frequency[f["id"]]))] if self.frequency is not None else []
        notes += [label] if (label := self.label(f["id"])) else []
        return f"{f['id']}:{f['act']:.2f}" + (f" ({', '.join(notes)})" if notes else "")

    def label(self, feature: int) -> str | None:
        """The feature's label from the store, if there is one."""
        return self.labels.get(feature)

    def describe(self, feature: Any) -> str:
        """An HTML card of one feature: label, statistics, histogram, logit lens and top contexts from the store."""
        fid = feature_id(feature, self.sae.d_sae)
        if self.store is None:
            return (
                f"<p>Feature {fid} of {self.sae.d_sae}. Start the playground with a feature store (--store) to "
                f"see its label, top contexts and logit lens.</p>"
            )
        from qwenscope.features.dashboard import feature_body

        return feature_body(self.store.feature(fid), list(self.store.hist_edges), max_density=self.max_density)

    def generate(
        self,
        prompt: str,
        features: str,
        mode: str = "add",
        positions: str = "all",
        max_new_tokens: int = 40,
        relative: bool = False,
        chat: bool = True,
    ) -> tuple[str, str]:
        """(unsteered, steered) greedy continuations; ``features`` is "id:strength,..." (ablate: ids)."""
        from qwenscope.steer import SteerSpec, generate_pair, parse_features

        strengths = parse_features(features)
        SteerSpec(self.sae, strengths, mode=mode)  # checks ids and mode before anything is generated
        if positions not in POSITIONS:
            raise QwenscopeError(f"unknown positions {positions!r}; use one of {', '.join(POSITIONS)}")
        with self.lock:
            unit = self.unit() if relative else None
            return generate_pair(
                self.model,
                self.tokenizer,
                prompt,
                self.sae,
                strengths,
                max_new_tokens=int(max_new_tokens),
                chat=chat,
                mode=mode,
                positions=None if positions == "all" else positions,
                hookpoint=self.hookpoint,
                relative=relative,
                unit=unit,
            )

    def find(self, positive: str, negative: str, top: int = 10, candidates: int = 16) -> list[list[Any]]:
        """Features that steer toward the concept of the ``positive`` texts (one per line) and away from the
        ``negative`` ones, best first (``effect_ranked``): one row [id, score, rate +, rate -, label]."""
        from qwenscope.features.search import effect_ranked

        pos, neg = ([t for t in text.splitlines() if t.strip()] for text in (positive or "", negative or ""))
        if not pos or not neg:
            raise QwenscopeError("write at least one text about the concept and one not about it, one per line")
        with self.lock:
            hits = effect_ranked(
                self.model,
                self.tokenizer,
                self.sae,
                pos,
                neg,
                max(1, int(top)),
                max(1, int(candidates)),
                hookpoint=self.hookpoint,
                unit=self.unit(),
            )
        return [
            [h.feature, round(h.score, 3), round(h.rate_pos, 3), round(h.rate_neg, 3), self.label(h.feature) or ""]
            for h in hits
        ]


def rank_features(rows: list[dict[str, Any]]) -> list[int]:
    """The feature ids in ``token_features`` rows, by their largest activation, strongest first."""
    best: dict[int, float] = {}
    for r in rows:
        for f in r["features"]:
            best[f["id"]] = max(best.get(f["id"], 0.0), f["act"])
    return sorted(best, key=lambda i: -best[i])


def feature_id(value: Any, d_sae: int) -> int:
    """A feature id from a dropdown or a number box (int, float or text like "12" or "12 label"), range-checked."""
    try:
        number = float(value.split()[0]) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        number = math.nan
    if not (number.is_integer() and 0 <= number < d_sae):
        raise QwenscopeError(f"feature {value!r} is not an id of this SAE; pick one in 0..{d_sae - 1}")
    return int(number)


def add_feature(features: str, feature: int, strength: float) -> str:
    """``features`` with "id:strength" appended (or that id's strength replaced)."""
    kept = [p.strip() for p in features.split(",") if p.strip() and p.split(":")[0].strip() != str(feature)]
    return ",".join([*kept, f"{feature}:{strength:g}"])


def _gradio() -> Any:
    try:
        import gradio
    except ImportError:
        raise QwenscopeError("gradio is not installed; install it with: pip install 'qwenscope[serve]'") from None
    return gradio


def _guard(fn):
    """Turn a QwenscopeError into gr.Error, which the page shows as a one-line message."""
    gr = _gradio()

    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except QwenscopeError as error:
            raise gr.Error(str(error)) from None

    return run


def build_app(
    model: nn.Module,
    tokenizer: Any,
    sae: Sae,
    store: FeatureStore | None = None,
    hookpoint: str | None = None,
    title: str | None = None,
    max_density: float = MAX_DENSITY,
) -> gr.Blocks:
    """The playground as a ``gr.Blocks`` app (launch it with ``app.launch()``; see the module doc)."""
    gr = _gradio()
    pg = Playground(model, tokenizer, sae, store, hookpoint, max_density)
    name = title or f"qwenscope playground: {getattr(model.config, '_name_or_path', '') or type(model).__name__}"
    with gr.Blocks(title="qwenscope playground", analytics_enabled=False) as app:
        gr.Markdown(
            f"## {name}\nSAE with {sae.d_sae} features at `{pg.hookpoint}`"
            + (
                ""
                if store is None
                else f", feature store over {store.meta.get('n_tokens', '?')} tokens; "
                f"{len(pg.dense)} always-on features (denser than {density_text(pg.max_density)}) left out"
            )
        )
        prompt = gr.Textbox(label="Prompt", lines=3, value="Tell me about the ocean.", elem_id="prompt")
        features = gr.Textbox(
            label="Features to steer (id:strength, comma-separated; ablate: ids)",
            placeholder="e.g. 123:8,55:-4",
            elem_id="features",
            scale=3,
            render=False,
        )
        _features_panel(gr, pg, prompt, features)
        relative = _steer_panel(gr, pg, prompt, features)
        _search_panel(gr, pg, features, relative)
    return app


def _steer_panel(gr: Any, pg: Playground, prompt: Any, features: Any) -> Any:
    """Features and strengths, mode, positions, length; the steer button; the two continuations side by side."""
    has_chat = bool(getattr(pg.tokenizer, "chat_template", None))
    with gr.Group():
        with gr.Row():
            features.render()
            mode = gr.Radio(list(MODES), value="add", label="Mode", elem_id="mode")
            positions = gr.Radio(list(POSITIONS), value="all", label="Positions", elem_id="positions")
        with gr.Row():
            max_new = gr.Slider(1, 256, value=40, step=1, label="New tokens", elem_id="max-new-tokens")
            relative = gr.Checkbox(
                False, label="Relative strengths (x the residual's typical size; ~0.5 steers)", elem_id="relative"
            )
            chat = gr.Checkbox(has_chat, label="Chat template", visible=has_chat, elem_id="chat")
            go = gr.Button("Steer and generate", variant="primary", elem_id="steer-btn")
    with gr.Row():
        plain = gr.Textbox(label="Unsteered", lines=8, interactive=False, elem_id="unsteered")
        steered = gr.Textbox(label="Steered", lines=8, interactive=False, elem_id="steered")
    go.click(
        _guard(pg.generate),
        [prompt, features, mode, positions, max_new, relative, chat],
        [plain, steered],
        api_name="steer",
    )
    return relative


def _search_panel(gr: Any, pg: Playground, features: Any, relative: Any) -> None:
    """Texts about a concept and texts not about it; the features whose steering writes it, best first; add one."""
    from qwenscope.steer.strength import DEFAULT_STRENGTH

    with gr.Accordion("Find features that steer toward a concept", open=False):
        with gr.Row():
            positive = gr.Textbox(label="Texts about the concept (one per line)", lines=4, elem_id="search-pos")
            negative = gr.Textbox(label="Texts not about it (one per line)", lines=4, elem_id="search-neg")
        find = gr.Button("Find (contrastive candidates ranked by their steering effect)", elem_id="search-btn")
        found = gr.Dataframe(
            headers=["feature", "score (nats/token)", "rate +", "rate -", "label"],
            interactive=False,
            elem_id="search-table",
        )
        with gr.Row():
            pick = gr.Dropdown([], label="Feature", allow_custom_value=True, elem_id="search-pick", scale=2)
            strength = gr.Number(DEFAULT_STRENGTH, label="Relative strength", elem_id="search-strength")
            add = gr.Button("Add to steering (relative)", elem_id="search-add-btn")

    def run_find(pos: str, neg: str) -> tuple[Any, ...]:
        rows = pg.find(pos, neg)
        choices = [(f"{r[0]} (score {r[1]})", r[0]) for r in rows]
        return rows, gr.Dropdown(choices=choices, value=rows[0][0])

    def run_add(text: str, f: Any, s: Any) -> tuple[str, bool]:
        return add_feature(text or "", feature_id(f, pg.sae.d_sae), float(s or 0)), True

    find.click(_guard(run_find), [positive, negative], [found, pick], api_name="find")
    add.click(_guard(run_add), [features, pick, strength], [features, relative], api_name="add_found")


def _features_panel(gr: Any, pg: Playground, prompt: Any, features: Any) -> None:
    """Analyse the prompt: tokens by their strongest feature, a table of the top features; look one up, add it."""
    from qwenscope.features.dashboard import STYLE

    sae_width = pg.sae.d_sae
    with gr.Accordion("Features of the prompt", open=True):
        with gr.Row():
            top = gr.Slider(1, 20, value=5, step=1, label="Features per token", elem_id="top")
            analyse = gr.Button("Analyse prompt", elem_id="analyse-btn")
        tokens = gr.HighlightedText(label="Tokens (by strongest feature)", elem_id="tokens")
        table = gr.Dataframe(
            headers=["pos", "token", "top features (id:activation (density, label))"],
            elem_id="token-table",
            interactive=False,
            wrap=True,
        )
        with gr.Row():
            pick = gr.Dropdown([], label="Feature", allow_custom_value=True, elem_id="pick", scale=2)
            strength = gr.Number(8.0, label="Strength", elem_id="strength")
            add = gr.Button("Add to steering", elem_id="add-btn")
        card = gr.HTML(elem_id="feature-card", css_template=STYLE, js_on_load=None)

    def run_analysis(text: str, n: int) -> tuple[Any, ...]:
        highlighted, rows, seen = pg.analyse(text, n)
        choices = [(f"{i}" + (f" {pg.label(i)}" if pg.label(i) else ""), i) for i in seen]
        return highlighted, rows, gr.Dropdown(choices=choices, value=seen[0] if seen else None)

    analyse.click(_guard(run_analysis), [prompt, top], [tokens, table, pick], api_name="analyse")
    pick.change(_guard(lambda f: "" if f in (None, "") else pg.describe(f)), [pick], [card], api_name="describe")
    add.click(
        _guard(lambda text, f, s: add_feature(text or "", feature_id(f, sae_width), float(s or 0))),
        [features, pick, strength],
        [features],
        api_name="add_feature",
    )


# ---------------------------------------------------------------- command
@dataclass
class PlaygroundConfig:
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    sae: str | None = None
    """SAE: a folder, a file, a hub repo id or an embedded model name; default: the model's embedded SAE."""
    hookpoint: str | None = None
    """Where the SAE reads and steers, e.g. resid_post.15; default: the hookpoint the SAE records."""
    port: int = 7860
    """Port to serve on."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface)."""
    share: bool = False
    """Ask gradio for a public share link (needs the network)."""
    store: bool = False
    """Load (or build, once) the feature store: labels, top contexts and logit lens."""
    n_tokens: int | None = None
    """Tokens to compute feature statistics over when the store is built; default: the store's default."""
    dataset: str | None = None
    """Text for the statistics when the store is built (a named corpus, a .txt/.jsonl file or folder, hf:NAME)."""
    max_density: float = MAX_DENSITY
    """With --store: leave out features that fire on more than this share of tokens (always-on); 1 keeps them."""

    def __post_init__(self) -> None:
        check_max_density(self.max_density)
        if not 0 < self.port < 65536:
            raise QwenscopeError(f"--port must be in 1..65535, got {self.port}")
        if self.n_tokens is not None and self.n_tokens < 1:
            raise QwenscopeError(f"--n-tokens must be at least 1, got {self.n_tokens}")


def run_playground(cfg: PlaygroundConfig) -> None:
    from qwenscope.models.load import load_model
    from qwenscope.sae.load import load_sae

    model, tokenizer = load_model(cfg.model)
    sae = load_sae(cfg.sae or cfg.model, hookpoint=cfg.hookpoint)
    store = None
    if cfg.store:
        from qwenscope.features.dashboard import cached_store

        store = cached_store(model, tokenizer, sae, cfg.sae or cfg.model, cfg.hookpoint, cfg.n_tokens, cfg.dataset)
    app = build_app(
        model,
        tokenizer,
        sae,
        store,
        cfg.hookpoint,
        title=f"qwenscope playground: {cfg.model}",
        max_density=cfg.max_density,
    )
    logger.info("serving the playground on http://%s:%d (Ctrl-C stops it)", cfg.host, cfg.port)
    app.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share)
