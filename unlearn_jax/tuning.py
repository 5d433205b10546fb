"""Hyperparameter search as one program: K configurations × S seeds under two `vmap`s.

A method's float hyperparameters (learning rates, thresholds, temperatures, weights) are
arithmetic inside its update, so they can arrive as traced values: the method's factory
is called *inside* the vmapped function with tracers for the searched hyperparameters and
Python values for the rest. Every concrete configuration is validated first (the same
`HyperparameterError`s as a single run), so nothing reaches compilation unchecked.

Search spaces are declared in the registry (`register(..., space=...)`): for each
searchable float hyperparameter ("log", low, high), ("linear", low, high), or a tuple of
values; for an integer one (epochs) a tuple of integers, searched as an outer loop of
compiled programs (`outer_configs`), each running the K float configurations.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import parallel
from unlearn_jax import steps as steps_lib
from unlearn_jax.population import PopulationProgram
from unlearn_jax.methods.base import SCALES, HyperparameterError


def is_outer(method, name: str) -> bool:
  """Whether a searched hyperparameter is an integer one: an outer loop of compiled
  programs (shapes and loop lengths depend on it), not a traced value."""
  return not isinstance(method.defaults[name], float)


def outer_configs(method, fixed=None) -> list:
  """The outer loop's combinations of the integer hyperparameters in `method.space`
  ([{name: int}], the defaults first); a name in `fixed` (set by the user) is left out."""
  names = [k for k in sorted(method.space) if is_outer(method, k) and k not in (fixed or {})]
  combos = [dict(zip(names, vals)) for vals in itertools.product(
      *[method.space[k] for k in names])]
  default = {k: method.defaults[k] for k in names}
  return [default] + [c for c in combos if c != default]


def sample_configs(method, budget: int, key: jax.Array, names=None) -> dict:
  """`budget` configurations of the method's searched float hyperparameters ({name: [K]}):
  configuration 0 is the defaults, the other K−1 a Latin hypercube over the space: each
  range is cut into K−1 equal strata (in log space on log scales) and every stratum holds
  exactly one draw, the strata paired at random across hyperparameters. At the small
  budgets a CPU affords (K = 5) independent draws often leave a whole end of a range
  unvisited (all four learning rates high); the hypercube costs the same and never does.
  Value lists are drawn uniformly. `names` restricts the search to some of them.
  Integer hyperparameters are not sampled here (`outer_configs`)."""
  if budget < 1:
    raise ValueError(f"budget={budget} must be >= 1")
  space = {k: v for k, v in method.space.items()
           if (names is None or k in names) and not is_outer(method, k)}
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
      u = (rng.permutation(budget - 1) + rng.uniform(size=budget - 1)) / max(budget - 1, 1)
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


def _checked(method, configs: Mapping[str, np.ndarray], fixed: Mapping | None) -> dict:
  """The fixed hyperparameters, validated; every configuration validated with them."""
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
  return method.validate(fixed)


def config_unlearn(method, ctx, configs: Mapping[str, np.ndarray], fixed: Mapping | None = None):
  """`fn(hp, variables, data, key) -> (variables, aux)` with the searched hyperparameters
  `hp` ({name: scalar}) as *arguments*: compiled once, it runs any configuration."""
  base = _checked(method, configs, fixed)

  def one(hp, variables, data, key):
    # The factory directly: traced hyperparameters cannot pass the registry's checks (the
    # input checks every method reports are added as the registry adds them).
    steps = steps_lib.with_checks(method.factory(ctx, **{**base, **hp}), ctx.num_classes)
    return steps_lib.run(steps, variables, data, key)

  return one


def grid_unlearn(method, ctx, configs: Mapping[str, np.ndarray], fixed: Mapping | None = None):
  """`fn(variables [S, ...], data, keys [S]) -> (variables [K, S, ...], aux [K, S])`: the
  method under every configuration × seed (seed s starts from original s), one program
  (the caller jits it).

  `configs` maps searched float hyperparameters to [K] values (`sample_configs`);
  `fixed` overrides other hyperparameters (Python values). Each configuration is
  validated as a single run would be (HyperparameterError) before anything is traced."""
  one = config_unlearn(method, ctx, configs, fixed)
  grid = {k: jnp.asarray(v, jnp.float32) for k, v in configs.items()}

  def run(variables, data, keys):
    per_seed = jax.vmap(one, in_axes=(None, 0, None, 0))
    # The configurations are the population: on a mesh's `seeds` axis when there is one.
    return parallel.vmap_seeds(per_seed, in_axes=(0, None, None, None))(
        grid, variables, data, keys)

  return run




def run_search(method, ctx, configs, fixed, variables, data, keys, loop: str = "vmap"):
  """All K configurations × S seeds through `PopulationProgram`: `loop="vmap"` one
  program whose members are the K configurations, each running its S seeds vmapped
  (`grid_unlearn`'s computation, to the bit); `"sequential"` one compiled
  single-configuration, single-seed program called for the K·S pairs (configuration-major)
  — on CPU conv models the vmapped program does not pay. Returns (variables [K, S, ...],
  seconds of the search after compilation, compile seconds)."""
  parallel.check_loop(loop, "loop")
  k, s = len(configs_list(configs)), keys.shape[0]
  one = config_unlearn(method, ctx, configs, fixed)
  if loop == "vmap":
    grid = {name: jnp.asarray(v, jnp.float32) for name, v in configs.items()}
    seeds = jax.vmap(lambda hp, v, d, kk: one(hp, v, d, kk)[0], in_axes=(None, 0, None, 0))
    program = PopulationProgram(seeds, (0, None, None, None))
    # Inside `parallel.data_parallel(mesh)` the configurations are split over the mesh's
    # `seeds` axis (every process of a multi-process job runs its share); the result comes
    # back whole to every host.
    args = parallel.replicate((grid, variables, data, keys))
  else:
    tile = lambda tree: jax.tree_util.tree_map(
        lambda a: jnp.tile(a, (k,) + (1,) * (a.ndim - 1)), tree)
    grid = {name: jnp.repeat(jnp.asarray(v, jnp.float32), s) for name, v in configs.items()}
    program = PopulationProgram(lambda hp, v, d, kk: one(hp, v, d, kk)[0], (0, 0, None, 0),
                                mode="sequential")
    args = (grid, tile(variables), data, tile(keys))
  program.calls(args)
  out = program(*args)
  if loop == "vmap" and parallel.active_mesh() is not None:
    out = jax.tree_util.tree_map(jnp.asarray, parallel.to_host(out))
  out = jax.tree_util.tree_map(lambda a: a.reshape((k, s) + a.shape[2 if loop == "vmap" else 1:]),
                               out)
  return out, program.seconds, program.compile_seconds


# ----------------------------------------------------------------------------- selection
SELECTION_RULES = ("retrain_gap", "no_retrain")


def selection_parts(split, fraction: float = 0.2, seed: int = 0) -> dict:
  """Index sets a search may select on, and the ones it must not touch.

  The method still unlearns all of D_f and reads all of D_r; selection only *scores* on
  `forget_select` (a random `fraction` of D_f), `retain_select` (as much of D_r) and the
  split's `val` examples (`val_forget`: the forgotten classes' validation examples). What
  is reported afterwards is `forget_report` (the rest of D_f), `retain_report` and `test`:
  selection never reads the test split or the forget examples whose accuracy is reported.
  """
  if not 0 < fraction < 1:
    raise ValueError(f"fraction={fraction} must lie strictly between 0 and 1")
  rng = np.random.default_rng(seed)
  out = {}
  for name in ("forget", "retain"):
    idx = np.asarray(getattr(split, name))
    k = max(1, int(round(fraction * idx.size)))
    if k >= idx.size:
      raise ValueError(f"fraction={fraction} leaves no {name} examples to report "
                       f"({idx.size} in all)")
    chosen = np.zeros(idx.size, bool)
    chosen[rng.choice(idx.size, k, replace=False)] = True
    out[f"{name}_select"], out[f"{name}_report"] = np.sort(idx[chosen]), np.sort(idx[~chosen])
  out["val"], out["val_forget"] = np.asarray(split.val), np.asarray(split.val_forget)
  return out


def retrain_gap_score(candidate: Mapping[str, float], retrained: Mapping[str, float]) -> float:
  """`retrain_gap` (benchmark mode, what papers select on): the mean absolute gap, in
  points, to the retrained models over RA, FA, TA and the loss MIA, each measured on the
  selection parts (retain_select, forget_select, val). Lower is better; 0 is retraining.

      score = mean_{m ∈ RA, FA, TA, MIA} 100·|m(candidate) − m(retrained)|
  """
  keys = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr")
  return float(np.mean([100 * abs(candidate[k] - retrained[k]) for k in keys]))


def no_retrain_score(candidate: Mapping[str, float], original: Mapping[str, float],
                     scenario: str) -> float:
  """`no_retrain` (deployment mode: whoever must forget has no retrained model), in
  points, lower is better:

      score = |FA − FA*| + max(0, RA₀ − RA) + max(0, VA₀ − VA) + 100·|MIA − 0.5|

  FA on forget_select; FA* = 0 when whole classes are forgotten, else the accuracy on
  held-out examples of the same classes (the val split: what a model that never saw D_f
  would score); RA on retain_select and VA on val, each against the original's (a drop
  costs, a gain does not); the loss MIA on forget_select toward chance (0.5).
  """
  if scenario not in ("random", "class", "subclass"):
    raise ValueError(f"scenario={scenario!r} is unknown; allowed: random, class, subclass")
  target = 0.0 if scenario != "random" else candidate["test_acc"]
  return float(100 * abs(candidate["forget_acc"] - target)
               + 100 * max(0.0, original["retain_acc"] - candidate["retain_acc"])
               + 100 * max(0.0, original["test_acc"] - candidate["test_acc"])
               + 100 * abs(candidate["mia_loss_lr"] - 0.5))


def select_configuration(scores: np.ndarray, retain_acc: np.ndarray, original_retain: np.ndarray,
                         min_retain: float = 0.9) -> tuple[int, bool]:
  """The chosen configuration: the lowest mean score among those that keep retain accuracy.

  scores, retain_acc: [K, S] (configuration × seed) selection scores and retain_select
  accuracies; original_retain: [S] the originals' retain_select accuracy. A configuration is
  eligible when its mean retain accuracy over seeds is at least `min_retain` × the
  originals' mean (0 disables the floor): a score that trades the retain set away for a
  smaller gap elsewhere (retrain_gap weighs RA like FA, TA and MIA) is not a choice a user
  could deploy. Non-finite scores are never chosen. If no configuration is eligible, the
  one with the highest retain accuracy is returned. Returns (index, whether it was eligible).

      eligible(k) = mean_s RA[k, s] >= min_retain · mean_s RA₀[s]
      k* = argmin_{k eligible} mean_s score[k, s]
  """
  scores, retain_acc = np.asarray(scores, float), np.asarray(retain_acc, float)
  if scores.ndim != 2 or scores.shape != retain_acc.shape:
    raise ValueError(f"scores {scores.shape} and retain_acc {retain_acc.shape} must both be "
                     "[configurations, seeds]")
  if not 0 <= min_retain <= 1:
    raise ValueError(f"min_retain={min_retain} must lie in [0, 1]")
  mean = np.where(np.all(np.isfinite(scores), axis=1), scores.mean(axis=1), np.inf)
  ra = retain_acc.mean(axis=1)
  eligible = (ra >= min_retain * float(np.mean(original_retain))) & np.isfinite(mean)
  if eligible.any():
    return int(np.argmin(np.where(eligible, mean, np.inf))), True
  return int(np.argmax(np.where(np.isfinite(mean), ra, -np.inf))), False
