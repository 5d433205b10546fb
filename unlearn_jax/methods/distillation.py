"""Distillation: teachers that know (θ0) and teachers that do not (a random net)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearn_jax import models as models_lib
from unlearn_jax import train as train_lib
from unlearn_jax.methods.base import (MethodContext, UnlearnData, kl_divergence, make_step,
                                      register, run_epochs, subsample)


def adam(lr: float):
  return train_lib.make_optimizer(
      train_lib.TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, schedule="constant"), 1)


@register("bad_teacher", reads=("forget", "retain"),
          paper="Chundawat et al. 2023 (Can bad teaching induce forgetting?); seeds 000, 002",
          defaults=dict(tau=1.0, lr=1e-4, epochs=1, retain_fraction=0.3, batch_size=64))
def bad_teacher(ctx: MethodContext, *, tau, lr, epochs, retain_fraction, batch_size):
  """Competent/incompetent teacher: distil θ0 on D_r and a random net on D_f.

  Student starts at θ0. Competent teacher T_c = θ0 (frozen); incompetent T_i = a freshly
  initialised net of the same architecture. On D_f ∪ (a random `retain_fraction` of D_r),
  with l = 1 for forget and 0 for retain examples, target
  t = l·softmax(T_i(x)/τ) + (1−l)·softmax(T_c(x)/τ); minimise KL(t ‖ softmax(S(x)/τ))
  with Adam.
  Reads: forget and retain. Defaults: τ 1, Adam 1e-4, 1 epoch, 30% of D_r, batch 64
  (paper: batch 256 on CIFAR).
  Limits (digits MLP, 3 seeds): at the paper's defaults FA stays 99% for a forgotten
  class; `--bad_teacher.lr=1e-3 --bad_teacher.epochs=3` reaches FA 13%, RA 99.2%.
  """
  model = ctx.model

  def unlearn(variables, data: UnlearnData, key):
    k_inc, k_sub, k_run = jax.random.split(key, 3)
    incompetent = models_lib.init_variables(model, k_inc, ctx.input_shape)
    xr, _ = subsample(data.retain, k_sub, retain_fraction)
    xf = data.forget[0]
    x = jnp.concatenate([xf, xr])
    is_forget = jnp.concatenate([jnp.ones(len(xf)), jnp.zeros(len(xr))])

    def loss_fn(v, batch, k):
      xb, lb = batch
      t_c = model.apply(variables, xb, train=False)
      t_i = model.apply(incompetent, xb, train=False)
      target = (lb[:, None] * jax.nn.softmax(t_i / tau) +
                (1 - lb[:, None]) * jax.nn.softmax(t_c / tau))
      logits, stats = train_lib.forward(model, v, xb, train=True)
      log_s = jax.nn.log_softmax(logits / tau)
      kl = jnp.sum(target * (jnp.log(target + 1e-12) - log_s), axis=-1)
      return jnp.mean(kl), (stats, {})

    tx = adam(lr)
    out, _ = run_epochs(make_step(loss_fn, tx), variables, tx, (x, is_forget), k_run, epochs,
                        batch_size)
    return out, {}

  return unlearn


@register("scrub", reads=("forget", "retain"), paper="Kurmanji et al. 2023 (SCRUB)",
          defaults=dict(epochs=5, max_epochs=3, alpha=0.5, gamma=1.0, tau=2.0, lr=2e-3,
                        batch_size=64, retain_fraction=1.0))
def scrub(ctx: MethodContext, *, epochs, max_epochs, alpha, gamma, tau, lr, batch_size,
          retain_fraction):
  """SCRUB: a student that moves away from θ0 on D_f and stays with it on D_r.

  Teacher θ0 frozen, student from θ0, one Adam state. Epoch e: if e < m, a max pass over
  D_f minimising −KL_τ(teacher ‖ student); then a min pass over D_r (or a random
  `retain_fraction` of it) minimising γ·CE + α·KL_τ(teacher ‖ student). KL_τ carries
  Hinton's τ² factor. Non-finite steps are dropped.
  Reads: forget and retain. Defaults: 5 epochs, m 3, α 0.5, γ 1, τ 2, Adam 2e-3, batch 64
  (small-scale paper values: 10 epochs, m 3, Adam 5e-4, τ 4 for ResNet; at 5e-4 the
  digits MLP keeps a forgotten class).
  """
  model = ctx.model

  def unlearn(variables, data: UnlearnData, key):
    teacher = variables

    def max_loss(v, batch, k):
      x, _ = batch
      logits, stats = train_lib.forward(model, v, x, train=True)
      t = model.apply(teacher, x, train=False)
      return -kl_divergence(t, logits, tau), (stats, {})

    def min_loss(v, batch, k):
      x, y = batch
      logits, stats = train_lib.forward(model, v, x, train=True)
      t = model.apply(teacher, x, train=False)
      ce = train_lib.cross_entropy(logits, y).mean()
      return gamma * ce + alpha * kl_divergence(t, logits, tau), (stats, {})

    tx = adam(lr)
    max_step = make_step(max_loss, tx, guard=True)
    min_step = make_step(min_loss, tx, guard=True)
    state = train_lib.init_train_state(variables, tx)
    for e in range(epochs):
      ke = jax.random.fold_in(key, e)
      if e < max_epochs:
        state, _ = train_lib.scan_epochs(max_step, state, data.forget,
                                         jax.random.fold_in(ke, 0), 1, batch_size)
      retain = data.retain if retain_fraction >= 1 else subsample(
          data.retain, jax.random.fold_in(ke, 1), retain_fraction)
      state, _ = train_lib.scan_epochs(min_step, state, retain, jax.random.fold_in(ke, 2), 1,
                                       batch_size)
    return state.variables, {}

  return unlearn
