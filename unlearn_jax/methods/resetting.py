"""Resetting weights: reinitialise the layers, weights or kernels that carry D_f, then repair.

Reinit (Goel et al. 2022, CF-k / EU-k), the three selective-pruning variants and activation
reset of "Forget with Precision" (Krahenmann et al.).
"""

from __future__ import annotations


import flax.linen as nn
from flax import traverse_util

import jax
import jax.numpy as jnp

from unlearn_jax.adapter import as_adapter
from unlearn_jax.batching import masked_mean, subsample, weighted_batch_mean
from unlearn_jax.methods.base import (MethodContext, ce_phase, edit_phase, model_state,
                                      register)
from unlearn_jax.steps import StepState, Steps, with_enter

tree_map = jax.tree_util.tree_map


def _path_in(path: tuple, modules) -> bool:
  """Whether a flattened variable path lies inside one of the module paths."""
  return any(path[:len(m)] == tuple(m) for m in modules)


def reset_modules(variables: dict, fresh: dict, modules) -> dict:
  """`variables` with every leaf under one of the module paths (in every collection)
  taken from `fresh`."""
  out = {}
  for col, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    fresh_flat = traverse_util.flatten_dict(dict(fresh.get(col, {})))
    out[col] = traverse_util.unflatten_dict(
        {p: (fresh_flat[p] if _path_in(p, modules) and p in fresh_flat else v)
         for p, v in flat.items()})
  return out


