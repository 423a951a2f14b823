"""Training TopK / BatchTopK SAEs: config, sparse kernels, the trainer, checkpoints."""

from qwenscope.train.config import TrainConfig
from qwenscope.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
