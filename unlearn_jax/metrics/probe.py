"""Representation-level forgetting: does a linear probe on the frozen features still
recover the forget set?

An unlearned model can hide the forget set in its head while its features still encode
it; then a linear read-out of the features, fitted on data no model trained on, predicts
the forget examples as well as the original does. The probe here is closed form (ridge
regression on ±1 class targets, scikit-learn's `RidgeClassifier` rule), so one model's
probe is a few matrix products and a population's is one `vmap`.
"""

from __future__ import annotations

import jax.numpy as jnp


def ridge_probe(features, labels, num_classes: int, l2: float = 1.0):
  """(W [d, C], b [C]) of ridge regression from `features` [n, d] to ±1 one-vs-rest
  targets of `labels` [n], with an unpenalised intercept (centred data):
    W = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀỸ,  b = ȳ − x̄ W,  X̃ = X − x̄, Ỹ = Y − ȳ, Y_ic = 2·[y_i = c] − 1,
  λ = `l2` (scikit-learn's `RidgeClassifier(alpha=λ)`). Predict argmax(X W + b).
  `jax.numpy`: vmap it over a population's features."""
  x = jnp.asarray(features)
  y = 2.0 * (jnp.asarray(labels)[:, None] == jnp.arange(int(num_classes))) - 1.0
  x_mean, y_mean = jnp.mean(x, 0), jnp.mean(y, 0)
  xc, yc = x - x_mean, y - y_mean
  gram = xc.T @ xc + l2 * jnp.eye(x.shape[1], dtype=x.dtype)
  w = jnp.linalg.solve(gram, xc.T @ yc.astype(x.dtype))
  return w, y_mean - x_mean @ w


def linear_probe_accuracy(train_features, train_labels, eval_features, eval_labels,
                          num_classes: int, l2: float = 1.0):
  """Accuracy on (`eval_features` [m, d], `eval_labels` [m]) of the `ridge_probe` fitted on
  (`train_features` [n, d], `train_labels` [n]). For unlearning: fit on held-out data
  (no model trained on it), evaluate on the forget set, compare with the retrained
  models' value. Ideal: the retrained models' probe accuracy (higher means the features
  still carry the forget set). `jax.numpy`; vmap it over models."""
  w, b = ridge_probe(train_features, train_labels, num_classes, l2)
  pred = jnp.argmax(jnp.asarray(eval_features) @ w + b, axis=-1)
  return jnp.mean(pred == jnp.asarray(eval_labels))
