"""Host metrics under `jit`: attack classifiers (scikit-learn) and the per-example ε families
run in NumPy on the host. `host_metric` lets them be called from traced code too: given
concrete arrays it calls the NumPy function directly; given tracers (inside `jit` or `vmap`)
it goes through `jax.pure_callback` (sequentially over a vmapped axis), with the result's
shapes from `result_shape(*args)`. float64 results come back as float32 unless x64 is on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def host_metric(result_shape):
  """Decorator: `result_shape(*shapes)` (a pytree of shape tuples) describes the output."""

  def wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
      traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(args))
      if not traced:
        return fn(*args, **kwargs)
      dtype = _float_dtype()
      shapes = jax.tree_util.tree_map(
          lambda s: jax.ShapeDtypeStruct(tuple(s), dtype), result_shape(*[jnp.shape(a) for a in args]),
          is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(d, int) for d in s))
      cast = lambda out: jax.tree_util.tree_map(lambda v: np.asarray(v, dtype), out)
      return jax.pure_callback(lambda *a: cast(fn(*[np.asarray(x) for x in a], **kwargs)),
                               shapes, *args, vmap_method="sequential")
    call.host = fn      # the NumPy function itself
    return call

  return wrap


SCALAR = lambda *shapes: ()
ROC = lambda *shapes: {"auc": (), "balanced_accuracy": (), "tpr_at_0.1%_fpr": (),
                       "tpr_at_1%_fpr": ()}
