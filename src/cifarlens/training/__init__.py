"""Training: configs, recipes, optimizers and the loop (``train`` a new run, ``resume`` a killed one)."""

from cifarlens.training.config import TrainConfig
from cifarlens.training.recipes import RECIPES, recipe_options

__all__ = ["RECIPES", "TrainConfig", "load_run_config", "recipe_options", "resume", "train"]


def __getattr__(name: str):
    # The loop pulls in evaluation and models; importing it lazily keeps `cifarlens --help` quick.
    if name in ("train", "resume"):
        from cifarlens.training import trainer

        return getattr(trainer, name)
    if name == "load_run_config":
        from cifarlens.training import runs

        return runs.load_run_config
    raise AttributeError(name)
