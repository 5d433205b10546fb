"""Curvature: Fisher forgetting (Golatkar et al. 2020) and influence unlearning (Koh & Liang
2017; Izzo et al. 2021; Jia et al. 2023), both one-shot edits read off second-order
information of the retain set."""

from __future__ import annotations


import math

import jax
import jax.flatten_util
import jax.numpy as jnp

from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import subsample, weighted_batch_mean
from unlearn_jax.importance import ce_gradient, per_example_grads, weight_importance
from unlearn_jax.methods.base import MethodContext, one_shot, register

tree_map = jax.tree_util.tree_map


FISHER_CLASS_HEADS = ("zero", "noise")


@register("fisher_forgetting", space=dict(alpha=("log", 1e-9, 1e-2)),
          reads=("retain",), paper=('Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net: '
                                    'Selective Forgetting in Deep Networks", CVPR 2020'),
          choices=dict(class_head=FISHER_CLASS_HEADS), needs=("head",),
          defaults=dict(alpha=1e-6, max_examples=2000, batch_size=128, class_head="zero"),
          bounds=dict(alpha="[0, inf)", max_examples="[1, inf)", batch_size="[1, inf)"))
def fisher_forgetting(ctx: MethodContext, *, alpha, max_examples, batch_size, class_head):
  """Fisher forgetting: Gaussian noise, largest where the retain set does not care.

  F_r = diagonal empirical Fisher on (a random subset of at most `max_examples` of) D_r,
  from per-example gradients; θ = θ0 + sqrt(α·min(1/(F_r + 1e-8), 1e3))·ε, ε ~ N(0, I).
  Class forgetting (`MethodContext.forget_classes` given) with `class_head="zero"` (the
  default) also does what the reference's class branch does (Golatkar et al.'s
  `get_mean_var`: the forgotten class's output row gets mean 0 and variance 1e-4·10): the
  head's kernel column and bias of each forgotten class become N(0, 1e-3) draws, so the
  class's logit carries no learned evidence. It needs the adapter's `head`; `"noise"`
  keeps the head like every other layer (and needs no head).
  Reads: retain. Defaults: α 1e-6 (published 1e-6..1e-8 for larger nets), 2000 examples,
  class_head "zero". In the random scenario the head branch does not apply. `batch_size`
  (128) only chunks the per-example gradients (the Fisher is the exact mean over the
  examples); on XLA's CPU backend chunks below 64 examples are an order of magnitude
  slower.
  """
  model = as_adapter(ctx.model)
  zero_head = bool(ctx.forget_classes) and class_head == "zero"
  if zero_head:
    model.require_head("fisher_forgetting (class_head='zero'; class_head='noise' needs none)")
  classes = jnp.asarray(ctx.forget_classes, jnp.int32)

  def edit(variables, data, key):
    k_sub, k_noise, k_head = jax.random.split(key, 3)
    n = data.retain[0].shape[0]
    retain = subsample(data.retain, k_sub, min(1.0, max_examples / n))
    fisher = weight_importance(model, variables, retain, batch_size, "fisher")
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(k_noise, len(leaves))
    f_leaves = jax.tree_util.tree_leaves(fisher)
    noisy = [p + jnp.sqrt(alpha * jnp.minimum(1.0 / (f + 1e-8), 1e3)) *
             jax.random.normal(k, p.shape, p.dtype) for p, f, k in zip(leaves, f_leaves, keys)]
    params = jax.tree_util.tree_unflatten(treedef, noisy)
    if zero_head:
      head = dict(model.head_params(params, "fisher_forgetting"))
      k_w, k_b = jax.random.split(k_head)
      std = math.sqrt(1e-3)
      kernel = head["kernel"]
      head["kernel"] = kernel.at[:, classes].set(
          std * jax.random.normal(k_w, (kernel.shape[0], classes.size), kernel.dtype))
      if "bias" in head:
        head["bias"] = head["bias"].at[classes].set(
            std * jax.random.normal(k_b, (classes.size,), head["bias"].dtype))
      params = model.replace_head(params, head)
    return {**variables, "params": params}, {}

  return one_shot("fisher_forgetting", edit)


