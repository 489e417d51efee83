"""``lightdeploy eval``: the accuracy of eager and of each artifact on a labelled set, side by side."""

from lightdeploy.evaluation.run import EvalRow, evaluate, render_table

__all__ = ["EvalRow", "evaluate", "render_table"]
