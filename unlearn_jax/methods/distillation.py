"""Distillation: teachers that know (θ0) and teachers that do not (a random net)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from unlearn_jax import losses
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import sample_batch, subsample
from unlearn_jax.methods.base import (MethodContext, adam, gradient_phase, model_state,
                                      register, sgd)
from unlearn_jax.methods.noise import flat_noise, noise_feeds, noise_labels, noise_phase
from unlearn_jax.steps import StepState, Steps, init_train_state, with_enter


@register("bad_teacher", space=dict(tau=("log", 0.5, 8.0), lr=("log", 1e-5, 1e-2)),
          reads=("forget", "retain"),
          paper=('Chundawat, Tarun, Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning '
                 'in Deep Networks Using an Incompetent Teacher", AAAI 2023; as used by Unlearnify and the '
                 'MUFAC scoring notebook'),
          defaults=dict(tau=1.0, lr=1e-4, epochs=1, retain_fraction=0.3, batch_size=64),
          bounds=dict(tau="(0, inf)", lr="(0, inf)", epochs="[1, inf)", retain_fraction="(0, 1]",
                      batch_size="[1, inf)"))
def bad_teacher(ctx: MethodContext, *, tau, lr, epochs, retain_fraction, batch_size):
  """Competent/incompetent teacher: distil θ0 on D_r and a random net on D_f.

  Student starts at θ0. Competent teacher T_c = θ0 (frozen); incompetent T_i = a freshly
  initialised net of the same architecture. On D_f ∪ (a random `retain_fraction` of D_r),
  with l = 1 for forget and 0 for retain examples, target
  t = l·softmax(T_i(x)/τ) + (1−l)·softmax(T_c(x)/τ); minimise KL(t ‖ softmax(S(x)/τ))
  with Adam.
  Reads: forget and retain. Defaults: τ 1, Adam 1e-4, 1 epoch, 30% of D_r, batch 64
  (paper: batch 256 on CIFAR).
  """
  return _bad_teacher(ctx, tau, lr, epochs, batch_size,
                      lambda v, data, k: subsample(data.retain, k, retain_fraction)[0])


def _teacher_mix_loss(model, tau: float):
  """`loss(state, variables, (x, l), key)`: KL(t ‖ softmax(S(x)/τ)) with the target
  t = l·softmax(T_i(x)/τ) + (1−l)·softmax(T_c(x)/τ) (l = 1 to forget, 0 to keep); the
  teachers are `state.const["competent"]` and `state.const["incompetent"]`."""
  model = as_adapter(model)

  def loss_fn(state, v, batch, k):
    xb, lb = batch
    t_c = model.logits(state.const["competent"], xb)
    t_i = model.logits(state.const["incompetent"], xb)
    target = (lb[:, None] * jax.nn.softmax(t_i / tau) +
              (1 - lb[:, None]) * jax.nn.softmax(t_c / tau))
    logits, updates = model.apply(v, xb, train=True, rng=k)
    log_s = jax.nn.log_softmax(logits / tau)
    return jnp.mean(jnp.sum(target * (jnp.log(target + 1e-12) - log_s), axis=-1)), (updates, {})

  return loss_fn


def _bad_teacher(ctx, tau, lr, epochs, batch_size, select_retain):
  model = ctx.model

  def init(variables, data, key):
    k_inc, k_sub, k_run = jax.random.split(key, 3)
    incompetent = model.init(k_inc, ctx.input_shape)
    xr = select_retain(variables, data, k_sub)
    xf = data.forget[0]
    x = jnp.concatenate([xf, xr])
    is_forget = jnp.concatenate([jnp.ones(len(xf)), jnp.zeros(len(xr))])
    return StepState(model_state(variables), {"mixed": (x, is_forget)}, {"distil": k_run},
                     {"competent": variables, "incompetent": incompetent})

  return Steps(init, (gradient_phase("distil", _teacher_mix_loss(model, tau), "mixed",
                                     epochs=epochs, batch_size=batch_size,
                                     optimizer=lambda total: adam(lr)),))


@register("scrub", space=dict(
                    alpha=("log", 0.05, 5.0), gamma=("log", 0.1, 10.0), tau=("log", 0.5, 8.0),
                    lr=("log", 1e-4, 1e-2)),
          reads=("forget", "retain"), paper=('Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards '
                                             'Unbounded Machine Unlearning", NeurIPS 2023 (SCRUB)'),
          defaults=dict(epochs=5, max_epochs=3, alpha=0.5, gamma=1.0, tau=2.0, lr=2e-3,
                        batch_size=64, retain_fraction=1.0),
          bounds=dict(epochs="[1, inf)", max_epochs="[0, inf)", alpha="[0, inf)", gamma="[0, inf)",
                      tau="(0, inf)", lr="(0, inf)", batch_size="[1, inf)", retain_fraction="(0, 1]"))
def scrub(ctx: MethodContext, *, epochs, max_epochs, alpha, gamma, tau, lr, batch_size,
          retain_fraction):
  """SCRUB: a student that moves away from θ0 on D_f and stays with it on D_r.

  Teacher θ0 frozen, student from θ0, one Adam state. Epoch e: if e < m, a max pass over
  D_f minimising −KL_τ(teacher ‖ student); then a min pass over D_r (or a random
  `retain_fraction` of it) minimising γ·CE + α·KL_τ(teacher ‖ student). KL_τ carries
  Hinton's τ² factor. Non-finite steps are dropped. The first max step starts where the KL
  gradient vanishes (student = teacher): Adam normalises its rounding noise into full-size
  steps, so runs that reduce in another order (other devices, a sharded mesh) diverge from
  there; the reference PyTorch code has the same property.
  Reads: forget and retain. Defaults: 5 epochs, m 3, α 0.5, γ 1, τ 2, Adam 2e-3, batch 64
  (small-scale paper values: 10 epochs, m 3, Adam 5e-4, τ 4 for ResNet; at 5e-4 the
  digits MLP keeps a forgotten class).
  """
  model = ctx.model

  def max_loss(state, v, batch, k):
    x, _ = batch
    logits, updates = model.apply(v, x, train=True, rng=k)
    t = model.logits(state.const["teacher"], x)
    return -losses.kl_divergence(t, logits, tau), (updates, {})

  def min_loss(state, v, batch, k):
    x, y = batch
    logits, updates = model.apply(v, x, train=True, rng=k)
    t = model.logits(state.const["teacher"], x)
    ce = losses.cross_entropy(logits, y).mean()
    return gamma * ce + alpha * losses.kl_divergence(t, logits, tau), (updates, {})

  tx = adam(lr)

  def init(variables, data, key):
    feeds = {"forget": data.forget, "retain": data.retain, "retain_now": data.retain}
    if retain_fraction < 1:
      feeds["retain_now"] = subsample(data.retain, key, retain_fraction)   # shape only
    return StepState(init_train_state(variables, tx), feeds, {"cycle": key},
                     {"teacher": variables})

  def resample(state, cycle_key):
    """The cycle's random `retain_fraction` of D_r (all of it at 1)."""
    if retain_fraction >= 1:
      return state
    now = subsample(state.feeds["retain"], jax.random.fold_in(cycle_key, 1), retain_fraction)
    return state._replace(feeds={**state.feeds, "retain_now": now})

  # One Adam state through both passes (fresh=False): SCRUB's single optimizer.
  max_phase = gradient_phase("max", max_loss, "forget", epochs=1, batch_size=batch_size,
                             guard=True, fresh=False, optimizer=lambda total: tx)
  min_phase = gradient_phase("min", min_loss, "retain_now", epochs=1, batch_size=batch_size,
                             guard=True, fresh=False, optimizer=lambda total: tx)
  return Steps(init, (dataclasses.replace(max_phase, active=lambda e: e < max_epochs, slot=0),
                      dataclasses.replace(min_phase, enter=resample, slot=2)),
               cycles=epochs)


