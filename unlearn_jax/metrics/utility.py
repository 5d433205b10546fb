"""Utility metrics: accuracy and per-example losses (pure jnp functions of logits)."""

from __future__ import annotations

import jax.numpy as jnp
from unlearn_jax.losses import cross_entropy


def accuracy(logits, labels):
  """Fraction of argmax(logits) == labels; logits [n, C], integer labels [n] → scalar.
  Ideal: retrain's value (RA, TA high; FA as retrain's, which is ≈ TA for random
  forgetting and 0 for class forgetting)."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def per_example_loss(logits, labels):
  """CE per example: ℓ_i = −log softmax(z_i)_{y_i}; logits [n, C], labels [n] → [n].
  Ideal: the retrained model's losses (the loss MIAs compare their distributions)."""
  return cross_entropy(logits, labels)    # the library's one CE (`losses`)
