"""The steering-baselines experiment: its AUROC against scikit-learn, its detection texts and instructions held out
from everything that finds a direction, and its LLM-judge path (a scripted judge on a hand-made result)."""

import numpy as np
from bench_scripts import bench_script
from sklearn.metrics import roc_auc_score


def test_auroc_is_scikit_learns():
    with bench_script("steer_baselines") as sb:
        rng = np.random.default_rng(0)
        pos, neg = rng.normal(1, 1, 30), np.r_[rng.normal(0, 1, 25), [1.0, 1.0]]
        pos[:3] = 1.0  # ties count a half
        want = roc_auc_score(np.r_[np.ones(30), np.zeros(27)], np.r_[pos, neg])
        assert abs(sb.auroc(pos, neg) - want) < 1e-12


def test_detection_texts_share_nothing_with_the_search_texts_or_prompts():
    with bench_script("steer_baselines") as sb:
        seen = {t for c in sb.CONCEPTS.values() for t in (*c.positive, *c.negative)}
        seen |= {p for prompts in sb.PROMPTS.values() for p in prompts}
        assert set(sb._texts.DETECTION) == set(sb.CONCEPTS) == set(sb._texts.INSTRUCTIONS)
        for pos, neg in sb._texts.DETECTION.values():
            assert len(pos) == len(neg) == 10 and len(set(pos) | set(neg)) == 20
            assert not (set(pos) | set(neg)) & seen


class SeaJudge:
    """A scripted judge: concept 2 when the fragment says "sea" (else 0), instruction 2, fluency 2 ("mumble": an
    unreadable answer); it keeps every prompt."""

    def __init__(self):
        self.prompts = []

    def complete(self, prompt, max_tokens=40):
        self.prompts.append(prompt)
        fragment = prompt.split('"""')[1]
        if "\nConcept: " in prompt:
            return "Rating: 2" if "sea" in fragment else "Rating: 0"
        return "mumble" if "mumble" in fragment and "\nPrompt: " not in prompt else "Rating: 2"


def _result(sb, prompts):
    """A ``run_concept`` result: two strengths per method (alpha 0 shared), one generation per prompt."""
    plain = [f"plain {i}" for i in range(len(prompts))]
    steered = {
        "effect": ["sea"] * 2 + ["plain"] * 2,
        "contrastive": ["plain"] * 4,
        "diffmeans": ["sea"] * 4,
        "sae_combo": ["sea mumble"] * 4,
    }
    result = {m: {"rows": [{"alpha": 0.0, "rate": 0.0, "perplexity": 2.0, "examples": plain}]} for m in sb.METHODS}
    for m in sb.METHODS:
        result[m]["rows"].append({"alpha": 0.5, "rate": 0.5, "perplexity": 5.0, "examples": steered[m]})
        result[m]["best"] = result[m]["rows"][1]
    result["prompting"] = {"best": {"alpha": 0.0, "rate": 1.0, "perplexity": 2.0, "examples": ["the sea"] * 4}}
    result["detection_auroc"] = dict.fromkeys(("effect", "contrastive", "diffmeans", "probe"), 1.0)
    return result


def test_the_judge_rates_every_strength_and_picks_the_best_by_harmonic(capsys):
    with bench_script("steer_baselines") as sb:
        prompts = ["Plan a trip.", "Name a colour.", "Describe rain.", "Write a toast."]
        plain = _result(sb, prompts)
        sb.print_judge_table({"sea": plain})
        assert capsys.readouterr().out == ""  # without the judge, nothing is printed
        assert "mean_best_judge_harmonic" not in sb.summary({"sea": plain})
        result, chat = _result(sb, prompts), SeaJudge()
        sb.judge_result(chat, "the sea", prompts, result)
        # alpha 0 is shared by the four methods and judged once: 1 + 4 + 1 (prompting) sets of 4 texts, 3 prompts each
        assert len(chat.prompts) == 6 * 4 * 3
        assert result["judge"] == {"concept": "the sea", "answers": 72, "unreadable": 4}
        instructions = {p.split("\nPrompt: ")[1].split("\n")[0] for p in chat.prompts if "\nPrompt: " in p}
        assert instructions == set(prompts)  # the prompting method is judged against the prompt without its addition
        for m in sb.METHODS:
            assert all(len(row["examples"]) == sb.N_EXAMPLES for row in result[m]["rows"])
        assert result["effect"]["rows"][1]["judge"] == {
            "n": 4,
            "concept": 1.0,
            "instruction": 2.0,
            "fluency": 2.0,
            "harmonic": 1.0,
            "unreadable": 0,
        }
        assert result["sae_combo"]["rows"][1]["judge"]["harmonic"] is None  # every fluency answer unreadable
        best = {m: result[m]["best_by_judge"]["alpha"] for m in sb.METHODS}
        assert best == {"effect": 0.5, "contrastive": 0.0, "diffmeans": 0.5, "sae_combo": 0.0}  # ties: lowest alpha
        s = sb.summary({"sea": result})
        assert s["mean_best_judge_harmonic"] == {
            "effect": 1.0,
            "contrastive": 0.0,
            "diffmeans": 2.0,
            "sae_combo": 0.0,
            "prompting": 2.0,
        }
        sb.print_judge_table({"sea": result})
        out = capsys.readouterr().out
        assert "LLM judge" in out and "2.00 (α 0.5" in out and "4 / 72" in out
