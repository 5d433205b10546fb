"""Batches: the one place that decides which examples a step, an epoch or a reduction reads.

* Training order (`epoch_plan`): epoch e of a run keyed `key` draws a permutation from
  `fold_in(fold_in(key, e), 0)` and its step keys from `fold_in(fold_in(key, e), 1)`; an
  epoch covers every example and the last batch wraps around to the start of the
  permutation, so a small forget set still takes full steps. Streaming input, the in-memory
  scan and every method read the same plan.
* A batch is never larger than the set it batches (`batch_for`): a batch size above the
  set's n gives batches of n, the whole set, as a PyTorch loader gives one batch of n; so
  the memory a step asks for is bounded by its inputs, whatever the batch size.
* Paired batches (`sample_batch`): a batch drawn uniformly with replacement, e.g. the retain
  batch that goes with each forget batch.
* Fixed-order reductions (`fixed_batches`, `batched_mean`, `weighted_batch_mean`,
  `example_mean`, `in_batches`): the examples in order, the short last batch padded and
  masked out, so statistics over a set equal a PyTorch loader's.

Every batch a step reads passes through `parallel.shard_batch` (split over a mesh's `data`
axis inside `parallel.data_parallel`; unchanged outside it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from unlearn_jax.parallel import shard_batch


def batch_for(n: int, batch_size: int) -> int:
  """The batch size used on a set of n examples: min(batch_size, n) (module docstring)."""
  return max(1, min(int(batch_size), int(n)))


def steps_per_epoch(n: int, batch_size: int) -> int:
  """⌈n / batch_size⌉ (at least 1)."""
  return max(1, math.ceil(n / batch_size))


def epoch_indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """[steps, batch_for(n, batch_size)] indices of a permutation; the last batch wraps around."""
  batch_size = batch_for(n, batch_size)
  nb = steps_per_epoch(n, batch_size)
  perm = jax.random.permutation(key, n)
  return jnp.resize(perm, (nb * batch_size,)).reshape(nb, batch_size)


def epoch_plan(key: jax.Array, epoch, n: int, batch_size: int):
  """(batch indices [steps, batch_size], step keys [steps]) of epoch `epoch`: the one
  derivation of an epoch's order (module docstring)."""
  ekey = jax.random.fold_in(key, epoch)
  idx = epoch_indices(jax.random.fold_in(ekey, 0), n, batch_size)
  return idx, jax.random.split(jax.random.fold_in(ekey, 1), idx.shape[0])


def sample_batch(data: tuple, key: jax.Array, batch_size: int) -> tuple:
  """A uniformly sampled batch (with replacement) from `(x, y)`: pairs retain batches
  with forget batches in the interleaved methods."""
  data = jax.tree_util.tree_map(jnp.asarray, data)
  n = data[0].shape[0]
  idx = jax.random.randint(key, (batch_for(n, batch_size),), 0, n)
  return shard_batch(jax.tree_util.tree_map(lambda a: a[idx], data))


def subsample(data: tuple, key: jax.Array, fraction: float, minimum: int = 1) -> tuple:
  """A random subset (without replacement) of a static size round(fraction·n)."""
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  k = int(min(n, max(minimum, round(fraction * n))))
  idx = jax.random.choice(key, n, (k,), replace=False)
  return jax.tree_util.tree_map(lambda a: a[idx], data)


def fixed_batches(data: tuple, batch_size: int) -> tuple:
  """`(batches, valid)`: `data` in order as [num_batches, batch_size, ...] and a
  [num_batches, batch_size] bool mask. The last batch is short, as a PyTorch loader's:
  its padding rows (wrapped from the start of the set) are marked invalid, and every
  reduction below leaves them out."""
  data = jax.tree_util.tree_map(jnp.asarray, data)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  batch_size = batch_for(n, batch_size)
  total = steps_per_epoch(n, batch_size) * batch_size
  idx = (jnp.arange(total) % n).reshape(-1, batch_size)
  valid = (jnp.arange(total) < n).reshape(-1, batch_size)
  return jax.tree_util.tree_map(lambda a: a[idx], data), valid


def masked_sum(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Sum of `values` [batch, ...] over the rows where `valid` [batch] is True."""
  w = valid.astype(values.dtype).reshape(valid.shape + (1,) * (values.ndim - 1))
  return jnp.sum(values * w, axis=0)


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of `values` [batch, ...] over the rows where `valid` [batch] is True."""
  return masked_sum(values, valid) / jnp.maximum(jnp.sum(valid), 1)


def batched_mean(fn: Callable, data: tuple, batch_size: int):
  """Mean over the ⌈n/B⌉ fixed-order batches of `fn(batch, valid)` (a pytree), one
  `lax.map`: a reference loader's `Σ_batches stat(batch) / len(loader)`. `fn` reduces its
  batch over the rows where `valid` is True (`masked_mean`), so the short last batch is a
  real short batch, not a wrapped full one."""
  batches, valid = fixed_batches(data, batch_size)
  out = jax.lax.map(lambda bv: fn(shard_batch(bv[0]), bv[1]), (batches, valid))
  return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), out)


def weighted_batch_mean(fn: Callable, data: tuple, batch_size: int):
  """Exact mean over the n examples from batch means: Σ_b |b|·fn(batch_b, valid_b) / n,
  where `fn` returns the mean over its batch's valid rows (`masked_mean`) — e.g. the mean
  CE gradient of a whole set without per-example gradients."""
  batches, valid = fixed_batches(data, batch_size)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  out = jax.lax.map(lambda bv: jax.tree_util.tree_map(
      lambda a: a * jnp.sum(bv[1]).astype(a.dtype), fn(shard_batch(bv[0]), bv[1])),
      (batches, valid))
  return jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0) / n, out)


def example_mean(fn: Callable, data: tuple, batch_size: int):
  """Exact mean over the n examples of `fn(batch) -> per-example values` (a pytree of
  [batch, ...] arrays), computed batch by batch in one `lax.map`; padding rows of the
  short last batch are left out."""
  batches, valid = fixed_batches(data, batch_size)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]

  sums = jax.lax.map(lambda bv: jax.tree_util.tree_map(
      lambda a: masked_sum(a, bv[1]), fn(shard_batch(bv[0]))), (batches, valid))
  return jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0) / n, sums)


def in_batches(fn: Callable, x: jax.Array, batch_size: int):
  """fn over fixed-size batches of x (`lax.map`, the last batch padded), rows restored."""
  x = jnp.asarray(x)
  n = x.shape[0]
  if n <= batch_size:
    return fn(shard_batch(x))
  nb = math.ceil(n / batch_size)
  padded = jnp.pad(x, ((0, nb * batch_size - n),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(lambda b: fn(shard_batch(b)), padded.reshape((nb, batch_size) + x.shape[1:]))
  return jax.tree_util.tree_map(lambda a: a.reshape((nb * batch_size,) + a.shape[2:])[:n], out)
