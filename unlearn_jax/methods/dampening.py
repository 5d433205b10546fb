"""Synaptic dampening: shrink or move the weights far more important to D_f than to D.

SSD (Foster et al. 2024), its adaptive threshold (ASSD, Schoepf et al. 2024), its label-free
importance (LFSSD, Foster et al. 2024) and GISA (ours, after the MUFAC scoring notebook's
description). Importances: `unlearn_jax.importance.weight_importance`.
"""

from __future__ import annotations


import math

import jax
import jax.numpy as jnp

from unlearn_jax.batching import batched_mean
from unlearn_jax.importance import ce_gradient, weight_importance
from unlearn_jax.methods.base import (MethodContext, ce_phase, edit_phase, model_state,
                                      one_shot, register)
from unlearn_jax.steps import StepState, Steps

tree_map = jax.tree_util.tree_map


def dampen(params, imp_forget, imp_all, alpha: float, lam: float):
  """SSD's rule: where I_f > α·I_D, θ ← min(λ·I_D/I_f, 1)·θ; elsewhere θ unchanged."""
  def one(p, i_f, i_d):
    selected = i_f > alpha * i_d
    factor = jnp.minimum(lam * i_d / jnp.where(selected, i_f, 1.0), 1.0)
    return jnp.where(selected, factor * p, p)
  return tree_map(one, params, imp_forget, imp_all)


SSD_UNIONS = ("ordered", "shuffled")


def union_set(forget, retain, key, order: str = "ordered"):
  """D = D_r ∪ D_f for SSD-style importances on D.

  `ordered` (SSD's reference code): the unshuffled concatenation retain-then-forget, so the
  last ⌈|D_f|/B⌉ batches are forget-only. `shuffled`: a random order (our earlier default):
  in mixed batches the forget gradient is diluted, I_D is smaller and more weights pass
  I_f > α·I_D. The order matters because batch importances average *squared batch-mean*
  gradients."""
  if order not in SSD_UNIONS:
    raise ValueError(f"union={order!r} is unknown; allowed: {', '.join(SSD_UNIONS)}")
  both = tree_map(lambda u, v: jnp.concatenate([u, v]), retain, forget)
  if order == "ordered":
    return both
  perm = jax.random.permutation(key, jax.tree_util.tree_leaves(both)[0].shape[0])
  return tree_map(lambda a: a[perm], both)


SSD_IMPORTANCE = ("batch", "fisher")



@register("ssd", space=dict(alpha=("log", 0.5, 50.0), lam=("log", 0.1, 10.0)),
          reads=("forget", "retain"), paper=('Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without '
                                             'Retraining Through Selective Synaptic Dampening", AAAI 2024'),
          aux=dict(
              dampened_weights='the number of weights the dampening changed'),
          choices=dict(importance=SSD_IMPORTANCE, union=SSD_UNIONS),
          defaults=dict(alpha=5.0, lam=1.0, importance="batch", union="ordered",
                        forget_batch_size=128, batch_size=64),
          bounds=dict(alpha="(0, inf)", lam="(0, inf)", forget_batch_size="[1, inf)",
                      batch_size="[1, inf)"))
def ssd(ctx: MethodContext, *, alpha, lam, importance, union, forget_batch_size, batch_size):
  """Selective Synaptic Dampening: shrink weights far more important to D_f than to D.

  I_f = importance on D_f, I_D on D = D_r ∪ D_f (`importance`: `batch` = mean over
  minibatches of squared minibatch-mean CE gradients, the reference code; `fisher` = exact
  diagonal empirical Fisher from per-example gradients). For each weight with I_f > α·I_D:
  θ ← min(λ·I_D/I_f, 1)·θ. No gradient step; BatchNorm statistics are left as they are.
  Reads: forget and retain. Defaults: α 5, λ 1, union ordered, batches 128 (D_f) and 64
  (D). The paper's α is 10; with the reference's loaders it selects too few weights on the
  small models to erase a class, hence 5 (the documentation's "Parity with the reference code").
  Importances use SSD's reference loaders (if-loops/selective-synaptic-dampening,
  `forget_random_main.py`): D_f in order with batch `forget_batch_size` (128), D = D_r then
  D_f unshuffled (`union="ordered"`) with batch `batch_size` (64 in its CIFAR scripts); each
  last batch is short. `union="shuffled"` shuffles D instead.
  """
  def edit(variables, data, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, importance)
    imp_d = weight_importance(ctx.model, variables, union_set(data.forget, data.retain, key, union),
                              batch_size, importance)
    params = dampen(variables["params"], imp_f, imp_d, alpha, lam)
    changed = sum(jnp.sum(p != q) for p, q in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(variables["params"])))
    return {**variables, "params": params}, {"dampened_weights": changed}

  return one_shot("ssd", edit)


