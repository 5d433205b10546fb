"""Relearning time: the anamnesis index (AIN) of Chundawat et al. 2023 (zero-shot MU).

A model that only *hides* a class relearns it in a few steps; a model that never knew it
needs as long as the retrained model. AIN compares the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import sample_batch
from unlearn_jax.losses import cross_entropy
from unlearn_jax.steps import apply_gradients


def relearn_steps(model, variables, forget: tuple, target_acc, key, *, lr: float = 0.01,
                  batch_size: int = 32, max_steps: int = 100, eval_size: int = 256):
  """Steps of fine-tuning on D_f until forget accuracy reaches `target_acc`.

  SGD (momentum 0.9, `lr`) on batches drawn uniformly from D_f, eval-mode BatchNorm (the
  statistics stay θ's); accuracy is measured after every step on the first `eval_size`
  forget examples. Returns (steps, reached): 0 if the model already meets the target,
  `max_steps` with reached=False if it never does within the budget (a lower bound).
  Runs as one `lax.scan` of `max_steps` steps (vmappable over models; no early exit).
  """
  model = as_adapter(model)
  forget = tuple(jnp.asarray(a) for a in forget)
  x_eval, y_eval = (a[:eval_size] for a in forget)
  tx = optax.sgd(lr, momentum=0.9)

  def acc(v):
    return jnp.mean(jnp.argmax(model.logits(v, x_eval), -1) == y_eval)

  def step(carry, k):
    v, opt = carry
    x, y = sample_batch(forget, k, batch_size)

    def loss(p):
      return cross_entropy(model.logits({**v, "params": p}, x), y).mean()

    params, opt = apply_gradients(tx, jax.grad(loss)(v["params"]), opt, v["params"])
    v = {**v, "params": params}
    return (v, opt), acc(v)

  carry = (variables, tx.init(variables["params"]))
  keys = jax.random.split(key, max_steps)
  accs = jnp.concatenate([acc(variables)[None], jax.lax.scan(step, carry, keys)[1]])
  hit = accs >= target_acc
  reached = jnp.any(hit)
  return jnp.where(reached, jnp.argmax(hit), max_steps), reached


def anamnesis_index(steps_unlearned, steps_retrain):
  """AIN = r_t(unlearned) / r_t(retrained): relearning steps to regain 95% of the original's
  forget accuracy, relative to the retrained model. Ideal ≈ 1; ≪ 1 means the forgotten
  class was hidden, not removed (it comes back quickly); > 1 means harder to relearn
  than a model that never saw it. Inputs: step counts of any (matching) shape."""
  return jnp.asarray(steps_unlearned, jnp.float32) / jnp.maximum(
      jnp.asarray(steps_retrain, jnp.float32), 1.0)
