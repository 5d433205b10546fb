"""The matching methods' targets in the population evaluation (`population.run`).

* `oracle_matching` matches the mean logits of `matching.oracles` models retrained without
  the forget set, seeds `seed + matching.oracle_seed + j`: a population of their own, not
  the retrained models every method is scored against (matching those would fit the
  reference itself). They are cached like the other populations.
* `dmm` matches DM-Direct's prediction: the originals' mean logits minus
  `matching.multiplier` times the forget set's summed TRAK scores
  (`unlearn_jax.attribution.trak_scores`, output "logits", the first
  `matching.trak_models` originals as the ensemble). The population's mean, as
  oracle_matching's targets are the oracles' mean: one target for every original.
  TRAK's scores have no unit (they rank; their scale depends on the model's confidence):
  with `matching.fit_multiplier` the multiplier is instead the least-squares fit of the
  correction to the gap between the originals' and the oracles' mean logits on forget and
  retain (one number; it needs the oracles, so DMM then is not oracle-free).
* `dm_direct` (when dmm runs and `matching.dm_direct` is True) is a row of its own: each
  original's logits minus the same correction on forget, retain and test, scored like a population. No weights
  change: its probe accuracy is the originals'.

The costs (`Targets.costs`): the seconds spent on the oracles and on TRAK, once for the
population, reported beside each method's own seconds per model.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import attribution
from unlearn_jax import methods as methods_lib
from . import reference_models
from .usage import UsageError

ORACLE_METHODS = ("oracle_matching",)
PREDICTED_METHODS = ("dmm",)


@dataclasses.dataclass
class Targets:
  """`by_method[m]`: (forget logits, retain logits) for each matching method chosen;
  `dm_direct`: {split: [N, n, C]} predicted logits (None when not reported); `costs`:
  {"oracles": {...}, "trak": {...}} of what was computed."""
  by_method: dict
  dm_direct: dict | None
  costs: dict


def needed(method_names, cfg) -> tuple[bool, bool]:
  """(oracles needed, TRAK needed) for the chosen methods (and the multiplier's fit)."""
  reads = [m for m in method_names if "targets" in methods_lib.get_method(m).reads]
  unknown = [m for m in reads if m not in ORACLE_METHODS + PREDICTED_METHODS]
  if unknown:
    raise UsageError(f"--methods: {unknown[0]} reads targets this evaluation cannot make; "
                     f"it makes them for {', '.join(ORACLE_METHODS + PREDICTED_METHODS)}")
  trak = any(m in PREDICTED_METHODS for m in reads)
  oracles = any(m in ORACLE_METHODS for m in reads) or (trak and bool(cfg.matching.fit_multiplier))
  return oracles, trak


def check(cfg, num_models: int) -> None:
  """UsageError naming the `matching` field that cannot work."""
  M = cfg.matching
  for name in ("oracles", "trak_models", "proj_dim", "chunk"):
    if int(M[name]) < 1:
      raise UsageError(f"--config.matching.{name}={M[name]} must be at least 1")
  if M.trak_models > num_models:
    raise UsageError(f"--config.matching.trak_models={M.trak_models} exceeds the population "
                     f"(--config.evaluate.num_models={num_models})")
  if not M.damping >= 0:
    raise UsageError(f"--config.matching.damping={M.damping} must be >= 0")
  if not np.isfinite(M.multiplier):
    raise UsageError(f"--config.matching.multiplier={M.multiplier} must be finite")


def oracle_logits(cfg, st, score, chunk, log) -> tuple[dict, dict]:
  """({forget, retain}: the oracles' mean logits, cost) (module docstring)."""
  M = cfg.matching
  log(f"oracle_matching: {M.oracles} oracles (retrained without D_f, seeds from "
      f"{cfg.seed + M.oracle_seed})")
  _, oracles, reused = reference_models.references(
      cfg, st, int(M.oracles), log, chunk=chunk, names=("retrain",),
      first_seed=int(cfg.seed + M.oracle_seed))
  mean = {s: np.asarray(attribution.oracle_targets(score.predict(oracles.variables,
                                                                 score.inputs[s])))
          for s in ("forget", "retain")}
  return mean, {"models": int(M.oracles), "seconds": oracles.seconds * int(M.oracles),
                "reused": bool(reused)}


def trak_correction(cfg, st, originals, score, log) -> tuple[dict, dict]:
  """({split: Σ_{f∈F} S[f, x, :] over the split's examples}, cost): TRAK on the forget
  rows, summed, with the first `matching.trak_models` originals as the ensemble."""
  M = cfg.matching
  ds, split = st.ds, st.split
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  ensemble = jax.tree_util.tree_map(lambda v: v[: int(M.trak_models)], originals.variables)
  scores = jax.jit(functools.partial(
      attribution.trak_scores, st.model, proj_dim=int(M.proj_dim), output="logits",
      damping=float(M.damping), chunk=int(M.chunk), sum_rows=True))
  t0 = time.perf_counter()
  out = {}
  for s in ("forget", "retain", "test"):
    out[s] = np.asarray(scores(ensemble, (x, y), (score.inputs[s], jnp.asarray(score.labels[s])),
                               key=jax.random.PRNGKey(int(cfg.seed)),
                               train_rows=jnp.asarray(split.forget)))
  seconds = time.perf_counter() - t0
  log(f"dmm/dm_direct: TRAK scores of the {split.forget.size} forget examples on every split "
      f"({M.trak_models} models, projection {M.proj_dim}): {seconds:.1f}s")
  return out, {"models": int(M.trak_models), "proj_dim": int(M.proj_dim), "seconds": seconds}


def fitted_multiplier(original_logits: dict, oracle_mean: dict, correction: dict) -> float:
  """argmin_m Σ ‖(mean original logits − oracles' mean) − m · correction‖² over the forget
  and retain examples: <gap, c> / <c, c>."""
  num = den = 0.0
  for s in ("forget", "retain"):
    gap = np.asarray(original_logits[s], np.float64).mean(0) - np.asarray(oracle_mean[s])
    c = np.asarray(correction[s], np.float64)
    num, den = num + float(np.sum(gap * c)), den + float(np.sum(c * c))
  if not den > 0:
    raise UsageError("--config.matching.fit_multiplier: TRAK's correction is zero on every "
                     "example; raise --config.matching.proj_dim or check the model")
  return num / den


def targets(cfg, st, method_names, originals, original_logits: dict, score, chunk, log,
            ) -> Targets:
  """Every matching method's targets and the DM-Direct row's logits (module docstring)."""
  use_oracles, use_trak = needed(method_names, cfg)
  by_method, costs, predicted = {}, {}, None
  if use_oracles:
    mean, costs["oracles"] = oracle_logits(cfg, st, score, chunk, log)
    for m in method_names:
      if m in ORACLE_METHODS:
        by_method[m] = (mean["forget"], mean["retain"])
  if use_trak:
    correction, costs["trak"] = trak_correction(cfg, st, originals, score, log)
    multiplier = float(cfg.matching.multiplier)
    if cfg.matching.fit_multiplier:
      multiplier = fitted_multiplier(original_logits, mean, correction)
      log(f"dmm/dm_direct: multiplier {multiplier:.4g}, the least-squares fit of TRAK's "
          f"correction to the originals' gap to the {cfg.matching.oracles} oracles")
    costs["trak"]["multiplier"] = multiplier
    predicted = {s: np.asarray(attribution.dm_direct(original_logits[s], correction[s][None],
                                                     jnp.zeros(1, jnp.int32),
                                                     multiplier=multiplier))
                 for s in correction}
    for m in method_names:
      if m in PREDICTED_METHODS:
        by_method[m] = (predicted["forget"].mean(0), predicted["retain"].mean(0))
  return Targets(by_method, predicted if predicted is not None and cfg.matching.dm_direct
                 else None, costs)
