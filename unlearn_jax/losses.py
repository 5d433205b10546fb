"""Losses: the one cross-entropy, the one KL, the forget/retain split of one forward pass.

* `cross_entropy(logits, labels)`: per-example CE −log softmax(z)_y (integer labels; it is
  `metrics.per_example_loss`, the loss the MIAs read).
* `kl_rows(t, s, tau)`: per-example KL(softmax(t/τ) ‖ softmax(s/τ)); `kl_divergence` its
  batch mean times τ² (Hinton et al. 2015's scaling, SCRUB's distillation term).
* `ce_loss(model, ...)`: the `loss_fn(variables, batch, key) -> (loss, (updates, {}))` of
  mean CE on `(x, y)` that `steps.make_step` differentiates; `sign=-1` is gradient ascent
  (NegGrad), `train=False` an eval-mode forward pass (BatchNorm statistics kept).
* `split_forward(model, variables, first, second, key)`: one train-mode forward pass over
  two batches concatenated (forget and retain in the interleaved methods), the logits
  returned per part, so both see the same BatchNorm batch statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.adapter import as_adapter


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE with integer labels: −log softmax(logits)_y; [n, C], [n] → [n]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def kl_rows(teacher_logits, student_logits, tau: float = 1.0) -> jax.Array:
  """Per-row KL(softmax(t/τ) ‖ softmax(s/τ)); [n, C] → [n]."""
  p_log = jax.nn.log_softmax(teacher_logits / tau)
  q_log = jax.nn.log_softmax(student_logits / tau)
  return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)


def kl_divergence(teacher_logits, student_logits, tau: float = 1.0) -> jax.Array:
  """Mean over the batch of τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) (Hinton's scaling)."""
  return (tau ** 2) * jnp.mean(kl_rows(teacher_logits, student_logits, tau))


def ce_loss(model, train: bool = True, sign: float = 1.0):
  """`loss_fn(variables, (x, y), key)` of `sign`·mean CE for `steps.make_step` (the
  step's key feeds the model's train-mode rng streams; `train=False`: eval mode, nothing
  mutated)."""
  adapter = as_adapter(model)

  def loss_fn(variables, batch, key):
    x, y = batch
    if train:
      logits, updates = adapter.apply(variables, x, train=True, rng=key)
    else:
      logits, updates = adapter.logits(variables, x), {}
    ce = cross_entropy(logits, y).mean()
    return (-ce if sign < 0 else ce), (updates, {})

  return loss_fn


def split_forward(model, variables, first: jax.Array, second: jax.Array, key):
  """(logits of `first`, logits of `second`, updates): one train-mode pass over both."""
  logits, updates = as_adapter(model).apply(variables, jnp.concatenate([first, second]),
                                            train=True, rng=key)
  return logits[: first.shape[0]], logits[first.shape[0]:], updates
