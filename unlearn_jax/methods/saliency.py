"""SalUn (Fan et al. 2024, ICLR): random-label unlearning restricted to the salient weights."""

from __future__ import annotations

import dataclasses


import jax
import jax.numpy as jnp

from unlearn_jax import losses
from unlearn_jax.batching import sample_batch
from unlearn_jax.importance import saliency_mask
from unlearn_jax.methods.base import (MethodContext, gradient_phase, random_other_labels,
                                      register, sgd)
from unlearn_jax.steps import StepState, Steps, init_train_state

tree_map = jax.tree_util.tree_map


SALUN_SCHEDULES = ("paired", "reference")


@register("salun", space=dict(keep=("linear", 0.1, 0.9), lr=("log", 1e-4, 0.1)),
          reads=("forget", "retain"), paper=('Fan, Liu, Zhang, Wong, Wei & Liu, "SalUn: Empowering Machine '
                                             'Unlearning via Gradient-based Weight Saliency in Both Image '
                                             'Classification and Generation", ICLR 2024'),
          aux=dict(
              salient_weights='the number of weights in the saliency mask (the only ones updated)'),
          choices=dict(schedule=SALUN_SCHEDULES),
          defaults=dict(keep=0.5, schedule="paired", epochs=10, lr=0.013, batch_size=64,
                        weight_decay=5e-4),
          bounds=dict(keep="(0, 1]", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)",
                      weight_decay="[0, inf)"))
def salun(ctx: MethodContext, *, keep, schedule, epochs, lr, batch_size, weight_decay):
  """SalUn: random-label unlearning restricted to the forget-salient weights.

  Mask m = 1 for exactly ⌊N·keep⌋ of the N weights, those with the largest |∇θ CE(θ0; D_f)|
  (ties by position, as the reference's sort). Then random-label training, SGD momentum
  with weight decay, where the mask is applied to the *result* of the optimizer step:
  θ ← m ⊙ θ_new + (1 − m) ⊙ θ, so masked-out weights stay bitwise θ0 (weight decay and
  momentum cannot move them; the reference masks gradients, and its weight decay still
  shrinks masked weights). BatchNorm statistics are not masked. `schedule`:
    * `paired` (default): E epochs over D_f, each example with one wrong label drawn once
      uniformly from the other classes, each D_f batch trained together with a random
      D_r batch. Costs E·|D_f|/B steps: the 10% random scenario is 10× cheaper than the
      reference's schedule, and a label equal to the truth teaches nothing to forget.
    * `reference` (OPTML-Group/Unlearn-Saliency, `RL.py`, CIFAR-10 branch): per epoch, one
      pass over D_f with labels redrawn every batch uniformly over *all* classes (the true
      one included), then one pass over all of D_r with true labels.
  Reads: forget and retain. Defaults: keep 0.5, paired, 10 epochs, lr 0.013, batch 64,
  wd 5e-4.
  """
  model, C = ctx.model, ctx.num_classes
  tx = sgd(lr, momentum=0.9, weight_decay=weight_decay)

  def init(variables, data, key):
    k_label, k_run = jax.random.split(key)
    mask = saliency_mask(model, variables, data.forget, batch_size, keep)
    xf, yf = data.forget
    feeds = {"forget": data.forget, "retain": data.retain,
             "poisoned": (xf, random_other_labels(k_label, yf, C))}
    keys = {"cycle": k_run} if schedule == "reference" else {"paired": k_run}
    return StepState(init_train_state(variables, tx), feeds, keys, {"mask": mask})

  def paired_loss(state, v, batch, k):
    xb, yb = batch
    xr, yr = sample_batch(state.feeds["retain"], k, batch_size)
    logits, updates = model.apply(v, jnp.concatenate([xb, xr]), train=True, rng=k)
    return losses.cross_entropy(logits, jnp.concatenate([yb, yr])).mean(), (updates, {})

  def forget_loss(state, v, batch, k):   # the reference: labels uniform over all classes
    x, y = batch
    k_label, k_model = jax.random.split(k)
    labels = jax.random.randint(k_label, y.shape, 0, C)
    logits, updates = model.apply(v, x, train=True, rng=k_model)
    return losses.cross_entropy(logits, labels).mean(), (updates, {})

  retain_ce = losses.ce_loss(model)
  report = lambda st, h: {"salient_weights": sum(
      jnp.sum(m) for m in jax.tree_util.tree_leaves(st.const["mask"]))}
  # One optimizer state (made by init) through every phase.
  phase = lambda name, loss, source: gradient_phase(
      name, loss, source, epochs=1 if schedule == "reference" else epochs,
      batch_size=batch_size, mask="mask", fresh=False, optimizer=lambda total: tx)
  if schedule == "paired":
    return Steps(init, (phase("paired", paired_loss, "poisoned"),), report=report)
  # The reference's schedule: per epoch a D_f pass (labels redrawn per batch) then a D_r
  # pass.
  return Steps(init, (phase("forget", forget_loss, "forget"),
                      dataclasses.replace(phase("retain", lambda st, v, b, k: retain_ce(v, b, k),
                                                "retain"), slot=1)),
               cycles=epochs, report=report)
