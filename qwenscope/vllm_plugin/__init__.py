"""Per-request SAE steering inside vLLM (add, clamp, ablate): the steering tables, the ``qwenscope::steer`` op and
the request parsing. These pieces need torch only; vLLM is imported only by the engine integration.
Design: docs/development/vllm-plugin.md."""

from qwenscope.vllm_plugin.op import steer_hidden, steer_op
from qwenscope.vllm_plugin.parse import LayerSteering, RequestSteering, parse_steering
from qwenscope.vllm_plugin.rows import Span, Tables, table_full_error
from qwenscope.vllm_plugin.table import RowContent, SteerTable, TableConfig, TableFull

__all__ = [
    "LayerSteering",
    "RequestSteering",
    "RowContent",
    "Span",
    "SteerTable",
    "TableConfig",
    "TableFull",
    "Tables",
    "parse_steering",
    "steer_hidden",
    "steer_op",
    "table_full_error",
]
