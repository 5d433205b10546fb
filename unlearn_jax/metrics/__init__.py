"""Evaluation metrics: pure functions of logits/losses; each docstring gives the formula
and the ideal value (the retrained model's)."""
from unlearn_jax.metrics.attacks import lira, mia_efficacy, roc_summary, ulira
from unlearn_jax.metrics.distribution import activation_distance, avg_gap, js_to_retrain, zrf
from unlearn_jax.metrics.mia import mia_loss_lr
from unlearn_jax.metrics.population import (competition_score, eps_hat, forgetting_quality,
                                            hinge, logit_scaled_confidence,
                                            per_example_epsilons)
from unlearn_jax.metrics.relearn import anamnesis_index, relearn_steps
from unlearn_jax.metrics.utility import accuracy, per_example_loss
