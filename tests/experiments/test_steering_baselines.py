"""The steering-baselines experiment: its AUROC against scikit-learn, and its detection texts and instructions held out
from everything that finds a direction."""

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
