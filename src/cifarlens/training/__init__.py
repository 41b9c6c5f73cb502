"""Training: configs, recipes, optimizers and the loop (``train`` a new run, ``resume`` a killed one)."""

from cifarlens.training.config import TrainConfig
from cifarlens.training.recipes import RECIPES, recipe_options
from cifarlens.training.run_folder import load_run_config
from cifarlens.training.trainer import resume, train

__all__ = ["RECIPES", "TrainConfig", "load_run_config", "recipe_options", "resume", "train"]
