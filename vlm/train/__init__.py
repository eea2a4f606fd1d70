"""Training the adapters from a YAML recipe: `vlm train configs/tiny.yaml` or `torchrun ... -m vlm.train CONFIG`."""

from vlm.train.config import TrainConfig, load_train_config
from vlm.train.trainer import Result, train

__all__ = ["TrainConfig", "Result", "load_train_config", "train"]
