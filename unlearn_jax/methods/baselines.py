"""Baselines: fine-tuning, gradient ascent and label poisoning (seeds 001, 002, 004).

Defaults are scaled for the small default models (the MLP on digits, the small CNN on
CIFAR subsets); the published ResNet-18 values are given in each docstring.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from unlearn_jax import train as train_lib
from unlearn_jax.methods.base import (MethodContext, UnlearnData, ce_loss, finetune_on,
                                      make_step, random_other_labels, register, run_epochs,
                                      sample_batch, sgd)


@register("finetune", reads=("retain",), paper="Golatkar et al. 2020; Warnecke et al. 2023",
          defaults=dict(epochs=5, lr=0.02, batch_size=64, momentum=0.9, weight_decay=5e-4))
def finetune(ctx: MethodContext, *, epochs, lr, batch_size, momentum, weight_decay):
  """Fine-tune on the retain set (FT): catastrophic forgetting of D_f.

  Update: θ ← θ − η_t ∇ CE(θ; D_r batch), SGD momentum, cosine η_t, E epochs.
  Reads: retain. Defaults: 5 epochs, lr 0.02, batch 64 (SSD repository's FT;
  seed 004 uses lr 0.001).
  """

  def unlearn(variables, data: UnlearnData, key):
    variables, history = finetune_on(ctx.model, variables, data.retain, key, epochs=epochs,
                                     lr=lr, batch_size=batch_size, momentum=momentum,
                                     weight_decay=weight_decay)
    return variables, {"final_loss": history["loss"][-1]}

  return unlearn


def _ascent_step(model, tx, loss_cap):
  """Gradient ascent on the forget batch that stops for good once the batch CE exceeds
  `loss_cap` or anything turns non-finite; the carry is (state, stopped)."""
  inner = make_step(lambda v, b, k: _neg_ce(model, v, b), tx, guard=True)

  def step(carry, batch, key):
    state, stopped = carry
    new_state, metrics = inner(state, batch, key)
    ce = -metrics["loss"]
    accept = (~stopped) & (ce <= loss_cap) & (metrics["nonfinite"] == 0)
    state = jax.tree_util.tree_map(lambda n, o: jnp.where(accept, n, o), new_state, state)
    return (state, stopped | ~accept), {"forget_ce": ce}

  return step


def _neg_ce(model, variables, batch):
  x, y = batch
  logits, stats = train_lib.forward(model, variables, x, train=True)
  return -train_lib.cross_entropy(logits, y).mean(), (stats, {})


@register("neggrad", reads=("forget",), paper="Golatkar et al. 2020 (NegGrad); Thudi et al. 2022",
          defaults=dict(epochs=5, lr=0.01, batch_size=32, grad_clip=5.0, loss_cap_factor=1.0))
def neggrad(ctx: MethodContext, *, epochs, lr, batch_size, grad_clip, loss_cap_factor):
  """Gradient ascent on the forget set (NegGrad / GA): minimise −CE(θ; D_f).

  Update: θ ← θ + η ∇ CE(θ; D_f batch) with global-norm clipping. Ascent is unbounded,
  so the run stops for good as soon as a batch's CE exceeds
  `loss_cap_factor · ln(num_classes)` (chance level) or any value turns non-finite;
  it returns the last accepted weights and reports `stopped_early`.
  Reads: forget. Defaults: 5 epochs, lr 0.01, batch 32, clip 5 (published: lr 1e-4..1e-3
  for ResNet-18).
  """
  loss_cap = loss_cap_factor * math.log(ctx.num_classes)

  def unlearn(variables, data: UnlearnData, key):
    tx = sgd(lr, momentum=0.0, grad_clip=grad_clip)
    state = train_lib.init_train_state(variables, tx)
    (state, stopped), history = train_lib.scan_epochs(
        _ascent_step(ctx.model, tx, loss_cap), (state, jnp.array(False)), data.forget, key,
        epochs, batch_size)
    return state.variables, {"stopped_early": stopped,
                             "final_forget_ce": history["forget_ce"][-1]}

  return unlearn


RANDOM_LABEL_VARIANTS = ("interleaved", "forget_only", "whole", "hybrid")


@register("random_label", reads=("forget", "retain"),
          paper="Graves et al. 2021 (Amnesiac ML); Krahenmann et al. (seed 004)",
          defaults=dict(variant="interleaved", epochs=5, lr=0.01, batch_size=64,
                        retain_weight=1.0, repair_epochs=5, repair_lr=0.001))
def random_label(ctx: MethodContext, *, variant, epochs, lr, batch_size, retain_weight,
                 repair_epochs, repair_lr):
  """Random-label (label poisoning) unlearning: train D_f towards wrong labels.

  Each forget example gets one wrong label ỹ drawn uniformly from the other classes
  (once per run, as in Amnesiac ML: labels redrawn every step average out and the
  model keeps the true ones). Variants (seed 004):
    * `interleaved` (default): each step minimises CE(D_f batch, ỹ) + w·CE(D_r batch, y)
      on paired batches; E epochs over D_f. Without the retain batches accuracy collapses.
    * `forget_only`: CE(D_f, ỹ) alone (seed 004: 1 epoch, lr 7e-4).
    * `whole`: one pass over D_f ∪ D_r with D_f relabelled (seed 004: 5 epochs, lr 2e-3).
    * `hybrid`: `forget_only` (seed 004: 1 epoch, lr 0.01), then FT on D_r for
      `repair_epochs` at `repair_lr` (seed 004: 5 epochs, lr 0.001).
  Reads: forget and retain. Defaults: interleaved, 5 epochs, lr 0.01, batch 64.
  """
  if variant not in RANDOM_LABEL_VARIANTS:
    raise ValueError(f"--random_label.variant={variant!r} is unknown; allowed: "
                     f"{', '.join(RANDOM_LABEL_VARIANTS)}")
  model, C = ctx.model, ctx.num_classes

  def poisoned_ce(variables, batch, key):
    x, y_wrong = batch
    logits, stats = train_lib.forward(model, variables, x, train=True)
    return train_lib.cross_entropy(logits, y_wrong).mean(), (stats, {})

  def interleaved_loss(retain):
    def loss_fn(variables, batch, key):
      xf, yf_wrong = batch
      xr, yr = sample_batch(retain, key, batch_size)
      logits, stats = train_lib.forward(model, variables, jnp.concatenate([xf, xr]), train=True)
      lf = train_lib.cross_entropy(logits[: xf.shape[0]], yf_wrong)
      lr_ = train_lib.cross_entropy(logits[xf.shape[0]:], yr)
      return lf.mean() + retain_weight * lr_.mean(), (stats, {})
    return loss_fn

  def unlearn(variables, data: UnlearnData, key):
    k_label, k1, k2 = jax.random.split(key, 3)
    xf, yf = data.forget
    poisoned = (xf, random_other_labels(k_label, yf, C))
    tx = sgd(lr, momentum=0.9)
    if variant == "interleaved":
      variables, _ = run_epochs(make_step(interleaved_loss(data.retain), tx), variables, tx,
                                poisoned, k1, epochs, batch_size)
    elif variant in ("forget_only", "hybrid"):
      variables, _ = run_epochs(make_step(poisoned_ce, tx), variables, tx, poisoned, k1,
                                epochs, batch_size)
      if variant == "hybrid":
        variables, _ = finetune_on(model, variables, data.retain, k2, epochs=repair_epochs,
                                   lr=repair_lr, batch_size=batch_size)
    else:  # whole: D_f (poisoned) ∪ D_r
      xr, yr = data.retain
      both = (jnp.concatenate([xf, xr]), jnp.concatenate([poisoned[1], yr]))
      variables, _ = run_epochs(make_step(poisoned_ce, tx), variables, tx, both, k1, epochs,
                                batch_size)
    return variables, {}

  return unlearn
