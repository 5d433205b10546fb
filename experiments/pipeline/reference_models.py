"""The reference models every experiment trains: seed s's original on all of train and
its retrained model on the retain set, from the same initial weights.

`references` is the one way a stage gets them (experiments.unlearn, evaluate, tune,
requests and klom_curve): trained population by population, in chunks of models when
memory asks for it, and, with a cache root, checkpointed under
`<root>/<fingerprint digest>/` with the fingerprint of what produced them, so that a later
stage with the same data, split, model, recipe, seeds and N restores them instead."""

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
  for) and whether they were restored from the cache."""
  original: driver.ModelSet | None
  retrain: driver.ModelSet | None
  reused: bool


def fingerprint(cfg, st: Setup, num_models: int, names=REFERENCES, first_seed=None) -> dict:
  """What determines the references; a cached set is reused only when this matches."""
  fp = {"dataset": cfg.dataset, "train_subset": int(cfg.train_subset or 0),
        "test_subset": int(cfg.test_subset or 0), "model": st.model_name,
        "split_sha256": st.split.digests(), "recipe": dataclasses.asdict(st.recipe),
        "num_models": int(num_models),
        "seed": int(cfg.seed) if first_seed is None else int(first_seed)}
  if tuple(names) != REFERENCES:
    fp["populations"] = list(names)
  prog = st.train_program
  if (prog.loop, prog.conv) != (train_programs.DEFAULT.loop, train_programs.DEFAULT.conv):
    # Another compiled program trains other weights (equal up to rounding): another cache.
    fp["train_program"] = {"loop": prog.loop, "conv": prog.conv,
                           "steps_per_call": prog.steps_per_call}
  return fp


def digest(fp: dict) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def references(cfg, st: Setup, num_models: int, log, *, cache: Path | None = None,
               chunk: int = 0, names=REFERENCES, first_seed=None, data=None,
               init_vars=None, **train_kwargs) -> References:
  """The references named in `names` of `num_models` seeds (model i has seed
  `first_seed + i`, default `cfg.seed`), vmapped in chunks of `chunk` models (0: all at
  once). `data`: ((x, y) of train, (x, y) of retain) as the stage holds them (default: the
  setup's, on the default device); `init_vars`: the seeds' initial weights as the stage
  placed them; `train_kwargs` go to `driver.train_population` (a resume `store`, ...).
  With a `cache` root they are restored from `cache/<digest>/` when there, else trained
  and saved there."""
  fp = fingerprint(cfg, st, num_models, names, first_seed)
  first_seed = int(cfg.seed) if first_seed is None else int(first_seed)
  job = _Job(st, num_models, chunk, log, names, first_seed, data, init_vars, train_kwargs)
  if cache is None:
    return _train(job, None, fp)
  cache = Path(cache).expanduser() / digest(fp)
  # Two stages with the same settings at once: one trains and saves, the other waits for
  # the lock and then restores what the first saved. In a multi-process job process 0
  # holds the lock for all (the others would wait on it while process 0 waits on them).
  from unlearn_jax.data import cache_lock
  with cache_lock(cache) if parallel.is_writer() else contextlib.nullcontext():
    parallel.barrier("reference cache locked")
    if (cache / "fingerprint.json").exists():
      return _restore(job, cache, fp)
    return _train(job, cache, fp)


@dataclasses.dataclass
class _Job:
  st: Setup
  num_models: int
  chunk: int
  log: object
  names: tuple
  first_seed: int
  data: tuple | None
  init_vars: object
  train_kwargs: dict


def _restore(job: _Job, cache: Path, fp: dict) -> References:
  from unlearn_jax import checkpoint
  saved = json.loads((cache / "fingerprint.json").read_text())
  if saved.get("digest") != digest(fp):
    raise UsageError(f"{cache}/fingerprint.json does not match its directory name; "
                     "the reference cache is corrupt: delete that directory")
  job.log(f"reusing the references in {cache} (fingerprint {saved['digest']})")
  st = job.st
  like = parallel.seed_sharded(jax.eval_shape(jax.vmap(lambda k: models_lib.init_variables(
      st.model, k, st.ds.input_shape)), jax.random.split(jax.random.PRNGKey(0), job.num_models)))
  out = {}
  for name in job.names:
    try:
      v = checkpoint.restore_variables(cache / name, like)
    except checkpoint.CheckpointError as e:
      raise UsageError(f"{e}; delete {cache} to train the references anew") from e
    out[name] = driver.ModelSet(name, v, saved["seconds"][name])
  return References(out.get("original"), out.get("retrain"), True)


def _train(job: _Job, cache: Path | None, fp: dict) -> References:
  st, n = job.st, job.num_models
  if job.data is None:
    x, y = jnp.asarray(st.ds.train_x), jnp.asarray(st.ds.train_y)
    job.data = ((x, y), (x[st.split.retain], y[st.split.retain]))
  keys = seed_keys(job.first_seed, n)
  init_vars = job.init_vars if job.init_vars is not None else initial_variables(st, keys)
  sets, programs = {}, {}   # each population's epoch program, compiled once for all chunks
  for name, arrays in zip(REFERENCES, job.data):
    if name not in job.names:
      continue
    xx, yy = arrays
    bounds = model_chunks(n, job.chunk)
    if len(bounds) == 1:      # all at once: the ModelSet as trained (compile time, aux)
      sets[name] = train_reference(st, name, xx, yy, keys, init_vars, job.log,
                                   **{"programs": programs, **job.train_kwargs})
      continue
    parts, seconds = [], 0.0
    for a, b in bounds:
      ms = train_reference(st, name, xx, yy, keys[a:b],
                           jax.tree_util.tree_map(lambda v: v[a:b], init_vars), job.log,
                           **{"label": f"{name} models {a + 1}-{b}/{n}", "programs": programs,
                              **job.train_kwargs})
      parts.append(ms.variables)
      seconds += ms.seconds * (b - a)
    sets[name] = driver.ModelSet(
        name, jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts), seconds / n)
  if cache is not None:
    _save(cache, fp, sets, job.log)
  return References(sets.get("original"), sets.get("retrain"), False)


def _save(cache: Path, fp: dict, sets: dict, log) -> None:
  from unlearn_jax import checkpoint
  log(f"saving the references to {cache} (a later stage with the same settings reuses them)")
  for name, ms in sets.items():       # every process: the arrays span them all
    checkpoint.save_variables(cache / name, ms.variables)
  # Written last and atomically: its presence means the references are complete.
  if parallel.is_writer():
    tmp = cache / f".fingerprint.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"digest": digest(fp), "fingerprint": fp,
                               "seconds": {k: v.seconds for k, v in sets.items()}},
                              indent=2) + "\n")
    os.replace(tmp, cache / "fingerprint.json")
  parallel.barrier("reference cache written")