def woodfisher_inverse_product(grads: jax.Array, v: jax.Array, damp: float) -> jax.Array:
  """F⁻¹v for the WoodFisher estimate F = λI + (1/N)·Σ_i g_i g_iᵀ.

  WoodFisher (Singh & Alistarh 2020) builds F⁻¹ by N Sherman–Morrison rank-1 updates
  from F₀⁻¹ = I/λ: F_{k+1}⁻¹ = F_k⁻¹ − F_k⁻¹g gᵀF_k⁻¹ / (N + gᵀF_k⁻¹g). After all N updates
  this is exactly the Woodbury form used here, which needs an N×N solve instead of a
  P×P matrix:  F⁻¹v = (v − Gᵀ(NλI + GGᵀ)⁻¹Gv)/λ,  G = [g_1 … g_N] (tests check it against
  the recursion).
  """
  n = grads.shape[0]
  gram = grads @ grads.T + n * damp * jnp.eye(n, dtype=grads.dtype)
  coef = jnp.linalg.solve(gram, grads @ v)
  return (v - grads.T @ coef) / damp


@register("influence", space=dict(alpha=("log", 0.01, 2.0), damp=("log", 1e-5, 0.1)),
          reads=("forget", "retain"),
          paper=('Koh & Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017; '
                 'Izzo, Smart, Chaudhuri & Zou, "Approximate Data Deletion from Machine Learning Models", '
                 'AISTATS 2021; Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023 '
                 '(IU with WoodFisher)'),
          aux=dict(
              fisher_examples="the retain examples whose per-example gradients make the empirical "
                              "Fisher (min(num_examples, |D_r|, what max_gradient_mib holds))",
              step_norm='‖α·F⁻¹v‖, the length of the Newton step taken'),
          defaults=dict(alpha=0.2, num_examples=1000, damp=1e-3, max_gradient_mib=2048.0,
                        batch_size=64),
          bounds=dict(alpha="[0, inf)", num_examples="[1, inf)", damp="[0, inf)",
                      max_gradient_mib="(0, inf)", batch_size="[1, inf)"))
def influence(ctx: MethodContext, *, alpha, num_examples, damp, max_gradient_mib, batch_size):
  """Influence unlearning (IU): one Newton-style step that removes D_f's influence.

      θ ← θ0 + α·F⁻¹(g_f − g_r),   g_f = (n_f/n)·∇θ L(D_f),  g_r = (n_r/n)·∇θ L(D_r),

  each mean-CE gradient weighted by its set's share of D (as in the IU reference code),
  and F⁻¹ the WoodFisher inverse of the empirical Fisher built from `num_examples`
  per-example retain gradients, dampened by λ = `damp`, computed exactly through Woodbury
  (`woodfisher_inverse_product`). λ is ours: the reference recursion starts from F₀⁻¹ = I
  (λ = 1), under which the step barely moves a small model; λ = 1e-3 lets the step act
  along directions the retain gradients do not span. The
  per-example gradients are held as an N×P matrix: N is capped so that it takes at most
  `max_gradient_mib` MiB (the cap binds for the CIFAR CNN, N ≈ 380; the effective N is
  in aux). BatchNorm statistics are unchanged.
  Reads: forget and retain. Defaults: α 0.2 (published), N 1000, λ 1e-3, batch 64,
  per-example gradients held to 2048 MiB.
  """
  def edit(variables, data, key):
    flat, unravel = jax.flatten_util.ravel_pytree(variables["params"])
    n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
    n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
    cap = max(1, int(max_gradient_mib * 2 ** 20 // (4 * flat.shape[0])))
    n_fisher = int(min(num_examples, n_r, cap))
    sample = subsample(data.retain, key, n_fisher / n_r)
    grads = per_example_grads(ctx.model, variables, sample, batch_size)
    mean_grad = lambda d: jax.flatten_util.ravel_pytree(
        weighted_batch_mean(lambda b, valid: ce_gradient(ctx.model, variables, *b, valid), d,
                            batch_size))[0]
    v = (n_f * mean_grad(data.forget) - n_r * mean_grad(data.retain)) / (n_f + n_r)
    delta = woodfisher_inverse_product(grads, v, damp)
    params = unravel(flat + alpha * delta)
    return {**variables, "params": params}, {"fisher_examples": jnp.float32(n_fisher),
                                            "step_norm": alpha * jnp.linalg.norm(delta)}

  return one_shot("influence", edit)


