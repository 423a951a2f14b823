"""SAE evaluation: reconstruction and sparsity metrics, and what splicing the SAE into the model costs.

    from qwenscope.evaluate import evaluate_saes, write_report
    results = evaluate_saes(model, {"resid_post.3": sae}, token_chunks)   # JSON-serialisable dict
    write_report(results, "eval/")                                       # eval.json + eval.png

``metrics``     pure functions (fvu, l0, dead/dense fractions, cosine, relative norm) and ``SaeMetrics``, a
                streaming accumulator with bounded memory
``model_eval``  ``evaluate_saes`` / ``evaluate_sae``: CE clean / spliced / zero-ablated, CE loss recovered,
                ΔLM loss, KL, plus the metrics, in one pass over the token data
``report``      ``eval.json``, ``eval.png``, a text table
``run``         ``EvalConfig`` and ``run_eval`` for the command line
"""

from qwenscope.evaluate.cli import EvalConfig, run_eval
from qwenscope.evaluate.metrics import SaeMetrics
from qwenscope.evaluate.model_eval import evaluate_sae, evaluate_saes
from qwenscope.evaluate.report import format_table, write_report

__all__ = ["EvalConfig", "SaeMetrics", "evaluate_sae", "evaluate_saes", "format_table", "run_eval", "write_report"]
