"""Evaluation metrics: pure functions of logits/losses; each docstring gives the formula
and the ideal value (the retrained model's)."""
from unlearn_jax.metrics.mia import mia_loss_lr
from unlearn_jax.metrics.utility import accuracy, per_example_loss
