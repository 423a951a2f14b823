"""``qwenscope demo``: the main job on the embedded default model.

What it shows grows with the project. Today: the model and its hookpoints, what the residual stream at
``resid_post.L`` looks like token by token (and the huge-norm first position that SAE training filters out), and how
much an early-stopped capture saves over a full forward. It never shows a random SAE as if its features meant
something: feature tables appear only for trained SAEs (``qwenscope features --sae ...``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from qwenscope.errors import QwenscopeError

logger = logging.getLogger(__name__)

PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is",
    "def fibonacci(n):\n    return n if n < 2 else",
    "Le chat est assis sur le tapis et regarde",
)


@dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    layers: str = "7,15"
    """Comma-separated decoder layers whose resid_post is shown."""
    repeats: int = 5
    """Timing repeats for the capture comparison (the median is shown)."""

    def __post_init__(self) -> None:
        try:
            self.layer_list = [int(x) for x in self.layers.split(",") if x.strip()]
        except ValueError:
            raise QwenscopeError(f"--layers must be comma-separated integers, got {self.layers!r}") from None
        if not self.layer_list or self.repeats < 1:
            raise QwenscopeError("--layers needs at least one layer and --repeats at least 1")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_demo(cfg: DemoConfig) -> None:
    from qwenscope.cli import print_info
    from qwenscope.models.capture import get_activations
    from qwenscope.models.load import load_model

    print(f"== 1. the model: {cfg.model}")
    model, tokenizer = load_model(cfg.model)
    print_info(cfg.model, model, tokenizer)
    hookpoints = [f"resid_post.{layer}" for layer in cfg.layer_list]

    print("\n== 2. the residual stream, token by token (L2 norm of resid_post)")
    for prompt in PROMPTS:
        batch = tokenizer(prompt, return_tensors="pt")
        acts = get_activations(model, batch, hookpoints)
        tokens = [tokenizer.decode([t]) for t in batch["input_ids"][0]]
        norms = {hp: a[0].norm(dim=-1) for hp, a in acts.items()}
        print(f"\n  {prompt!r}")
        print(f"  {'token':<14}" + "".join(f"{hp:>16}" for hp in hookpoints))
        for i, tok in enumerate(tokens[:12]):
            print(f"  {tok!r:<14}" + "".join(f"{norms[hp][i].item():>16.1f}" for hp in hookpoints))
        for hp in hookpoints:
            med = norms[hp][1:].median().item()
            print(f"  {hp}: position 0 has {norms[hp][0].item() / med:.0f}x the median norm of the others")
    print("  -> SAE training filters such outlier positions (norm > m x median), as Qwen-Scope does.")

    print(f"\n== 3. early-stopped capture vs a full forward (batch 4 x 128 tokens, median of {cfg.repeats})")
    ids = torch.randint(0, len(tokenizer), (4, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = _median_time(lambda: model(ids, output_hidden_states=True, use_cache=False), cfg.repeats)
        print(f"  full forward with output_hidden_states: {full * 1000:.0f} ms")
        for hp in hookpoints:
            t = _median_time(lambda hp=hp: get_activations(model, ids, [hp]), cfg.repeats)
            print(f"  capture {hp:<14}: {t * 1000:.0f} ms ({full / t:.2f}x faster)")

    print("\n== 4. SAE features")
    show_features(cfg.model, model, tokenizer)


def show_features(name: str, model, tokenizer) -> None:
    """Top features per token from the SAE shipped for ``name``, with its measured quality; nothing if none ships."""
    import json

    from qwenscope.cli import token_features
    from qwenscope.models.hookpoints import check_sae_fits
    from qwenscope.sae.load import EMBEDDED_DIR, embedded_saes, load_sae

    shipped = embedded_saes().get(name, [])
    if not shipped:
        print("  No SAE ships for this model, so no feature is shown (a random SAE's features mean nothing).")
        print("  For any SAE you have: qwenscope features --model M --sae PATH --hookpoint resid_post.L --text ...")
        return
    hookpoint = "resid_post.15" if "resid_post.15" in shipped else shipped[0]
    sae = load_sae(name, hookpoint=hookpoint)
    check_sae_fits(sae, model)
    report = EMBEDDED_DIR / name / hookpoint / "eval.json"
    if report.is_file():
        r = json.loads(report.read_text())
        print(
            f"  shipped SAE {name} {hookpoint}: d_sae {sae.d_sae}, k {sae.cfg.k}; on held-out text: "
            f"explained variance {r['explained_variance']:.3f}, dead {r['dead_fraction']:.1%}, "
            f"CE-loss recovered {r['ce_loss_recovered']:.3f}"
        )
    for prompt in PROMPTS[:2]:
        print(f"\n  {prompt!r}: strongest features per token (id:activation)")
        for row in token_features(model, tokenizer, sae, hookpoint, prompt, 3)[1:10]:  # position 0: attention sink
            feats = "  ".join(f"{f['id']}:{f['act']:.1f}" for f in row["features"])
            print(f"  {row['token']!r:<14} {feats}")