def penultimate(model, variables, x, batch_size: int = 512):
  """Eval-mode penultimate features of x (the adapter's `features`)."""
  return train_lib.predict_features(model, variables, x, batch_size)[1]


@register("bad_teacher_similar", space=dict(tau=("log", 0.5, 8.0), lr=("log", 1e-5, 1e-2)),
          reads=("forget", "retain"),
          paper=('the MUFAC scoring notebook (similarity-based retain sampling, from the NeurIPS 2023 '
                 'Machine Unlearning Challenge discussion on Kaggle)'),
          needs=("features",),
          defaults=dict(tau=1.0, lr=1e-4, epochs=1, retain_fraction=0.3, batch_size=64),
          bounds=dict(tau="(0, inf)", lr="(0, inf)", epochs="[1, inf)", retain_fraction="(0, 1]",
                      batch_size="[1, inf)"))
def bad_teacher_similar(ctx: MethodContext, *, tau, lr, epochs, retain_fraction, batch_size):
  """Bad teacher with the retain subsample chosen by similarity to the forget set.

  As `bad_teacher`, but the `retain_fraction` of D_r kept is the retain examples whose
  penultimate-layer features (θ0, eval mode) have the highest cosine similarity to
  their nearest forget example, so the competent teacher guards the boundary the
  forget set sits on.
  Reads: forget and retain. Defaults: τ 1, Adam 1e-4, 1 epoch, 30% of D_r, batch 64.
  """
  model = ctx.model
  model.require_features("bad_teacher_similar")

  def select(variables, data, key):
    del key  # deterministic: nearest neighbours
    unit = lambda z: z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)
    zf = unit(penultimate(model, variables, data.forget[0]))
    zr = unit(penultimate(model, variables, data.retain[0]))
    nearest = jnp.max(zr @ zf.T, axis=1)
    k = max(1, int(round(retain_fraction * data.retain[0].shape[0])))
    return data.retain[0][jax.lax.top_k(nearest, k)[1]]

  return _bad_teacher(ctx, tau, lr, epochs, batch_size, select)