@register("reinit", space=dict(lr=("log", 1e-3, 0.3)),
          reads=("retain",), paper=('Goel, Prabhu, Sanyal, Lim, Torr & Kumaraguru, "Towards Adversarial '
                                    'Evaluations for Inexact Machine Unlearning", arXiv 2022 (CF-k / EU-k)'),
          needs=("head",),
          defaults=dict(num_layers=1, epochs=5, lr=0.02, batch_size=64),
          bounds=dict(num_layers="[0, inf)", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)"))
def reinit(ctx: MethodContext, *, num_layers, epochs, lr, batch_size):
  """Reinitialise the last k layers, then fine-tune on D_r (EU-k style).

  k = 1 is the classifier head (the adapter's `head`). For k > 1 the layers are the
  modules with a `kernel` in the order a forward pass calls them
  (`ModelAdapter.layers`), each with the normalisation that follows it; the last k
  (which must end at the head) are replaced, in every collection, by fresh initial
  weights drawn from the key; then CE fine-tuning on D_r (SGD momentum, cosine lr).
  Reads: retain. Defaults: k 1 (the classifier head), 5 epochs, lr 0.02, batch 64.
  Needs the adapter's `head`.
  """
  adapter = ctx.model
  head = adapter.require_head("reinit")
  if num_layers < 1:
    raise ValueError(f"reinit: num_layers={num_layers} must be >= 1")

  def init(variables, data, key):
    k_init, k_ft = jax.random.split(key)
    return StepState(model_state(variables), {"retain": data.retain},
                     {"reset": k_init, "repair": k_ft})

  def reset(state, variables, k_init):
    fresh = adapter.init(k_init, ctx.input_shape)
    if num_layers == 1:
      modules = [head]
    else:
      layers = adapter.layers(variables, ctx.input_shape)
      if not layers or layers[-1][0] != head:
        raise ValueError(f"reinit: the last layer a forward pass calls is "
                         f"{layers[-1][0] if layers else None}, not the head {head}")
      if num_layers > len(layers):
        raise ValueError(f"reinit: num_layers={num_layers}, but the model has "
                         f"{len(layers)} layers")
      modules = [m for group in layers[-num_layers:] for m in group]
    return reset_modules(variables, fresh, modules), {}

  return Steps(init, (edit_phase("reset", reset),
                      ce_phase("repair", adapter, "retain", epochs=epochs, lr=lr,
                               batch_size=batch_size)))


def _low_change_mask(before, after, quantile, only=None):
  """True where |after − before| is below the tensor-global `quantile` (over the
  parameters under the module paths in `only`, or all); those weights are reinitialised."""
  flat_b = traverse_util.flatten_dict(dict(before))
  flat_a = traverse_util.flatten_dict(dict(after))
  scope = [p for p in flat_b if only is None or _path_in(p, only)]
  deltas = [jnp.abs(flat_a[p] - flat_b[p]).ravel() for p in scope]
  threshold = jnp.quantile(jnp.concatenate(deltas), quantile)
  return traverse_util.unflatten_dict(
      {p: (jnp.abs(flat_a[p] - b) < threshold if p in scope else jnp.zeros(b.shape, bool))
       for p, b in flat_b.items()})


PRUNE_SPACE = dict(quantile=("linear", 0.1, 0.95), overfit_lr=("log", 1e-3, 0.1),
                   lr=("log", 1e-4, 0.1))
PRUNE_DOC_DEFAULTS = dict(quantile=0.3, overfit_epochs=5, overfit_lr=0.01, epochs=5, lr=0.001,
                          batch_size=64)
PRUNE_BOUNDS = dict(quantile="(0, 1]", overfit_epochs="[0, inf)", overfit_lr="(0, inf)",
                    epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)")


def _prune_factory(scope: str):
  def factory(ctx: MethodContext, *, quantile, overfit_epochs, overfit_lr, epochs, lr,
              batch_size):
    model = ctx.model
    if scope == "last_layer":
      model.require_head("prune_last_layer")

    only = None if scope != "last_layer" else [model.require_head("prune_last_layer")]

    def init(variables, data, key):
      k_over, k_over2, k_sub, k_init, k_ft = jax.random.split(key, 5)
      n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
      n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
      feeds = {"forget": data.forget, "retain": data.retain,
               "retain_sub": subsample(data.retain, k_sub, min(1.0, n_f / n_r))}
      return StepState(model_state(variables), feeds,
                       {"overfit_forget": k_over, "overfit_retain": k_over2, "reset": k_init,
                        "repair": k_ft}, {"original": variables})

    overfit = lambda name, source: ce_phase(name, model, source, epochs=overfit_epochs,
                                            lr=overfit_lr, batch_size=batch_size,
                                            weight_decay=0.0, schedule="constant")

    def from_original(state, key):
      """Keep the forget-overfitted weights; the next copy starts again from θ0."""
      return state._replace(carry=model_state(state.const["original"]), feeds={
          **state.feeds, "overfit_forget": state.carry.variables["params"]})

    def reset(state, variables, k_init):
      params = state.const["original"]["params"]
      if scope == "complex":
        mask = tree_map(jnp.logical_and,
                        _low_change_mask(params, state.feeds["overfit_forget"], quantile, only),
                        _low_change_mask(params, variables["params"], quantile))
      else:
        mask = _low_change_mask(params, variables["params"], quantile, only)
      fresh = model.init(k_init, ctx.input_shape)["params"]
      return ({**state.const["original"], "params": tree_map(jnp.where, mask, fresh, params)},
              {"reinitialised_weights": sum(jnp.sum(m) for m in jax.tree_util.tree_leaves(mask))})

    phases = (overfit("overfit_forget", "forget"),)
    if scope == "complex":
      phases += (with_enter(overfit("overfit_retain", "retain_sub"), from_original),)
    phases += (edit_phase("reset", reset),
               ce_phase("repair", model, "retain", epochs=epochs, lr=lr, batch_size=batch_size))
    return Steps(init, phases, report=lambda st, h: {
        "reinitialised_weights": h["reset"]["reinitialised_weights"][0]})

  return factory


_PRUNE_RULE = """

  Overfit a copy of θ0 on D_f (SGD, constant lr, no weight decay); weights whose
  |θ_overfit − θ0| lies below the `quantile` of all such changes{scope} are replaced by
  fresh initial weights (the model's initialisers, drawn from the key){complex}; then FT on
  D_r. Reads: forget and retain. Defaults: quantile 0.3, overfit 5 epochs at lr 0.01,
  FT 5 epochs at lr 0.001 ("Forget with Precision"), batch 64.
"""

prune = _prune_factory("all")
prune.__doc__ = ("Selective pruning (Forget with Precision): reinitialise the weights the forget set "
                 "barely moves, then fine-tune." + _PRUNE_RULE.format(scope="", complex=""))
prune = register("prune", space=PRUNE_SPACE,
         reads=("forget", "retain"),
         paper=('the "Forget with Precision" project (Krahenmann, Neubecker & Strozzi): '
                'selective pruning'),
         aux=dict(
             reinitialised_weights='the number of weights replaced by fresh initial weights'),
         defaults=PRUNE_DOC_DEFAULTS, bounds=PRUNE_BOUNDS)(prune)

prune_last_layer = _prune_factory("last_layer")
prune_last_layer.__doc__ = ("Selective pruning of the final dense layer only (Forget with Precision)." +
                            _PRUNE_RULE.format(scope=" in the last layer", complex=""))
prune_last_layer = register("prune_last_layer", space=PRUNE_SPACE,
         reads=("forget", "retain"),
         paper=('the "Forget with Precision" project (Krahenmann, Neubecker & Strozzi): '
                'selective pruning of the last layer'),
         aux=dict(
             reinitialised_weights='the number of weights replaced by fresh initial weights'),
         needs=("head",),
         defaults=PRUNE_DOC_DEFAULTS, bounds=PRUNE_BOUNDS)(prune_last_layer)

prune_complex = _prune_factory("complex")
prune_complex.__doc__ = ("Pruning complex (Forget with Precision): reinitialise weights 'similar' for "
                         "both D_f and a retain subset." + _PRUNE_RULE.format(
                             scope="", complex=(", but only where a second copy overfitted "
                                                "on a random D_r subset of |D_f| examples "
                                                "also changed them less than its quantile")))
prune_complex = register("prune_complex", space=PRUNE_SPACE,
         reads=("forget", "retain"),
         paper=('the "Forget with Precision" project (Krahenmann, Neubecker & Strozzi): '
                'selective pruning (pruning complex)'),
         aux=dict(
             reinitialised_weights='the number of weights replaced by fresh initial weights'),
         defaults=PRUNE_DOC_DEFAULTS, bounds=PRUNE_BOUNDS)(prune_complex)


# ----------------------------------------------------------------------------- activation reset
def _kernel_outputs(model, variables, x):
  """{module path: [batch, channels]} — each Conv/Dense output averaged over space."""
  model = as_adapter(model)
  _, captured, _ = model.capture(variables, x, lambda m: isinstance(m, (nn.Conv, nn.Dense)))
  return {path: value.reshape(value.shape[0], -1, value.shape[-1]).mean(axis=1)
          for path, value in captured.items()}


# Kaiming-normal weights: std √(2/fan_in), fan_in = all but the output axis, untruncated
# (`jax.nn.initializers.he_normal` truncates).
he_normal = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@register("activation_reset", space=dict(threshold=("linear", 0.5, 0.95), lr=("log", 1e-3, 0.1)),
          reads=("forget", "retain"),
          paper='the "Forget with Precision" project (Krahenmann, Neubecker & Strozzi): activation'
                " reset",
          aux=dict(
              reset_kernels="the number of Conv/Dense output channels below the head that were "
                            "reinitialised"),
          needs=("head",),
          defaults=dict(threshold=0.8, epochs=5, lr=0.01, batch_size=64),
          bounds=dict(threshold="[0, inf)", epochs="[1, inf)", lr="(0, inf)", batch_size="[1, inf)"))
def activation_reset(ctx: MethodContext, *, threshold, epochs, lr, batch_size):
  """Activation reset ("Forget with Precision"): reinitialise the kernels D_f excites more than D_r.

  Pairs each forget example with one of an equally sized random retain subset. For every
  output channel c of every Conv/Dense layer below the head, a_c(x) is the layer's output
  (before its BatchNorm/ReLU) averaged over space; if a_c(x_f) > a_c(x_r) for at least
  `threshold` of the pairs (above 1: none), channel c's kernel slice is reinitialised (Kaiming normal,
  bias 0). The head (the adapter's `head`) is always reinitialised; then FT on D_r (SGD
  momentum, cosine). Only Linen `nn.Conv`/`nn.Dense` layers are seen.
  Reads: forget and retain. Defaults: threshold 0.8, FT 5 epochs at lr 0.01, batch 64.
  "Forget with Precision"'s lr 0.001 is too small to retrain a fresh head of the small
  models, hence 0.01. On a model without conv layers (the MLP) the hidden Dense units play
  the kernels' part.
  """
  model = ctx.model
  model.require_head("activation_reset")

  def init(variables, data, key):
    k_sub, k_init, k_ft = jax.random.split(key, 3)
    n_f = jax.tree_util.tree_leaves(data.forget)[0].shape[0]
    n_r = jax.tree_util.tree_leaves(data.retain)[0].shape[0]
    retain_x = subsample(data.retain, k_sub, min(1.0, n_f / n_r))[0]
    k = min(n_f, retain_x.shape[0])
    return StepState(model_state(variables),
                     {"pairs": (data.forget[0][:k], retain_x[:k]), "retain": data.retain},
                     {"reset": k_init, "repair": k_ft})

  def reset(state, variables, k_init):
    def exceed(batch, valid):
      a_f = _kernel_outputs(model, variables, batch[0])
      a_r = _kernel_outputs(model, variables, batch[1])
      return {p: masked_mean((a_f[p] > a_r[p]).astype(jnp.float32), valid) for p in a_f}

    fractions = weighted_batch_mean(exceed, state.feeds["pairs"], batch_size)
    head = model.require_head("activation_reset")
    flat = traverse_util.flatten_dict(variables["params"])
    keys = dict(zip(sorted(flat), jax.random.split(k_init, len(flat))))
    new, count = {}, jnp.float32(0)
    for path, p in flat.items():
      module, leaf = path[:-1], path[-1]
      fresh = he_normal(keys[path], p.shape, p.dtype) if leaf == "kernel" else jnp.zeros_like(p)
      if _path_in(module, [head]):
        new[path] = fresh
      elif module in fractions and leaf in ("kernel", "bias"):
        hit = fractions[module] >= threshold
        new[path] = jnp.where(hit, fresh, p)
        if leaf == "kernel":
          count = count + jnp.sum(hit)
      else:
        new[path] = p
    return {**variables, "params": traverse_util.unflatten_dict(new)}, {"reset_kernels": count}

  return Steps(init, (edit_phase("reset", reset),
                      ce_phase("repair", model, "retain", epochs=epochs, lr=lr,
                               batch_size=batch_size)),
               report=lambda st, h: {"reset_kernels": h["reset"]["reset_kernels"][0]})
