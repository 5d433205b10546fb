"""Parameter-space metrics: how far an unlearned model's weights are from the retrained
model's, layer by layer (both start from the same initial weights in this library's
runs, so the distance is meaningful)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _layers(params) -> dict:
  """{layer name: list of leaves}: the top-level entries of a params tree (a Flax module's
  submodules: `Dense_0`, `conv1`, `stage2_block0`, `head`, ...)."""
  if not isinstance(params, dict) or not params:
    return {"all": jax.tree_util.tree_leaves(params)}
  return {str(k): jax.tree_util.tree_leaves(v) for k, v in params.items()}


def layer_distance(params, reference_params) -> dict:
  """Relative L2 distance per layer (SUPREME's layer-wise distance, normalised):

      d_ℓ = ‖θ_ℓ − θ*_ℓ‖₂ / ‖θ*_ℓ‖₂

  over all of layer ℓ's parameters (kernel and bias together), θ* the reference (the
  retrained model). Inputs: two params trees of the same structure. Returns {layer: scalar}
  in the tree's order; `jax.numpy`, runs under `jit`/`vmap`. Ideal: 0 (retrain's weights).
  """
  ours, ref = _layers(params), _layers(reference_params)
  if list(ours) != list(ref):
    raise ValueError(f"layer_distance: the trees' layers differ: {list(ours)} vs {list(ref)}")
  out = {}
  for name in ours:
    diff = sum(jnp.sum(jnp.square(a - b)) for a, b in zip(ours[name], ref[name]))
    norm = sum(jnp.sum(jnp.square(b)) for b in ref[name])
    out[name] = jnp.sqrt(diff) / jnp.maximum(jnp.sqrt(norm), 1e-12)
  return out


def mean_layer_distance(params, reference_params):
  """The mean over layers of `layer_distance` (one number for a table). Ideal: 0."""
  d = layer_distance(params, reference_params)
  return jnp.mean(jnp.stack(list(d.values())))