@register("contrastive", space=dict(
                    tau=("log", 0.05, 4.0), lr=("log", 1e-3, 1.0), ce_weight=("log", 0.01, 10.0),
                    epochs=(3, 10, 30)),
          reads=("forget", "retain"),
          paper=('the NeurIPS 2023 Machine Unlearning Challenge (Kaggle), 2nd place, as reproduced in the '
                 'MUFAC scoring notebook'),
          needs=("features",),
          defaults=dict(epochs=3, tau=1.0, lr=0.01, ce_weight=1.0, batch_size=64),
          bounds=dict(epochs="[1, inf)", tau="(0, inf)", lr="(0, inf)", ce_weight="[0, inf)",
                      batch_size="[1, inf)"))
def contrastive(ctx: MethodContext, *, epochs, tau, lr, ce_weight, batch_size):
  """Contrastive unlearning: push forget embeddings away from retain embeddings.

  For each forget batch with a paired retain batch (penultimate features z, unit norm):
  L_c = mean_i log Σ_j exp(cos(z_i^f, z_j^r)/τ) (InfoNCE-style denominator: lowering it
  separates every forget embedding from the retain ones), followed by a CE step on the
  retain batch: each step minimises L_c + w·CE(D_r batch). SGD momentum 0.9.
  Reads: forget and retain. Defaults: 3 epochs over D_f, τ 1, lr 0.01, w 1, batch 64.
  Needs penultimate features from the adapter (`head`, or a `features_fn`).
  """
  model = ctx.model
  model.require_features("contrastive")

  def loss(state, v, batch, k):
    xf, _ = batch
    xr, yr = sample_batch(state.feeds["retain"], k, batch_size)
    logits, z, updates = model.features(v, jnp.concatenate([xf, xr]), train=True, rng=k)
    z = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)
    n = xf.shape[0]
    sim = z[:n] @ z[n:].T / tau
    l_c = jnp.mean(jax.nn.logsumexp(sim, axis=1))
    ce = losses.cross_entropy(logits[n:], yr).mean()
    return l_c + ce_weight * ce, (updates, {})

  def init(variables, data, key):
    return StepState(model_state(variables), {"forget": data.forget, "retain": data.retain},
                     {"contrast": key})

  return Steps(init, (gradient_phase("contrast", loss, "forget", epochs=epochs,
                                     batch_size=batch_size, guard=True,
                                     optimizer=lambda total: sgd(lr, momentum=0.9)),))


