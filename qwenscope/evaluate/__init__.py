"""SAE evaluation: reconstruction and sparsity metrics, and what splicing the SAE into the model costs.

    from qwenscope.evaluate import evaluate_saes, write_report
    results = evaluate_saes(model, {"resid_post.3": sae}, token_chunks)   # JSON-serialisable dict
    write_report(results, "eval/")                                       # eval.json + eval.png

``metrics``     pure functions (fvu, l0, dead/dense fractions, cosine, relative norm) and ``SaeMetrics``, a
                streaming accumulator with bounded memory
``model_eval``  ``evaluate_saes`` / ``evaluate_sae``: CE clean / spliced / zero-ablated, CE loss recovered,
                ΔLM loss, KL, plus the metrics, in one pass over the token data
``probing``     k-sparse probing on the sae-probes tasks: SAE latents, residual dimensions, a full probe
``absorption``  first-letter feature absorption (SAEBench's method)
``autointerp``  detection and fuzzing scores of explanations, with null floors; ``interp`` the suite around them
``report``      ``eval.json``, ``eval.png``, ``eval_probing.png``, text tables
``cli``         ``EvalConfig`` and ``run_eval`` for the command line (``--suite core,probing,absorption,...``)
"""

from qwenscope.evaluate.absorption import absorption
from qwenscope.evaluate.autointerp import NULL_EXPLANATION, Example, score_detection, score_fuzzing
from qwenscope.evaluate.cli import EvalConfig, run_eval
from qwenscope.evaluate.interp import autointerp_suite
from qwenscope.evaluate.metrics import SaeMetrics
from qwenscope.evaluate.model_eval import evaluate_sae, evaluate_saes
from qwenscope.evaluate.probing import load_task, resolve_tasks, sparse_probing
from qwenscope.evaluate.report import format_table, write_report

__all__ = [
    "NULL_EXPLANATION",
    "EvalConfig",
    "Example",
    "SaeMetrics",
    "absorption",
    "autointerp_suite",
    "evaluate_sae",
    "evaluate_saes",
    "format_table",
    "load_task",
    "resolve_tasks",
    "run_eval",
    "score_detection",
    "score_fuzzing",
    "sparse_probing",
    "write_report",
]
