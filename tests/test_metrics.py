"""Metrics against hand-computable cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import metrics


def test_accuracy_and_loss_by_hand():
  logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
  labels = jnp.array([0, 1, 1])
  assert float(metrics.accuracy(logits, labels)) == pytest.approx(2 / 3)
  np.testing.assert_allclose(metrics.per_example_loss(logits, labels)[2],
                             np.log1p(np.e), rtol=1e-6)


def test_mia_loss_lr_chance_for_identical_distributions():
  rng = np.random.default_rng(0)
  score = metrics.mia_loss_lr(rng.exponential(1.0, 2000), rng.exponential(1.0, 2000))
  assert abs(score - 0.5) < 0.05


def test_mia_loss_lr_perfect_for_separated_losses():
  rng = np.random.default_rng(0)
  score = metrics.mia_loss_lr(rng.uniform(0, 0.1, 300), rng.uniform(1, 2, 500))
  assert score > 0.98


def test_mia_loss_lr_needs_enough_examples():
  with pytest.raises(ValueError, match=">= 10"):
    metrics.mia_loss_lr(np.ones(3), np.ones(30))