def assd_alpha(imp_forget, imp_all, forget_fraction: float):
  """ASSD's selection threshold: the p-th percentile of the finite ratios I_f/I_D over all
  weights, p = 100 − ln(1 + 100·|D_f|/|D|), so SSD's test I_f > α·I_D passes the top
  ln(1 + 100·|D_f|/|D|) % of weights by relative importance."""
  p = 100.0 - math.log1p(100.0 * forget_fraction)
  ratios = jnp.concatenate([jnp.ravel(f / d) for d, f in zip(jax.tree_util.tree_leaves(imp_all),
                                                             jax.tree_util.tree_leaves(imp_forget))])
  return jnp.nanquantile(jnp.where(jnp.isfinite(ratios), ratios, jnp.nan), p / 100.0)


ASSD_IMPORTANCE_SETS = ("retain", "full")


@register("assd", reads=("forget", "retain"),
          paper=('Schoepf, Foster & Brintrup, "Parameter-tuning-free Data Entry Error Unlearning with '
                 'Adaptive Selective Synaptic Dampening", arXiv 2024 (ASSD)'),
          aux=dict(
              alpha='the selection threshold α chosen from the importances',
              dampened_weights='the number of weights the dampening changed'),
          choices=dict(importance=SSD_IMPORTANCE, union=SSD_UNIONS,
                       importance_set=ASSD_IMPORTANCE_SETS),
          defaults=dict(importance="batch", importance_set="retain", union="ordered",
                        forget_batch_size=128, batch_size=64),
          bounds=dict(forget_batch_size="[1, inf)", batch_size="[1, inf)"))
def assd(ctx: MethodContext, *, importance, importance_set, union, forget_batch_size,
         batch_size):
  """Adaptive SSD: SSD with its threshold α read off the importances, λ = 1: nothing to tune.

  As the authors' code runs it (if-loops/adaptive-selective-synaptic-dampening,
  `error_unlearning.ipynb`): I_f is SSD's importance on D_f and I_D on the **retain** set
  (`importance_set="retain"`); `"full"` computes I_D on D = D_r ∪ D_f in SSD's order
  (`union`), as SUPREME's port does. α = the p-th percentile (NumPy's linear
  interpolation) of the ratios I_f/I_D over every weight, NaN and ±inf dropped, with
  p = 100 − ln(1 + 100·|D_f|/(|D_r| + |D_f|)); then SSD's rule with λ = 1: where
  I_f > α·I_D, θ ← min(I_D/I_f, 1)·θ. Importances: mean over unshuffled batches of the
  squared batch-mean CE gradient (`importance="batch"`, SSD's `calc_importance`).
  Reads: forget and retain. Defaults: I_D on D_r, batches 128 (D_f) and 64 (D_r or D),
  union ordered. Aux: `alpha` (the threshold chosen) and `dampened_weights`.
  """
  ratio_set = importance_set

  def edit(variables, data, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, importance)
    reference = data.retain if ratio_set == "retain" else union_set(data.forget, data.retain,
                                                                    key, union)
    imp_d = weight_importance(ctx.model, variables, reference, batch_size, importance)
    n_f, n_r = data.forget[0].shape[0], data.retain[0].shape[0]
    alpha = assd_alpha(imp_f, imp_d, n_f / (n_f + n_r))
    params = dampen(variables["params"], imp_f, imp_d, alpha, 1.0)
    changed = sum(jnp.sum(p != q) for p, q in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(variables["params"])))
    return {**variables, "params": params}, {"alpha": alpha, "dampened_weights": changed}

  return one_shot("assd", edit)


@register("lfssd", space=dict(alpha=("log", 0.5, 50.0), lam=("log", 0.1, 10.0)),
          reads=("forget", "retain"), paper=('Foster, Schoepf & Brintrup, "Loss-Free Machine Unlearning", '
                                             'ICLR 2024 Tiny Papers'),
          choices=dict(union=SSD_UNIONS),
          defaults=dict(alpha=5.0, lam=1.0, union="ordered", forget_batch_size=128,
                        batch_size=64),
          bounds=dict(alpha="(0, inf)", lam="(0, inf)", forget_batch_size="[1, inf)",
                      batch_size="[1, inf)"))
