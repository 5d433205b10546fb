"""Evaluation metrics. Each docstring gives the formula, the input shapes and the ideal value
(usually the retrained model's). Functions of logits or losses are `jax.numpy` and run under
`jit` and `vmap`; the attack classifiers (scikit-learn: `mia_loss_lr`, `mia_efficacy`) and
the per-example ε families run on the host, as they say."""
from unlearn_jax.metrics.attacks import lira, mia_efficacy, roc_summary, ulira
from unlearn_jax.metrics.audit import audit_epsilon, clopper_pearson_upper, epsilon_lower_bound
from unlearn_jax.metrics.bootstrap import bootstrap_replicates, normal_interval, resample_indices
from unlearn_jax.metrics.distribution import activation_distance, avg_gap, js_to_retrain, zrf
from unlearn_jax.metrics.inference import (bounded_gumbel_signal, iam, rmia,
                                           true_class_probability)
from unlearn_jax.metrics.mia import mia_loss_lr
from unlearn_jax.metrics.population import (competition_score, eps_hat, forgetting_quality,
                                            hinge, klom, klom_average_95, klom_percentiles,
                                            klom_report,
                                            logit_scaled_confidence, per_example_epsilons)
from unlearn_jax.metrics.probe import linear_probe_accuracy, ridge_probe
from unlearn_jax.metrics.relearn import anamnesis_index, relearn_steps
from unlearn_jax.metrics.utility import accuracy, per_example_loss
from unlearn_jax.metrics.weights import layer_distance, mean_layer_distance

__all__ = ["lira", "mia_efficacy", "roc_summary", "ulira", "activation_distance", "avg_gap",
           "js_to_retrain", "zrf", "mia_loss_lr", "competition_score", "eps_hat",
           "forgetting_quality", "hinge", "klom", "klom_average_95", "klom_percentiles", "klom_report",
           "logit_scaled_confidence",
           "per_example_epsilons",
           "anamnesis_index", "relearn_steps", "accuracy", "per_example_loss", "layer_distance",
           "mean_layer_distance", "audit_epsilon", "epsilon_lower_bound",
           "clopper_pearson_upper", "bootstrap_replicates", "normal_interval",
           "resample_indices", "rmia", "iam", "bounded_gumbel_signal",
           "true_class_probability", "ridge_probe", "linear_probe_accuracy"]
