"""Experiments: sweeps over training options (grid or Optuna), comparison tables of runs, time budgets."""
