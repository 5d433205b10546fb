"""Population evaluation, the experiment: N originals, N retrained models, every method on
every original, scored by `unlearn_jax.evaluation` (the library's per-example attacks
between populations). `experiments/evaluate.py` is the thin absl wrapper around `run`.

The populations are the references every stage trains (`reference_models.references`:
vmapped, in chunks of `chunk` models when memory asks for it), cached with a fingerprint of
what produced them under `--config.references_dir` when set, so a second evaluation of other
methods reuses them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import experiment, matching, reference_models, settings
from .usage import UsageError
from unlearn_jax import driver
from unlearn_jax import methods as methods_lib
from unlearn_jax import metrics as M
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from ..reports.population import Evaluation
from unlearn_jax.evaluation import (PopulationFeatures, PopulationLogits, SplitHalfReference,
                                    compare_to_floor, evaluate_population, model_chunks,
                                    probe_forget_accuracy)


def _stack(parts):
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


MEMORY_FRACTION = 0.4      # of physical memory, for one vmapped chunk of a method


def _physical_memory() -> float:
  import os
  try:
    return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 8.0 * 2 ** 30


def _apply_in_chunks(spec, ctx, hparams, variables, data, keys, st, chunk, log):
  """The method on every model, vmapped in chunks, one compiled program for every chunk of
  the same size. Without `--config.evaluate.chunk` (vmapped), XLA's memory analysis of the all-at-once
  program decides: when it needs more than MEMORY_FRACTION of the machine the models go in
  chunks that fit; a chunk that still runs out of memory is halved and retried (e.g.
  `influence` holds an N×P gradient matrix per model)."""
  n = keys.shape[0]
  size = n if chunk <= 0 else chunk
  program = driver.MethodProgram(spec, ctx, hparams, seed_mode=st.mode)
  if chunk <= 0 and st.vmapped:
    peak = driver.compiled_peak_bytes(program.compiled(variables, data, keys, ()))
    budget = MEMORY_FRACTION * _physical_memory()
    if peak == peak and peak > budget:     # NaN: no analysis on this backend, assume it fits
      size = max(1, int(n * budget // peak))
      log(f"  {spec.name}: ~{peak / n / 2 ** 20:,.0f} MiB per model; vmapping chunks of "
          f"{size} to stay within {budget / 2 ** 30:.1f} GiB")
  while True:
    try:
      parts, seconds = [], 0.0
      for a, b in model_chunks(n, size):
        ms = driver.apply_method(spec, ctx, hparams, jax.tree_util.tree_map(
            lambda v: v[a:b], variables), data, keys[a:b], program=program)
        parts.append(ms.variables)
        seconds += ms.seconds * (b - a)
      return _stack(parts), seconds
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e) or size == 1:
        raise
      size = max(1, size // 2)
      log(f"  {spec.name}: out of memory; retrying in chunks of {size} models")


def check_options(num_models: int, chunk: int, num_resamples: int,
                  epsilon_resamples: int) -> None:
  """UsageError naming the `evaluate` field when a population setting cannot work."""
  if num_models < 4:
    raise UsageError(f"--config.evaluate.num_models={num_models} must be at least 4 (the "
                     "attacks split each population in halves)")
  if num_resamples < 0 or num_resamples == 1:
    raise UsageError(f"--config.evaluate.bootstrap={num_resamples} must be 0 (no intervals) "
                     "or at least 2")
  if not 0 <= epsilon_resamples <= num_resamples:
    raise UsageError(f"--config.evaluate.bootstrap_epsilon={epsilon_resamples} must lie in "
                     f"[0, --config.evaluate.bootstrap={num_resamples}]")
  if chunk < 0:
    raise UsageError(f"--config.evaluate.chunk={chunk} must be 0 (all at once) or positive")


@dataclasses.dataclass
class _Scorer:
  """What every population is scored with: the split's inputs and labels, the chunked
  logits and features programs (each compiled once per split's shape), the oracles'
  split-half reference, the random models' forget logits and the MIA's model count."""
  st: experiment.Setup
  inputs: dict
  labels: dict
  predict: PopulationLogits
  features: PopulationFeatures
  reference: SplitHalfReference | None = None
  random_forget: object = None
  mia_models: int = 16

  def logits(self, variables) -> dict:
    return {s: self.predict(variables, xx) for s, xx in self.inputs.items()}

  def probe(self, variables) -> float:
    """Mean over the models of the linear probe's forget accuracy (nan without features)."""
    if not self.features.available:
      return float("nan")
    feats = {s: self.features(variables, self.inputs[s]) for s in ("forget", "test")}
    return float(np.mean(probe_forget_accuracy(feats, self.labels, self.st.ds.num_classes)))

  def row(self, name, variables, seconds, logits=None):
    """(row, ε, per-example statistics, bootstrap replicates) of one population."""
    row, eps, phi, reps = evaluate_population(
        name, self.logits(variables) if logits is None else logits, self.labels,
        self.reference, self.random_forget, seconds, self.mia_models)
    row["probe_forget_acc"] = self.probe(variables)
    return row, eps, phi, reps


def _scorer(st, chunk: int, mia_models: int) -> tuple:
  """(the `_Scorer` without its reference, forget, retain) of the setup's split."""
  ds, split = st.ds, st.split
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  forget, retain = (x[split.forget], y[split.forget]), (x[split.retain], y[split.retain])
  test = experiment.take_test(ds, split.test)
  labels = {"forget": np.asarray(forget[1]), "retain": np.asarray(retain[1]),
            "test": np.asarray(test[1])}
  inputs = {"forget": forget[0], "retain": retain[0], "test": test[0]}
  return (_Scorer(st, inputs, labels, PopulationLogits(st.model, chunk),
                  PopulationFeatures(st.model, chunk), mia_models=mia_models), forget, retain)


def _summarise(rows: list, retrain_seconds: float) -> None:
  """Each row's cost against retraining and its average gap to the retrained row."""
  for r in rows:
    r["cost_ratio"] = r["seconds"] / retrain_seconds if retrain_seconds else float("nan")
  ref = next(r for r in rows if r["method"] == "retrain")
  for r in rows:
    r["avg_gap"] = float(M.avg_gap(r, ref))


def _log_method(log, m: str, row: dict, seconds: float, num_models: int, t0: float) -> None:
  log(f"method {m}: {seconds / num_models:.3f}s per model "
      f"({time.perf_counter() - t0:.1f}s for {num_models} with compilation and metrics) | "
      f"F {row['forgetting_quality']:.3f}, score {row['competition_score']:.3f}, "
      f"median ε̂ {row['eps_hat_median']:.2f}, U-LiRA {row['ulira_accuracy']:.2f}, "
      f"KLOM avg95 {row['klom_average_95']:.2f} [{row['klom_average_95_low']:.2f}, "
      f"{row['klom_average_95_high']:.2f}]")


def _score_references(cfg, st, score, forget, originals, retrained, seed_keys, resamples,
                      log) -> tuple:
  """([rows of the original and retrained populations], the originals' logits); sets the
  scorer's reference (the retrained population's split halves) and random-model floor."""
  log("logits of the retrained and original populations")
  retrained_logits = score.logits(retrained.variables)
  random_vars = jax.jit(jax.vmap(lambda k: models_lib.init_variables(
      st.model, jax.random.fold_in(k, 99), st.ds.input_shape)))(seed_keys)
  score.random_forget = score.predict(random_vars, forget[0])
  score.reference = SplitHalfReference(retrained_logits, score.labels, seed=cfg.seed,
                                       num_resamples=resamples[0],
                                       epsilon_resamples=resamples[1])
  if score.reference.no_intervals:
    log(f"WARNING: {score.reference.no_intervals}")
  original_logits = score.logits(originals.variables)
  return [score.row("original", originals.variables, 0.0, original_logits),
          score.row("retrain", retrained.variables, retrained.seconds, retrained_logits)], \
      original_logits


def _matching_targets(cfg, st, originals, original_logits, score, chunk, log, num_models,
                      out) -> matching.Targets:
  """The matching methods' targets (`pipeline.matching`); appends the DM-Direct row to
  `out` when it is reported (its seconds: TRAK's, per model of the population)."""
  targets = matching.targets(cfg, st, st.method_names, originals, original_logits, score,
                             chunk, log)
  if targets.dm_direct is not None:
    out.append(score.row("dm_direct", originals.variables,
                         targets.costs["trak"]["seconds"] / num_models, targets.dm_direct))
    log(f"dm_direct (a logit prediction, no weights change): KLOM avg95 "
        f"{out[-1][0]['klom_average_95']:.2f}")
  return targets


def run(cfg, method_hparams: dict, num_models: int, chunk: int,
        log: Callable[[str], None] = print, mia_models: int = 16, num_resamples: int = 200,
        epsilon_resamples: int = 30) -> Evaluation:
  """N originals, N retrained models and N unlearned ones per method, each population
  scored against the retrained one's split halves (`evaluation.SplitHalfReference`)."""
  t_start = time.perf_counter()
  check_options(num_models, chunk, num_resamples, epsilon_resamples)
  matching.check(cfg, num_models)
  st = experiment.setup(cfg, log, population=chunk or num_models, targets=True)
  hparams = settings.resolve_hparams(st.method_names, method_hparams, cfg.scenario, log,
                                       st.model_name)
  split = st.split
  log(f"dataset {st.ds.name}: forget {split.forget.size}, retain {split.retain.size}, "
      f"test {split.test.size}; model {st.model_name}; {num_models} originals + {num_models} "
      f"retrained ({'vmapped' if st.vmapped else 'in sequence'}"
      f"{f', chunks of {chunk}' if chunk else ''})")
  # Batches of training, methods and predictions split over the mesh's `data` axis
  # (see unlearn_jax.parallel); a no-op on one device.
  with parallel.data_parallel(st.mesh):
    originals, retrained, reused = reference_models.references(cfg, st, num_models, log,
                                                               chunk=chunk)
    score, forget, retain = _scorer(st, chunk, mia_models)
    ctx = experiment.method_context(st, st.spec.forget_classes if cfg.scenario == "class"
                                   else ())
    seed_keys = reference_models.seed_keys(cfg.seed, num_models)
    out, original_logits = _score_references(cfg, st, score, forget, originals, retrained,
                                             seed_keys, (num_resamples, epsilon_resamples),
                                             log)
    targets = _matching_targets(cfg, st, originals, original_logits, score, chunk, log,
                                num_models, out)
    for m in st.method_names:
      spec = methods_lib.get_method(m)
      data = methods_lib.select_data(spec, forget, retain, ctx=ctx,
                                     targets=targets.by_method.get(m))
      t0 = time.perf_counter()
      unlearned, seconds = _apply_in_chunks(spec, ctx, hparams[m], originals.variables, data,
                                            jax.vmap(lambda k: driver.method_key(k, m))(seed_keys),
                                            st, chunk, log)
      out.append(score.row(m, unlearned, seconds / num_models))
      _log_method(log, m, out[-1][0], seconds, num_models, t0)
  rows = [o[0] for o in out]
  names = [r["method"] for r in rows]
  replicates = dict(zip(names, (o[3] for o in out)))
  compare_to_floor(rows, replicates, score.reference)
  _summarise(rows, retrained.seconds)
  info = {"dataset": st.ds.name, "model": st.model_name, "num_models": num_models,
          "chunk": chunk, "populations_reused": reused, "seed_mode": st.mode,
          "backend": jax.default_backend(), "train_program": st.train_program.record(),
          "mesh": dict(st.mesh.shape) if st.mesh is not None else None,
          "fingerprint": reference_models.fingerprint(cfg, st, num_models), "hparams": hparams,
          "retrain_seconds_per_model": retrained.seconds,
          "models_per_side": score.reference.h, "no_intervals": score.reference.no_intervals,
          "bootstrap_resamples": num_resamples, "bootstrap_epsilon_resamples": epsilon_resamples,
          "matching": targets.costs,
          "wall_seconds": time.perf_counter() - t_start}
  return Evaluation(rows, dict(zip(names, (o[1] for o in out))),
                    dict(zip(names, (o[2] for o in out))), info)


