"""Hyperparameter search as one program: K configurations × S seeds under two `vmap`s.

A method's float hyperparameters (learning rates, thresholds, temperatures, weights) are
arithmetic inside its update, so they can arrive as traced values: the method's factory
is called *inside* the vmapped function with tracers for the searched hyperparameters and
Python values for the rest. Every concrete configuration is validated first (the same
`HyperparameterError`s as a single run), so nothing reaches compilation unchecked.

Search spaces are declared in the registry (`register(..., space=...)`): for each
searchable hyperparameter ("log", low, high), ("linear", low, high), or a tuple of values.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.methods.base import SCALES, HyperparameterError


def sample_configs(method, budget: int, key: jax.Array, names=None) -> dict:
  """`budget` configurations of the method's searched hyperparameters ({name: [K]}):
  configuration 0 is the defaults, the others are drawn uniformly (log-uniformly on log
  scales, uniformly from value lists). `names` restricts the search to some of them."""
  if budget < 1:
    raise ValueError(f"budget={budget} must be >= 1")
  space = {k: v for k, v in method.space.items() if names is None or k in names}
  if names is not None:
    unknown = sorted(set(names) - set(method.space))
    if unknown:
      raise ValueError(f"{method.name}: {unknown[0]!r} has no search space; searchable: "
                       f"{', '.join(sorted(method.space)) or 'none'}")
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  out = {}
  for k, spec in sorted(space.items()):
    if spec[0] in SCALES:
      scale, low, high = spec
      u = rng.uniform(size=budget - 1)
      draws = (np.exp(np.log(low) + u * (np.log(high) - np.log(low))) if scale == "log"
               else low + u * (high - low))
    else:
      draws = rng.choice(np.asarray(spec), size=budget - 1)
    out[k] = np.concatenate([[method.defaults[k]], draws]).astype(np.float32)
  return out


def configs_list(configs: Mapping[str, np.ndarray]) -> list:
  """{name: [K]} -> K dicts of Python floats."""
  k = len(next(iter(configs.values()))) if configs else 1
  return [{n: float(v[i]) for n, v in configs.items()} for i in range(k)]


def grid_unlearn(method, ctx, configs: Mapping[str, np.ndarray], fixed: Mapping | None = None):
  """`fn(variables [S, ...], data, keys [S]) -> (variables [K, S, ...], aux [K, S])`: the
  method under every configuration × seed (seed s starts from original s), one program
  (the caller jits it).

  `configs` maps searched float hyperparameters to [K] values (`sample_configs`);
  `fixed` overrides other hyperparameters (Python values). Each configuration is
  validated as a single run would be (HyperparameterError) before anything is traced."""
  fixed = dict(fixed or {})
  overlap = sorted(set(fixed) & set(configs))
  if overlap:
    raise ValueError(f"{method.name}: {overlap[0]} is both fixed and searched")
  not_float = [k for k in configs if not isinstance(method.defaults.get(k), float)]
  if not_float:
    raise HyperparameterError(method.name, not_float[0], None,
                              "is not a float hyperparameter; only those are searched")
  for cfg in configs_list(configs):
    method.validate({**fixed, **cfg})
  base = method.validate(fixed)
  grid = {k: jnp.asarray(v, jnp.float32) for k, v in configs.items()}

  def one(hp, variables, data, key):
    return method.factory(ctx, **{**base, **hp})(variables, data, key)

  def run(variables, data, keys):
    per_seed = jax.vmap(one, in_axes=(None, 0, None, 0))
    return jax.vmap(per_seed, in_axes=(0, None, None, None))(grid, variables, data, keys)

  return run
