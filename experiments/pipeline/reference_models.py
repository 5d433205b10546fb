"""The reference models every experiment trains: seed s's original on all of train and
its retrained model on the retain set, from the same initial weights.

`references` is the one way a stage gets them (experiments.unlearn, evaluate, tune,
requests, klom_curve and the matching oracles): trained population by population, in
chunks of models when memory asks for it, and, with `--config.references_dir`, each
population checkpointed under `<references_dir>/<digest>/` beside the fingerprint of what
produced it, so that a later stage with the same data, split, model, recipe, seeds and N
restores it instead."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import driver
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from unlearn_jax import train_programs
from unlearn_jax.evaluation import model_chunks
from .experiment import Setup
from .usage import UsageError


# The references every experiment trains: seed s's original on all of train and its
# retrained model on the retain set, from the same initial weights (`fold_in(seed key, 0)`),
# with training keys `fold_in(seed key, salt)`.
REFERENCE_SALTS = {"original": 1, "retrain": 2}


def seed_keys(first_seed: int, count: int) -> jax.Array:
  """[count] PRNG keys of seeds first_seed, first_seed + 1, ..."""
  return jnp.stack([jax.random.PRNGKey(int(first_seed) + i) for i in range(int(count))])


# How many retain images a data-dependent initialisation reads (airbench's whitening: 5,000).
DATA_INIT_IMAGES = 5000


def initial_variables(st: Setup, keys: jax.Array):
  """Every seed's initial weights (leading axis = seed), shared by its references. A model
  whose initialisation reads data (`models.data_init`: airbench's whitening) reads the
  first `DATA_INIT_IMAGES` retain images, so that the retrained references see no forget
  example, not even through their initialisation."""
  variables = jax.jit(jax.vmap(lambda k: models_lib.init_variables(
      st.model, jax.random.fold_in(k, 0), st.ds.input_shape)))(keys)
  images = st.ds.train_x[np.asarray(st.split.retain)[:DATA_INIT_IMAGES]]
  return models_lib.data_init(st.model, variables, images)


def train_reference(st: Setup, name: str, x, y, keys: jax.Array, init_vars, log, **kwargs):
  """The `name` reference ("original" or "retrain") of every seed on (x, y): the setup's
  recipe and seed mode (`driver.train_population`; `kwargs`: label, store, programs)."""
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, REFERENCE_SALTS[name]))(keys)
  program = st.train_program
  return driver.train_population(st.train_model or st.model, st.recipe, init_vars, x, y,
                                 train_keys, seed_mode=st.mode, log=log,
                                 loop=program.loop, steps_per_call=program.steps_per_call,
                                 **{"label": name, **kwargs})


REFERENCES = ("original", "retrain")


class References(NamedTuple):
  """The trained references: `original` and `retrain` ModelSets (None for one not asked
  for) and whether every one asked for was restored from the cache."""
  original: driver.ModelSet | None
  retrain: driver.ModelSet | None
  reused: bool


def cache_root(cfg) -> Path | None:
  """The references' cache, `--config.references_dir` (None: no cache)."""
  root = cfg.get("references_dir")
  return Path(root).expanduser() if root else None


def fingerprint(cfg, st: Setup, num_models: int, first_seed=None) -> dict:
  """What determines a population of references; a cached one is reused only when this
  and its name match."""
  fp = {"dataset": cfg.dataset, "train_subset": int(cfg.train_subset or 0),
        "test_subset": int(cfg.test_subset or 0), "model": st.model_name,
        "split_sha256": st.split.digests(), "recipe": dataclasses.asdict(st.recipe),
        "num_models": int(num_models),
        "seed": int(cfg.seed) if first_seed is None else int(first_seed)}
  prog = st.train_program
  if (prog.loop, prog.conv) != (train_programs.DEFAULT.loop, train_programs.DEFAULT.conv):
    # Another compiled program trains other weights (equal up to rounding): another cache.
    fp["train_program"] = {"loop": prog.loop, "conv": prog.conv,
                           "steps_per_call": prog.steps_per_call}
  return fp


def digest(fp: dict) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def references(cfg, st: Setup, num_models: int, log, *, chunk: int = 0, names=REFERENCES,
               first_seed=None, data=None, init_vars=None, **train_kwargs) -> References:
  """The references named in `names` of `num_models` seeds (model i has seed
  `first_seed + i`, default `cfg.seed`), vmapped in chunks of `chunk` models (0: all at
  once). `data`: ((x, y) of train, (x, y) of retain) as the stage holds them (default: the
  setup's, on the default device); `init_vars`: the seeds' initial weights as the stage
  placed them; `train_kwargs` go to `driver.train_population` (a resume `store`, ...).
  With `--config.references_dir`, each population is restored from
  `<references_dir>/<digest of its fingerprint and name>/` when there, else trained and
  saved there."""
  first_seed = int(cfg.seed) if first_seed is None else int(first_seed)
  job = _Job(st, num_models, chunk, log, first_seed, data, init_vars, train_kwargs)
  root, fp = cache_root(cfg), fingerprint(cfg, st, num_models, first_seed)
  out, reused = {}, []
  for name in names:
    if root is None:
      out[name] = _train(job, name)
      continue
    entry = {**fp, "population": name}
    cache = root / digest(entry)
    # Two stages with the same settings at once: one trains and saves, the other waits for
    # the lock and then restores what the first saved. In a multi-process job process 0
    # holds the lock for all (the others would wait on it while process 0 waits on them).
    from unlearn_jax.data import cache_lock
    with cache_lock(cache) if parallel.is_writer() else contextlib.nullcontext():
      parallel.barrier("reference cache locked")
      if (cache / "fingerprint.json").exists():
        out[name] = _restore(job, name, cache, entry)
        reused.append(name)
      else:
        out[name] = _train(job, name)
        _save(cache, entry, out[name], log)
  return References(out.get("original"), out.get("retrain"), len(reused) == len(names))


@dataclasses.dataclass
class _Job:
  st: Setup
  num_models: int
  chunk: int
  log: object
  first_seed: int
  data: tuple | None
  init_vars: object
  train_kwargs: dict


def _restore(job: _Job, name: str, cache: Path, entry: dict) -> driver.ModelSet:
  from unlearn_jax import checkpoint
  saved = json.loads((cache / "fingerprint.json").read_text())
  if saved.get("digest") != digest(entry):
    raise UsageError(f"{cache}/fingerprint.json does not match its directory name; "
                     "the reference cache is corrupt: delete that directory")
  job.log(f"reusing the references in {cache} ({name}, fingerprint {saved['digest']})")
  st = job.st
  like = parallel.seed_sharded(jax.eval_shape(jax.vmap(lambda k: models_lib.init_variables(
      st.model, k, st.ds.input_shape)), jax.random.split(jax.random.PRNGKey(0), job.num_models)))
  try:
    v = checkpoint.restore_variables(cache / "variables", like)
  except checkpoint.CheckpointError as e:
    raise UsageError(f"{e}; delete {cache} to train the references anew") from e
  return driver.ModelSet(name, v, saved["seconds"])


def _train(job: _Job, name: str) -> driver.ModelSet:
  """One population of references, all at once or in chunks of models (every chunk runs
  the one epoch program compiled for the first)."""
  st, n = job.st, job.num_models
  if job.data is None:
    x, y = jnp.asarray(st.ds.train_x), jnp.asarray(st.ds.train_y)
    job.data = ((x, y), (x[st.split.retain], y[st.split.retain]))
  keys = seed_keys(job.first_seed, n)
  if job.init_vars is None:
    job.init_vars = initial_variables(st, keys)
  xx, yy = job.data[REFERENCES.index(name)]
  bounds = model_chunks(n, job.chunk)
  programs = {}
  if len(bounds) == 1:      # all at once: the ModelSet as trained (compile time, aux)
    return train_reference(st, name, xx, yy, keys, job.init_vars, job.log,
                           **{"programs": programs, **job.train_kwargs})
  parts, seconds = [], 0.0
  for a, b in bounds:
    ms = train_reference(st, name, xx, yy, keys[a:b],
                         jax.tree_util.tree_map(lambda v: v[a:b], job.init_vars), job.log,
                         **{"label": f"{name} models {a + 1}-{b}/{n}", "programs": programs,
                            **job.train_kwargs})
    parts.append(ms.variables)
    seconds += ms.seconds * (b - a)
  return driver.ModelSet(
      name, jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts), seconds / n)


def _save(cache: Path, entry: dict, ms: driver.ModelSet, log) -> None:
  from unlearn_jax import checkpoint
  log(f"saving the references to {cache} ({ms.name}; a later stage with the same settings "
      "reuses them)")
  checkpoint.save_variables(cache / "variables", ms.variables)   # every process: the
  # arrays span them all. Written last and atomically: its presence means they are complete.
  if parallel.is_writer():
    tmp = cache / f".fingerprint.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"digest": digest(entry), "fingerprint": entry,
                               "seconds": ms.seconds}, indent=2) + "\n")
    os.replace(tmp, cache / "fingerprint.json")
  parallel.barrier("reference cache written")
