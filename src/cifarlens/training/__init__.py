"""Training: configs, recipes, optimizers, checkpoints and the loop."""

from cifarlens.training.config import TrainConfig
from cifarlens.training.recipes import RECIPES, recipe_options

__all__ = ["RECIPES", "TrainConfig", "load_run_config", "recipe_options", "train"]


def __getattr__(name: str):
    # The loop pulls in evaluation and models; importing it lazily keeps `cifarlens --help` quick.
    if name in ("train", "load_run_config"):
        from cifarlens.training import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
