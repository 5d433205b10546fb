"""Importances: how much each weight matters to a set, the quantities weight surgery reads.

Computed in eval mode (BatchNorm uses its running statistics) with the weights held fixed,
over fixed-order batches whose last batch is short, as the reference loaders' are
(`batching.batched_mean`: a mean of batch statistics; `batching.example_mean`: an exact
mean over examples). Used by the SSD family (`weight_importance`), Fisher forgetting (the
diagonal empirical Fisher, `kind="fisher"`), SalUn (`saliency_mask`) and influence
unlearning (`per_example_grads`).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from unlearn_jax import losses
from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import batched_mean, example_mean, fixed_batches, masked_mean

tree_map = jax.tree_util.tree_map


def ce_gradient(model, variables, x, y, valid=None):
  """∇θ of the mean CE over the batch (over its `valid` rows when given), eval mode."""
  model = as_adapter(model)
  def loss(params):
    ce = losses.cross_entropy(model.logits({**variables, "params": params}, x), y)
    return ce.mean() if valid is None else masked_mean(ce, valid)
  return jax.grad(loss)(variables["params"])


def weight_importance(model, variables, data, batch_size: int, kind: str = "batch"):
  """Diagonal importance of each weight for the data.

  * `batch` (SSD's reference code): mean over the ⌈n/B⌉ minibatches of
    (∇θ mean-batch CE)², the last batch short (its mean over its own rows).
  * `fisher`: the exact diagonal empirical Fisher, mean over the n examples of (∇θ CE_i)²
    (per-example gradients through `vmap(grad)`).
  * `label_free` (LFSSD's reference code): mean over minibatches of |∇θ mean_x ‖f(x)‖²|.
  """
  model = as_adapter(model)
  if kind == "batch":
    return batched_mean(lambda b, valid: tree_map(jnp.square,
                                                  ce_gradient(model, variables, *b, valid)),
                        data, batch_size)
  if kind == "fisher":
    def per_example(b):
      per_ex = jax.vmap(lambda x, y: ce_gradient(model, variables, x[None], y[None]))(*b)
      return tree_map(jnp.square, per_ex)
    return example_mean(per_example, data, batch_size)
  if kind == "label_free":
    def fn(b, valid):
      def sq_norm(params):
        out = model.logits({**variables, "params": params}, b[0])
        return masked_mean(jnp.sum(jnp.square(out), axis=-1), valid)
      return tree_map(jnp.abs, jax.grad(sq_norm)(variables["params"]))
    return batched_mean(fn, data, batch_size)
  raise ValueError(f"importance kind {kind!r} is unknown; allowed: batch, fisher, label_free")


def top_fraction_mask(scores, keep: float):
  """A tree of bools marking exactly ⌊N·keep⌋ of the N leaves' entries: those with the
  largest scores, ties broken by position in the flattened tree (a stable sort), as
  SalUn's reference (`generate_mask.py`: ranks from an argsort, rank < ⌊N·keep⌋)."""
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  flat = jnp.concatenate([jnp.ravel(g) for g in leaves])
  n = flat.shape[0]
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  # ⌊N·keep⌋ in float64 arithmetic on the host when keep is a Python number; `keep` may
  # also be traced (a searched hyperparameter), then in float32.
  k = int(n * keep) if isinstance(keep, (int, float)) else jnp.floor(n * keep)
  marked = ranks < k
  out, start = [], 0
  for g in leaves:
    out.append(marked[start:start + g.size].reshape(g.shape))
    start += g.size
  return jax.tree_util.tree_unflatten(treedef, out)


def per_example_grads(model, variables, data, batch_size: int) -> jax.Array:
  """[n, P]: the flattened CE gradient of every example (eval mode), via `vmap(grad)`."""
  model = as_adapter(model)
  flat0, unravel = jax.flatten_util.ravel_pytree(variables["params"])

  def one(x, y):
    g = ce_gradient(model, variables, x[None], y[None])
    return jax.flatten_util.ravel_pytree(g)[0]

  out = jax.lax.map(lambda b: jax.vmap(one)(*b), fixed_batches(data, batch_size)[0])
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  return out.reshape(-1, flat0.shape[0])[:n]


def saliency_mask(model, variables, forget, batch_size: int, keep: float):
  """1 for exactly ⌊N·keep⌋ weights: the largest |∇θ CE(D_f)|, the gradient a mean over
  fixed-order forget batches (the last one short), as SalUn's reference accumulates it."""
  model = as_adapter(model)
  grads = batched_mean(lambda b, valid: ce_gradient(model, variables, *b, valid), forget,
                       batch_size)
  return top_fraction_mask(tree_map(jnp.abs, grads), keep)