@register("unlearnify", space=dict(
                    tau=("log", 0.5, 8.0), lr=("log", 1e-5, 1e-2), noise_lr=("log", 0.01, 1.0),
                    noise_reg=("log", 0.01, 1.0)),
          reads=("forget", "retain"),
          paper=('the Unlearnify project: our construction from its description (noise impairment, then a '
                 'bad teacher)'),
          defaults=dict(epochs=3, tau=1.0, lr=5e-4, retain_fraction=1.0, noise_steps=40,
                        noise_lr=0.1, noise_reg=0.1, batch_size=64),
          bounds=dict(epochs="[1, inf)", tau="(0, inf)", lr="(0, inf)", retain_fraction="(0, 1]",
                      noise_steps="[0, inf)", noise_lr="(0, inf)", noise_reg="[0, inf)",
                      batch_size="[1, inf)"))
def unlearnify(ctx: MethodContext, *, epochs, tau, lr, retain_fraction, noise_steps, noise_lr,
               noise_reg, batch_size):
  """Unlearnify (ours, from Unlearnify's description): noise impairment + bad teacher + curriculum.

  1. UNSIR-style error-maximising noise for the forget data (per forget class, or per
     forget batch), as in `unsir`.
  2. Bad-teacher distillation from θ0 (Adam): targets are the incompetent (random-init)
     teacher's softmax for noise and forget examples and θ0's for a random
     `retain_fraction` of D_r, KL(t ‖ student) at temperature τ.
  3. Curriculum: forget examples sorted by θ0's loss, easiest first; epoch e (of E) sees
     the easiest ⌈(e+1)/E·|D_f|⌉ of them, so the forget share grows over epochs.
  Reads: forget and retain. Defaults: 3 epochs, τ 1, Adam 5e-4, all of D_r, noise as
  `unsir` (40 Adam steps at 0.1, λ 0.1), batch 64.
  """
  model = ctx.model

  def init(variables, data, key):
    k_noise, k_inc, k_sub, k_run = jax.random.split(key, 4)
    labels = noise_labels(ctx, data.forget, batch_size)
    xf, yf = data.forget
    losses_f = losses.cross_entropy(train_lib.predict(model, variables, xf), yf)
    feeds = {**noise_feeds("noise", labels, ctx.input_shape, k_noise, noise_lr),
             "forget_sorted": xf[jnp.argsort(losses_f)],
             "retain": subsample(data.retain, k_sub, retain_fraction)[0]}
    keys = {"noise": k_noise, **{f"curriculum_{e}": jax.random.fold_in(k_run, e)
                                 for e in range(epochs)}}
    return StepState(model_state(variables), feeds, keys,
                     {"teacher": variables, "competent": variables,
                      "incompetent": model.init(k_inc, ctx.input_shape)})

  def curriculum(e):
    """Epoch e's data: the noise, the easiest ⌈(e+1)/E·|D_f|⌉ forget examples (a static
    size per epoch: one phase each) and the retain subsample, labelled 1 / 0."""
    def enter(state, key):
      noise = flat_noise(state, "noise")[0]
      n_f = state.feeds["forget_sorted"].shape[0]
      shown = max(1, -(-(e + 1) * n_f // epochs))  # ceil, static per epoch
      xr = state.feeds["retain"]
      x = jnp.concatenate([noise, state.feeds["forget_sorted"][:shown], xr])
      l = jnp.concatenate([jnp.ones(noise.shape[0] + shown), jnp.zeros(xr.shape[0])])
      return state._replace(feeds={**state.feeds, "curriculum": (x, l)})
    return enter

  loss = _teacher_mix_loss(model, tau)
  # One Adam state through the curriculum (fresh only at its first epoch).
  phases = [with_enter(gradient_phase(f"curriculum_{e}", loss, "curriculum", epochs=1,
                                      batch_size=batch_size, fresh=e == 0,
                                      optimizer=lambda total: adam(lr)), curriculum(e))
            for e in range(epochs)]
  return Steps(init, (noise_phase("noise", model, ctx.input_shape, noise_steps, noise_lr,
                                  noise_reg),) + tuple(phases))
