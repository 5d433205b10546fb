"""The end-to-end unlearning experiment: data -> split -> original/retrain -> methods ->
metrics -> report. `experiments/unlearn.py` is the thin absl wrapper around `run`.

Seeds: seed s trains its original from `init_key(s)`; its retrained model starts from
the same initial weights; each method gets `driver.method_key(seed_key, name)`, so a
method's result does not depend on which other methods run. The loops over seeds and
epochs are `unlearn_jax.driver`'s (vmapped or sequential seeds, compiled once).

`seconds` is wall time of the execution after compilation, per seed: in vmapped mode
the batch's time divided by the number of seeds. Compile time is reported separately
in results.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..reports import run as report
from . import experiment, reference_models
from .experiment import setup, take_test
from .rundir import (checkpoint_errors_as_usage, open_resume_store, prepare_workdir,
                     resumed_method)
from .settings import resolve_hparams, validate
from unlearn_jax.adapter import model_variables
from unlearn_jax import data as data_lib
from unlearn_jax import driver
from unlearn_jax import methods as methods_lib
from unlearn_jax import metrics as metrics_lib
from unlearn_jax import parallel
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import as_adapter


@dataclasses.dataclass
class RunResult:
  rows: list            # one dict per (method, seed): the results.csv rows
  model_sets: dict      # name -> ModelSet
  losses: dict          # name -> per-seed {split: per-example losses}
  split: data_lib.Split
  dataset: data_lib.Dataset
  recipe: train_lib.TrainConfig
  hparams: dict         # method -> hyperparameters used
  info: dict            # model, loop mode, devices, compile times, wall time


def validate_run(cfg, method_hparams: dict, workdir: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = lambda s: None):
  """Every check `experiments.unlearn` makes before it writes anything: the flags, the
  dataset, the split, the model, the methods, the mesh, each method's hyperparameters and
  the workdir (None: the default `runs/...`, always new). Raises `usage.UsageError`
  naming the flag; returns the `Setup` that `run` then uses."""
  validate(cfg)
  if workdir is not None:
    prepare_workdir(workdir, overwrite)
  st = setup(cfg, log)
  resolve_hparams(st.method_names, method_hparams, cfg.scenario, lambda s: None, st.model_name)
  return st


def along_evaluator(model, forget, retain, cfg):
  """`(along, eval_data)` for `driver.apply_method`: forget and retain accuracy (on at most
  `cfg.along_examples` of each) every `cfg.along_every` epochs of each phase of a method;
  `(None, ())` when `along_every` is 0."""
  every = int(cfg.get("along_every", 0))
  if every <= 0:
    return None, ()
  size = int(cfg.get("along_examples", 512))
  eval_data = {"forget": tuple(a[:size] for a in forget),
               "retain": tuple(a[:size] for a in retain)}
  adapter = as_adapter(model)

  def evaluate(variables, e):
    return {f"{split}_acc": metrics_lib.accuracy(adapter.logits(variables, x), y)
            for split, (x, y) in e.items()}

  return (evaluate, every), eval_data


def run(cfg, method_hparams: dict, log: Callable[[str], None] = print,
        resume_dir: Path | None = None, st=None) -> RunResult:
  """Runs the experiment described by `cfg` (see experiments/configs/default.py).

  Pure computation plus logging: writing the run directory is `report.write_run`'s job.
  With `resume_dir`, training states (every `cfg.checkpoint_every` epochs), finished
  methods and, with `cfg.method_checkpoint_every`, methods mid-way are checkpointed there,
  and a rerun with the same settings continues from them.
  `st`: the `experiments.pipeline.experiment.Setup` of `cfg` when the caller already made it.
  """
  t_start = time.perf_counter()
  st = st if st is not None else setup(cfg, log)
  hparams = resolve_hparams(st.method_names, method_hparams, cfg.scenario, log, st.model_name)
  store = open_resume_store(resume_dir, cfg, hparams, st)
  _log_setting(st, cfg, log)
  with parallel.data_parallel(st.mesh):
    data = _device_data(st, cfg)
    seed_keys = reference_models.seed_keys(cfg.seed, cfg.seeds)
    model_sets = _train_references(st, cfg, data, seed_keys, store, log)
    slots = driver.SeedSlots(int(cfg.seeds), int(cfg.get("unlearn_seeds", 1)))
    if slots.num_unlearn > 1:
      log(f"seeds per stage: {cfg.seeds} trained models × {slots.num_unlearn} unlearning "
          f"seeds = {slots.size} unlearned models per method")
    model_sets.update(_apply_methods(st, cfg, hparams, data, seed_keys, slots,
                                     model_sets, store, log))
    log("evaluating")
    rows, losses, layers = _metric_rows(st, cfg, data, model_sets, slots)
    if cfg.scenario == "class":
      _add_relearning(st, cfg, rows, data["forget"], model_sets, seed_keys, slots, log)
  info = {"model": st.model_name, "seed_mode": st.mode, "seeds_vmapped": st.vmapped,
          "train_program": (None if data["stream"] else st.train_program.record()),
          "mesh": dict(st.mesh.shape) if st.mesh is not None else None,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "jax_version": jax.__version__,
          "compile_seconds": {k: v.compile_seconds for k, v in model_sets.items()},
          "aux": {k: v.aux for k, v in model_sets.items() if v.aux},
          "layer_distance": layers,
          "wall_seconds": time.perf_counter() - t_start}
  return RunResult(rows, model_sets, losses, st.split, st.ds, st.recipe, hparams, info)


def _log_setting(st, cfg, log) -> None:
  ds, split = st.ds, st.split
  log(f"dataset {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test, "
      f"{ds.num_classes} classes, input {ds.input_shape}")
  log(f"split {st.spec.scenario}: forget {split.forget.size}, retain {split.retain.size}, "
      f"val {split.val.size}, test {split.test.size}"
      + (f", forget-class test {split.test_forget.size}" if split.test_forget.size else ""))
  log(f"model {st.model_name}, {cfg.seeds} seed(s), seeds "
      f"{'vmapped' if st.vmapped else 'in sequence'}, backend {jax.default_backend()}")
  log(f"recipe: {st.recipe}")
  log("train program: " + ("batches streamed from host memory, one step per call"
                           if cfg.get("stream", False) else st.train_program.describe()))
  log(f"devices: {parallel.describe(st.mesh)}")


def _device_data(st, cfg) -> dict:
  """{"train", "forget", "retain", "retain_train", "stream"}: in memory and replicated on
  every device of the mesh (batches are split over `data` inside the steps). With --config.stream
  the original and retrained models read their batches from host memory instead, so the
  whole train set is never copied to the device (the methods still get forget and retain
  there)."""
  ds, split = st.ds, st.split
  stream = bool(cfg.get("stream", False))
  if stream:
    take = lambda idx: parallel.replicate((jnp.asarray(ds.train_x[idx]),
                                           jnp.asarray(ds.train_y[idx])))
    train_set = (ds.train_x, ds.train_y)
  else:
    train_set = parallel.replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)))
    take = lambda idx: (train_set[0][idx], train_set[1][idx])
  forget, retain = take(split.forget), take(split.retain)
  retain_train = (ds.train_x[split.retain], ds.train_y[split.retain]) if stream else retain
  return {"train": train_set, "forget": forget, "retain": retain,
          "retain_train": retain_train, "stream": stream}


def _train_references(st, cfg, data, seed_keys, store, log) -> dict:
  """{"original", "retrain"} ModelSets: same recipe and initial weights per seed."""
  init_vars = reference_models.initial_variables(st, seed_keys)
  if st.vmapped:
    init_vars = parallel.shard_seeds(init_vars)

  def population(x, y, label):
    if data["stream"]:   # from host memory, batch by batch (seeds in sequence, no resume)
      keys = jax.vmap(lambda k: jax.random.fold_in(k, reference_models.REFERENCE_SALTS[label]))(
          seed_keys)
      return driver.train_population_streaming(st.model, st.recipe, init_vars, x, y, keys,
                                               log=log, label=label, mesh=st.mesh)
    with checkpoint_errors_as_usage():
      both = ((x, y), None) if label == "original" else (None, (x, y))
      return getattr(reference_models.references(cfg, st, int(cfg.seeds), log, names=(label,),
                                                 data=both, init_vars=init_vars, store=store),
                     label)

  # (trained here, or restored from --config.references_dir: `references` says which)
  log("original (all of train)" + (", streamed from host memory" if data["stream"] else ""))
  out = {"original": population(*data["train"], "original")}
  log(f"  original: {out['original'].seconds:.2f}s per seed")
  log("retrain (retain only, same recipe and initial weights)")
  out["retrain"] = population(*data["retain_train"], "retrain")
  log(f"  retrain: {out['retrain'].seconds:.2f}s per seed")
  return out


def _apply_methods(st, cfg, hparams, data, seed_keys, slots, references, store, log) -> dict:
  """Every method on every (trained model, unlearning seed) slot, one program each; a
  method finished before a kill is restored from the resume store."""
  ctx = experiment.method_context(st, st.spec.forget_classes if cfg.scenario == "class" else ())
  originals = slots.tile(references["original"].variables)
  retrain_s = references["retrain"].seconds
  along, eval_data = along_evaluator(st.model, data["forget"], data["retain"], cfg)
  out = {}
  for m in st.method_names:
    mspec = methods_lib.get_method(m)
    keys = slots.method_keys(seed_keys, m)
    method_data = methods_lib.select_data(mspec, data["forget"], data["retain"], ctx=ctx)
    ms = resumed_method(store, m, originals, log)
    if ms is None:
      every = int(cfg.get("method_checkpoint_every", 0))
      ms = driver.apply_method(mspec, ctx, hparams[m], originals, method_data, keys,
                               seed_mode=st.mode, along=along, eval_data=eval_data, log=log,
                               resume=None if store is None or every <= 0 else
                               (store, f"steps_{m}", every, 10 * every))
      if store is not None:
        # The model's own collections only (a method's state collection, e.g. a certified
        # head's, serves a later request, not a resumed run): restored in the originals' shape.
        store.save(f"method_{m}", 0, {"variables": model_variables(ms.variables),
                                      "artifacts": ms.artifacts,
                                      "along": ms.along},
                   {"seconds": ms.seconds, "compile_seconds": ms.compile_seconds,
                    "aux": ms.aux, "peak_bytes": ms.peak_bytes})
    out[m] = ms
    flags = {k: v for k, v in ms.aux.items() if k in ("stopped_early",) and any(np.ravel(v))}
    log(f"method {m}: {ms.seconds:.2f}s per seed ({ms.seconds / max(retrain_s, 1e-9):.2f}x "
        f"retrain)" + (f", compile {ms.compile_seconds:.1f}s" if ms.compile_seconds else "")
        + (f" [{m} stopped early on seeds {flags}]" if flags else ""))
    for line in report.method_warnings({m: ms}):
      log(f"WARNING {line}")
  return out


def _metric_rows(st, cfg, data, model_sets, slots):
  """(results rows, per-seed losses, per-layer distances) of every model set."""
  ds, split = st.ds, st.split
  arrays = {"retain": data["retain"], "forget": data["forget"],
            "val": take_test(ds, split.val), "test": take_test(ds, split.test)}
  if split.test_forget.size:
    arrays["val_forget"] = take_test(ds, split.val_forget)
    arrays["test_forget"] = take_test(ds, split.test_forget)
  rows, losses, layers = [], {}, {}
  evaluate = driver.SeedMetrics(st.model, seed_mode=st.mode, eval_batch=cfg.eval_batch_size)
  distance = jax.jit(jax.vmap(metrics_lib.layer_distance))
  retrain_params = model_sets["retrain"].variables["params"]
  for name, ms in model_sets.items():
    metric_rows, losses[name] = evaluate(ms, arrays)
    unlearned = len(metric_rows) == slots.size and name not in ("original", "retrain")
    # Per layer, per model: ‖θ − θ_retrain‖/‖θ_retrain‖ against the retrained model of the
    # same training seed (same initial weights).
    per_layer = {k: v for k, v in parallel.to_host(distance(
        ms.variables["params"],
        slots.tile(retrain_params) if unlearned else retrain_params)).items()}
    layers[name] = {k: v.tolist() for k, v in per_layer.items()}
    for i, r in enumerate(metric_rows):
      t, u = slots.stages(i) if unlearned else (i, 0)
      rows.append({"method": name, "seed": int(cfg.seed) + t, **r, "seconds": ms.seconds,
                   "train_seed": int(cfg.seed) + t, "unlearn_seed": u,
                   "layer_distance": float(np.mean([v[i] for v in per_layer.values()])),
                   "peak_memory_mib": ms.peak_bytes / 2 ** 20})
  return rows, losses, layers


def _add_relearning(st, cfg, rows, forget, model_sets, seed_keys, slots, log) -> None:
  """The anamnesis index (class scenario): relearning steps of every model to 95% of its
  original's forget accuracy, against the retrained model of the same seed."""
  log(f"relearning the forgotten classes for AIN (up to {cfg.ain.max_steps} steps per model)")
  targets = 0.95 * np.asarray([r["forget_acc"] for r in rows if r["method"] == "original"])
  keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(seed_keys)
  relearn = driver.Relearner(st.model, forget, seed_mode=st.mode, **dict(cfg.ain))
  steps = {}
  for name, ms in model_sets.items():
    n = jax.tree_util.tree_leaves(ms.variables)[0].shape[0]
    tiled = n == slots.size and name not in ("original", "retrain")
    steps[name] = relearn(ms, np.repeat(targets, slots.num_unlearn) if tiled else targets,
                          slots.tile(keys) if tiled else keys)
  position = {}
  for r in rows:
    i = position[r["method"]] = position.get(r["method"], -1) + 1
    t = r["train_seed"] - int(cfg.seed)
    r["relearn_steps"] = float(steps[r["method"]][i])
    r["ain"] = float(metrics_lib.anamnesis_index(steps[r["method"]][i], steps["retrain"][t]))