def lfssd(ctx: MethodContext, *, alpha, lam, union, forget_batch_size, batch_size):
  """Label-free SSD: SSD's dampening with importances that need no labels.

  Importance = mean over minibatches of |∇θ mean_x ‖f(x)‖²| (the sensitivity of the
  output norm), on D_f and on D = D_r ∪ D_f; then θ ← min(λ·I_D/I_f, 1)·θ where
  I_f > α·I_D. Labels are never read (the label arrays are ignored).
  Reads: forget and retain (inputs only). Defaults: α 5, λ 1, union ordered, batches 128
  (D_f) and 64 (D), as SSD's (α 5 rather than the paper's 10, as for `ssd`).
  Importances use SSD's reference loaders (if-loops/selective-synaptic-dampening,
  `forget_random_main.py`): D_f in order with batch `forget_batch_size` (128), D = D_r then
  D_f unshuffled (`union="ordered"`) with batch `batch_size` (64 in its CIFAR scripts); each
  last batch is short. `union="shuffled"` shuffles D instead.
  """

  def edit(variables, data, key):
    imp_f = weight_importance(ctx.model, variables, data.forget, forget_batch_size, "label_free")
    imp_d = weight_importance(ctx.model, variables, union_set(data.forget, data.retain, key, union),
                              batch_size, "label_free")
    return {**variables, "params": dampen(variables["params"], imp_f, imp_d, alpha, lam)}, {}

  return one_shot("lfssd", edit)


@register("gisa", space=dict(alpha=("log", 0.5, 50.0), step=("log", 0.01, 3.0), repair_lr=("log", 1e-3, 0.1)),
          reads=("forget", "retain"),
          paper=('the MUFAC scoring notebook; no public definition exists, this is our interpretation of '
                 'its name'),
          choices=dict(union=SSD_UNIONS),
          defaults=dict(alpha=5.0, step=1.0, repair_epochs=1, repair_lr=0.01, union="ordered",
                        forget_batch_size=128, batch_size=64),
          bounds=dict(alpha="(0, inf)", step="(0, inf)", repair_epochs="[0, inf)", repair_lr="(0, inf)",
                      forget_batch_size="[1, inf)", batch_size="[1, inf)"))
def gisa(ctx: MethodContext, *, alpha, step, repair_epochs, repair_lr, union, forget_batch_size,
         batch_size):
  """GISA (Gradient-Informed Synaptic Adjustment) — our interpretation of the MUFAC scoring notebook's.

  No public definition exists. Synapses are selected as in SSD (importances on D_f and
  on D = D_r ∪ D_f with SSD's batches and order, selected where I_f > α·I_D); instead of dampening, each
  selected weight takes a gradient-ascent step on D_f scaled per weight by s_i = 1 − I_D,i/I_f,i ∈ (0, 1]:
      θ_i ← θ_i + η·s_i·ĝ_i,  ĝ = ∇θ CE(D_f) / max|∇θ CE(D_f)| (normalised per tensor),
  unselected weights unchanged; then a short repair FT on D_r.
  Reads: forget and retain. Defaults: α 5 (SSD's), η 1.0 (× the tensor's max |θ|), 1 repair
  epoch at lr 0.01, union ordered, batches 128 (D_f importance and gradient) and 64 (D,
  repair).
  """

  model = ctx.model

  def init(variables, data, key):
    k_mix, k_ft = jax.random.split(key)
    return StepState(model_state(variables), {"forget": data.forget, "retain": data.retain},
                     {"adjust": k_mix, "repair": k_ft})

  def adjust_selected(state, variables, k_mix):
    data = state.feeds
    imp_f = weight_importance(model, variables, data["forget"], forget_batch_size, "batch")
    imp_d = weight_importance(model, variables,
                              union_set(data["forget"], data["retain"], k_mix, union),
                              batch_size, "batch")
    grad_f = batched_mean(lambda b, valid: ce_gradient(model, variables, *b, valid),
                          data["forget"], forget_batch_size)

    def adjust(p, i_f, i_d, g):
      selected = i_f > alpha * i_d
      scale = jnp.where(selected, 1.0 - i_d / jnp.where(selected, i_f, 1.0), 0.0)
      g_hat = g / (jnp.max(jnp.abs(g)) + 1e-12)
      return p + step * jnp.max(jnp.abs(p)) * scale * g_hat

    return {**variables, "params": tree_map(adjust, variables["params"], imp_f, imp_d,
                                            grad_f)}, {}

  return Steps(init, (edit_phase("adjust", adjust_selected),
                      ce_phase("repair", model, "retain", epochs=repair_epochs, lr=repair_lr,
                               batch_size=batch_size)))


