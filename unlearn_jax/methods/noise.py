"""Optimised noise: inputs that maximise (or minimise) θ0's error, and UNSIR (Tarun et al.
2023, IEEE TNNLS: error-maximising noise, then impair and repair). The noise phases are
shared with Unlearnify and the zero-shot methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unlearn_jax import losses
from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import fixed_batches, subsample
from unlearn_jax.methods.base import MethodContext, ce_phase, model_state, register
from unlearn_jax.steps import Phase, StepState, Steps, apply_gradients, with_enter


def noise_labels(ctx: MethodContext, forget: tuple, batch_size: int) -> jax.Array:
  """[num_noise_batches, batch_size] labels: one batch per forget class (class
  scenarios, from the context) or per fixed-order forget batch (random forgetting; the
  short last batch is filled with labels from the start of the set, so every noise batch
  has the same static size)."""
  if ctx.forget_classes:
    return jnp.repeat(jnp.asarray(ctx.forget_classes, jnp.int32)[:, None], batch_size, 1)
  return fixed_batches(forget, batch_size)[0][1]


def noise_phase(name: str, model, input_shape, steps: int, lr: float, reg: float,
                maximise: bool = True) -> Phase:
  """A data-free phase optimising `feeds[name]` [batches, batch, *input_shape]: per label
  batch y (`feeds[name + "/labels"]`), inputs N maximising CE(f_θ0(N), y) − reg·mean(N²)
  (Adam `lr`, `steps` steps; θ0 = `const["teacher"]`); with `maximise=False`,
  error-*minimising* noise: N minimising CE(f_θ0(N), y) + reg·mean(N²). Its start is
  `noise_feeds`."""
  model = as_adapter(model)
  opt = optax.adam(lr)
  sign = -1.0 if maximise else 1.0

  def update(state: StepState, batch, key):
    del batch, key
    n, s, labels = (state.feeds[name], state.feeds[name + "/opt"],
                    state.feeds[name + "/labels"])

    def loss(x, y):
      logits = model.logits(state.const["teacher"], x)
      return sign * losses.cross_entropy(logits, y).mean() + reg * jnp.mean(x ** 2)

    n, s = jax.vmap(lambda g, s_, n_: apply_gradients(opt, g, s_, n_))(
        jax.vmap(jax.grad(loss))(n, labels), s, n)
    return state._replace(feeds={**state.feeds, name: n, name + "/opt": s}), {}

  return Phase(name, update, steps=steps, observe=False)


def noise_feeds(name: str, labels: jax.Array, input_shape, key, lr: float) -> dict:
  """The feeds `noise_phase(name, ...)` starts from: N(0, 1) noise of `labels`' batches
  (drawn from `key`, the phase's key too), its Adam state, the labels."""
  noise0 = jax.random.normal(key, labels.shape + tuple(input_shape))
  return {name: noise0, name + "/opt": jax.vmap(optax.adam(lr).init)(noise0),
          name + "/labels": labels}


def flat_noise(state: StepState, name: str) -> tuple:
  """(inputs [n, *input_shape], labels [n]) of the optimised noise `name`."""
  n = state.feeds[name]
  return n.reshape((-1,) + n.shape[2:]), state.feeds[name + "/labels"].reshape(-1)


@register("unsir", space=dict(
                    noise_lr=("log", 0.01, 1.0), noise_reg=("log", 0.01, 1.0),
                    impair_lr=("log", 1e-3, 0.1), repair_lr=("log", 1e-3, 0.1)),
          reads=("forget", "retain"), paper=('Tarun, Chundawat, Mandal & Kankanhalli, "Fast Yet Effective '
                                             'Machine Unlearning", IEEE TNNLS 2023 (UNSIR)'),
          defaults=dict(noise_steps=40, noise_lr=0.1, noise_reg=0.1, impair_lr=0.01,
                        repair_lr=0.01, retain_fraction=1.0, batch_size=64),
          bounds=dict(noise_steps="[0, inf)", noise_lr="(0, inf)", noise_reg="[0, inf)",
                      impair_lr="(0, inf)", repair_lr="(0, inf)", retain_fraction="(0, 1]",
                      batch_size="[1, inf)"))
def unsir(ctx: MethodContext, *, noise_steps, noise_lr, noise_reg, impair_lr, repair_lr,
          retain_fraction, batch_size):
  """UNSIR: error-maximising noise, then impair and repair.

  Noise: for each forget class (class scenarios) or each forget batch (random
  forgetting) a batch N of inputs maximising CE(f_θ0(N), y) − λ·mean(N²) with Adam
  (`noise_steps` steps, lr `noise_lr`), y the class / the batch's labels. Impair: one
  epoch of CE on the noise (labelled with its own y) mixed with a random
  `retain_fraction` of D_r, SGD lr `impair_lr`; repair: one epoch of CE on that
  retain subsample at `repair_lr`.
  Reads: forget and retain. Defaults: 40 steps, Adam 0.1, λ 0.1, impair lr 0.01,
  repair lr 0.01, all of D_r (retain_fraction 1), batch 64 (paper: impair lr 0.02 on a
  retain subsample; on digits that costs 44 points of RA in the random scenario).
  """
  model = ctx.model

  def init(variables, data, key):
    k_noise, k_sub, k_imp, k_rep = jax.random.split(key, 4)
    labels = noise_labels(ctx, data.forget, batch_size)
    feeds = {**noise_feeds("noise", labels, ctx.input_shape, k_noise, noise_lr),
             "retain": subsample(data.retain, k_sub, retain_fraction)}
    return StepState(model_state(variables), feeds,
                     {"noise": k_noise, "impair": k_imp, "repair": k_rep},
                     {"teacher": variables})

  def mix(state, key):
    """Impair's data: the noise (labelled with its own y) and the retain subsample."""
    (xn, yn), (xr, yr) = flat_noise(state, "noise"), state.feeds["retain"]
    impair = (jnp.concatenate([xn, xr]), jnp.concatenate([yn, yr]))
    return state._replace(feeds={**state.feeds, "impair": impair})

  return Steps(init, (
      noise_phase("noise", model, ctx.input_shape, noise_steps, noise_lr, noise_reg),
      with_enter(ce_phase("impair", model, "impair", epochs=1, lr=impair_lr,
                          batch_size=batch_size, schedule="constant"), mix),
      ce_phase("repair", model, "retain", epochs=1, lr=repair_lr, batch_size=batch_size,
               schedule="constant")))


