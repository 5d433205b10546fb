"""SISA: exact unlearning by Sharded, Isolated, Sliced, Aggregated training (Bourtoule et
al., IEEE S&P 2021), with the S shard models as one program over a `[S, ...]` axis.

Training. The examples are dealt at random into S disjoint shards and each shard into R
disjoint slices. Shard s trains in R stages: stage r trains `epochs_per_slice` epochs on
slices 1..r of the shard (incrementally, from stage r−1's state), and the whole train
state after every stage is checkpointed (orbax `CheckpointManager`, step = stage). The S
shards are one vmapped program (`shard_loop="vmap"`) or one compiled single-shard program
called per shard (`"sequential"`).

Unlearning. A deletion touches only the shards holding a deleted example; each restarts
from its checkpoint before the earliest slice that held one and retrains the later stages
without the deleted examples (vmapped over the affected shards). The result equals, to the
bit in `sequential` mode, training those shards from scratch without the deleted examples
with the same keys (`tests/test_sisa.py`); unaffected shards are untouched.

Exactness needs each shard's computation to depend only on its own examples, never on
how the shards are padded to one array: an epoch orders a shard's examples by a uniform
draw per *example id* (not a permutation of padded positions), runs a fixed number of
steps for all shards (the largest shard's), and a step whose batch holds no example of
the shard changes nothing (weights, optimizer state, step counter). Batches are masked
means over their valid rows. SGD with momentum at a constant learning rate (a schedule's
length would depend on the other shards).

Prediction aggregates the shard models: `vote` (majority of argmax, ties to the lowest
class) or `mean_logits` (argmax of the mean logits; `sisa_logits`).

Many devices and processes: inside `parallel.data_parallel(mesh)` the shards are placed
on the mesh's `seeds` axis (`parallel.shard_seeds`) and a group of shards whose size that
axis divides runs spread over it (every process of a multi-process job trains its own
shards); a smaller group runs whole on every device.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from unlearn_jax import parallel
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import as_adapter
from unlearn_jax.population import PopulationProgram
from unlearn_jax.steps import epoch_loop, make_step

AGGREGATIONS = ("vote", "mean_logits")


@dataclasses.dataclass(frozen=True)
class SisaConfig:
  """How the shards train: `epochs_per_slice` epochs at each of the R stages, SGD with
  momentum at a constant `lr`, batches of `batch_size` (masked at the shard's end)."""
  shards: int = 4
  slices: int = 4
  epochs_per_slice: int = 5
  batch_size: int = 64
  lr: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4


@dataclasses.dataclass
class SisaState:
  """Everything `unlearn_sisa` needs: the data, the assignment, the shard train states
  after every stage (in memory and, with `checkpoint_dir`, in orbax), the keys."""
  model: object
  config: SisaConfig
  x: np.ndarray
  y: np.ndarray
  shard_of: np.ndarray          # [n] shard of each example
  slice_of: np.ndarray          # [n] slice of each example (0..R-1)
  deleted: np.ndarray           # [n] bool
  stage_states: list            # R + 1 train states [S, ...]: stage 0 = initial weights
  shard_keys: jax.Array         # [S] keys
  shard_loop: str = "vmap"
  checkpoint_dir: Path | None = None
  log: list = dataclasses.field(default_factory=list)   # one dict per training / deletion
  # Per stage, the padded length of every shard's data: fixed at training time, so a
  # deletion reuses the compiled stage programs (a shard's result never depends on it).
  stage_lengths: list = dataclasses.field(default_factory=list)
  programs: dict = dataclasses.field(default_factory=dict)    # compiled once per state

  @property
  def variables(self):
    """The shard models now: variables with a leading [S] axis."""
    return self.stage_states[-1].variables


def _check(config: SisaConfig, n: int, shard_loop: str) -> None:
  parallel.check_loop(shard_loop, "shard_loop")
  for name in ("shards", "slices", "epochs_per_slice", "batch_size"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name}={getattr(config, name)} must be >= 1")
  if config.shards * config.slices > n:
    raise ValueError(f"shards × slices = {config.shards * config.slices} exceeds the "
                     f"{n} training examples: every slice needs at least one")
  if not config.lr > 0:
    raise ValueError(f"lr={config.lr} must be > 0")


def assign(n: int, shards: int, slices: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(shard_of [n], slice_of [n]): a random deal into `shards` near-equal shards, each cut
  into `slices` near-equal slices. The generator is salted: a plain `default_rng(seed)`
  permutation elsewhere (a forget set drawn with the same seed) must not line up with the
  shards."""
  order = np.random.default_rng([int(seed), 0x51A5]).permutation(n)
  shard_of, slice_of = np.empty(n, np.int32), np.empty(n, np.int32)
  for s, members in enumerate(np.array_split(order, shards)):
    shard_of[members] = s
    for r, part in enumerate(np.array_split(members, slices)):
      slice_of[part] = r
  return shard_of, slice_of


def _stage_arrays(state_like: SisaState, shards: Sequence[int], stage: int):
  """Padded per-shard data for stage `stage` (slices 0..stage-1) of `shards`:
  (x [k, L, ...], y [k, L], ids [k, L], valid [k, L]); L is the largest shard's count."""
  keep = ~state_like.deleted & (state_like.slice_of < stage)
  members = [np.flatnonzero(keep & (state_like.shard_of == s)) for s in shards]
  length = max([1] + [m.size for m in members] + state_like.stage_lengths[stage:stage + 1])
  idx = np.zeros((len(shards), length), np.int64)
  valid = np.zeros((len(shards), length), bool)
  for i, m in enumerate(members):
    idx[i, :m.size], valid[i, :m.size] = m, True
  return (jnp.asarray(state_like.x[idx]), jnp.asarray(state_like.y[idx]),
          jnp.asarray(idx.astype(np.int32)), jnp.asarray(valid))


def _tx(config: SisaConfig) -> optax.GradientTransformation:
  parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
  return optax.chain(*parts, optax.sgd(config.lr, momentum=config.momentum or None))


def _stage_fn(model, config: SisaConfig):
  """`fn(train_state, x [L,...], y [L], ids [L], valid [L], key, stage) -> train_state`:
  one shard, `epochs_per_slice` epochs of one stage. Depends only on the shard's valid
  examples (their ids order each epoch), never on L."""
  adapter = as_adapter(model)
  tx = _tx(config)
  bsz = config.batch_size

  def masked_ce(variables, batch, key):
    x, y, ok = batch
    logits, updates = adapter.apply(variables, x, train=True, rng=key)
    ce = train_lib.cross_entropy(logits, y)
    return jnp.sum(ce * ok) / jnp.maximum(jnp.sum(ok), 1), (updates, {})

  gradient_step = make_step(masked_ce, tx)

  def step(state, batch, key):
    new, _ = gradient_step(state, batch, key)
    # A batch with no example of this shard changes nothing at all.
    return jax.tree_util.tree_map(lambda a, b: jnp.where(jnp.any(batch[2]), a, b),
                                  new, state), {}

  def run(state, x, y, ids, valid, key, stage):
    length = valid.shape[0]
    steps = math.ceil(length / bsz)

    def plan(e):
      ekey = jax.random.fold_in(jax.random.fold_in(key, stage), e)
      k_order, k_steps = jax.random.fold_in(ekey, 0), jax.random.fold_in(ekey, 1)
      # Order by a draw per example id: the same whatever the padding.
      draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k_order, i)))(ids)
      order = jnp.argsort(jnp.where(valid, draw, jnp.inf), stable=True)
      order = jnp.resize(order, (steps * bsz,)).reshape(steps, bsz)
      pos = jnp.arange(steps * bsz).reshape(steps, bsz)
      keys = jax.vmap(lambda s: jax.random.fold_in(k_steps, s))(jnp.arange(steps))
      return (order, pos), keys

    def batch(selector):
      # The padded shard's batch: slots past its valid examples are masked out.
      o, p = selector
      ok = valid[o] & (p < jnp.sum(valid))
      return x[o], y[o], ok.astype(jnp.float32)

    return epoch_loop(step, state, jnp.arange(config.epochs_per_slice), plan, batch)[0]

  return run


def _train_stages(state: SisaState, shards: Sequence[int], first_stage: int) -> float:
  """Retrains stages first_stage..R of `shards` from stage first_stage−1; updates
  `state.stage_states` (and the checkpoints). Returns the seconds spent."""
  if not state.programs:
    fn = _stage_fn(state.model, state.config)
    axes = (0, 0, 0, 0, 0, 0, None)
    # Inside `parallel.data_parallel(mesh)`: shards on the mesh's `seeds` axis (over every
    # process of a multi-process job) when that axis divides the group ("spread").
    for name, mode, spread in (("vmap", "vmap", False), ("spread", "vmap", True),
                               ("single", "sequential", False)):
      state.programs[name] = PopulationProgram(fn, axes, mode=mode, spread=spread,
                                               name=f"sisa stage {name}")
  shards = list(shards)
  real = len(shards)
  if state.shard_loop == "vmap":
    # The vmapped program's leading axis is the group's size: padded to a power of two
    # (at most S) with idle copies, so a run of deletions compiles at most ⌈log2 S⌉ + 1
    # programs per stage instead of one per distinct group size. An idle copy has no
    # valid example, so its steps change nothing, and it is never written back.
    width = min(1 << (real - 1).bit_length(), state.config.shards)
    shards = shards + [shards[0]] * (width - real)
  sel = np.asarray(shards, np.int32)
  take = lambda tree: jax.tree_util.tree_map(lambda a: a[sel], tree)
  current = parallel.shard_seeds(take(state.stage_states[first_stage - 1]))
  keys = parallel.shard_seeds(state.shard_keys[sel])
  write = sel[:real]
  # Over several processes the shard states live on the host, whole on every process
  # (`_kept`): the gathers and scatters between stages are then NumPy, and the stage
  # program is the only computation on the population mesh. Eager indexing of a
  # population spread over processes would be one cross-process program per leaf,
  # dispatched back to back; on the CPU runtime those interleave and deadlock (1 run in
  # ~40 of three requests hung here, process 0 and 1 waiting in different leaves' gathers).
  many = jax.process_count() > 1
  mesh = parallel.active_mesh()
  spread = mesh is not None and len(shards) % mesh.shape["seeds"] == 0
  run = state.programs["single" if state.shard_loop != "vmap" else
                       "spread" if spread else "vmap"]

  t0 = time.perf_counter()
  for stage in range(first_stage, state.config.slices + 1):
    x, y, ids, valid = _stage_arrays(state, shards, stage)
    valid = valid.at[real:].set(False)
    x, y, ids, valid = parallel.shard_seeds((x, y, ids, valid))
    current = jax.block_until_ready(run(current, x, y, ids, valid, keys, stage))
    if many:
      done = _kept(current)
      state.stage_states[stage] = jax.tree_util.tree_map(
          lambda full, part: _set_rows(full, write, part[:real]), state.stage_states[stage],
          done)
    else:
      state.stage_states[stage] = jax.tree_util.tree_map(
          lambda full, part: full.at[write].set(part[:real]), state.stage_states[stage],
          current)
  seconds = time.perf_counter() - t0
  if state.checkpoint_dir is not None:
    _save(state, range(first_stage, state.config.slices + 1))
  return seconds


def _kept(tree):
  """A train state as the stages keep it over several processes: NumPy on the host, whole
  (`parallel.to_host`: one blocking all-gather per leaf); unchanged in one process."""
  return parallel.to_host(tree) if jax.process_count() > 1 else tree


def _set_rows(full: np.ndarray, rows, part) -> np.ndarray:
  out = np.array(full, copy=True)
  out[rows] = np.asarray(part)
  return out


def _save(state: SisaState, stages) -> None:
  options = ocp.CheckpointManagerOptions(create=True, max_to_keep=None)
  with ocp.CheckpointManager(Path(state.checkpoint_dir).resolve(), options=options) as mngr:
    for stage in stages:
      if stage in mngr.all_steps():
        mngr.delete(stage)
      mngr.save(stage, args=ocp.args.StandardSave(state.stage_states[stage]))
    mngr.wait_until_finished()


def restore_stage(checkpoint_dir: Path, like, stage: int):
  """The shard train states saved after `stage` (an orbax step), shaped as `like`."""
  with ocp.CheckpointManager(Path(checkpoint_dir).resolve()) as mngr:
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(stage, args=ocp.args.StandardRestore(abstract))


def train_sisa(model, data: tuple, key: jax.Array, config: SisaConfig = SisaConfig(), *,
               init_variables=None, assignment_seed: int = 0, shard_loop: str = "vmap",
               checkpoint_dir: str | Path | None = None, deleted=None,
               programs: dict | None = None) -> SisaState:
  """Trains the S shard models of `data = (x, y)` in R slices (see the module docstring).

  `init_variables`: one model's variables (every shard starts from them) or None (drawn
  from `key`). `deleted`: indices left out from the start (what a from-scratch retrain
  without them trains on). `programs`: another state's `programs` for the same model and
  config, to reuse its compiled stage programs. Returns a SisaState; `state.variables`
  are the [S] models.
  """
  x, y = np.asarray(data[0]), np.asarray(data[1])
  _check(config, len(y), shard_loop)
  shard_of, slice_of = assign(len(y), config.shards, config.slices, assignment_seed)
  k_init, k_shards = jax.random.split(key)
  if init_variables is None:
    from unlearn_jax import models as models_lib
    init_variables = models_lib.init_variables(model, k_init, x.shape[1:])
  tx = _tx(config)
  stacked = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (config.shards,) + a.shape),
                                   init_variables)
  # On the mesh's `seeds` axis inside `parallel.data_parallel` (a no-op outside one).
  init_state = parallel.shard_seeds(jax.vmap(lambda v: train_lib.init_train_state(v, tx))(
      stacked))
  gone = np.zeros(len(y), bool)
  if deleted is not None:
    gone[np.asarray(deleted, np.int64)] = True
  state = SisaState(model, config, x, y, shard_of, slice_of, gone,
                    [_kept(init_state)] * (config.slices + 1),
                    jax.random.split(k_shards, config.shards), shard_loop,   # local: no collective
                    Path(checkpoint_dir) if checkpoint_dir else None,
                    programs=programs if programs is not None else {})
  state.stage_lengths = [0] + [
      int(max(np.sum(~gone & (shard_of == sh) & (slice_of < stage))
              for sh in range(config.shards))) for stage in range(1, config.slices + 1)]
  if state.checkpoint_dir is not None:
    _save(state, [0])
  seconds = _train_stages(state, list(range(config.shards)), 1)
  state.log.append({"event": "train", "seconds": seconds,
                    "examples_trained": _examples_trained(state, range(config.shards), 1)})
  return state


def _examples_trained(state: SisaState, shards, first_stage: int) -> int:
  """Example-passes of stages first_stage..R of `shards` (epochs × stage sizes)."""
  keep = ~state.deleted
  total = 0
  for stage in range(first_stage, state.config.slices + 1):
    for s in shards:
      total += int(np.sum(keep & (state.shard_of == s) & (state.slice_of < stage)))
  return total * state.config.epochs_per_slice


def unlearn_sisa(state: SisaState, deleted_indices) -> dict:
  """Deletes `deleted_indices` (indices into the training data) exactly: each affected
  shard restarts from its state before the earliest slice holding one of them and
  retrains the later stages without them (vmapped over the affected shards). Updates
  `state` in place; returns a report: affected shards, the stage each restarted from,
  example-passes retrained, and those of retraining every shard from scratch on what is
  left (`full_retrain_examples`; `fraction_of_full` = their ratio)."""
  idx = np.unique(np.asarray(deleted_indices, np.int64))
  if idx.size == 0:
    raise ValueError("deleted_indices is empty")
  if idx.min() < 0 or idx.max() >= len(state.y):
    raise ValueError(f"deleted_indices must lie in [0, {len(state.y)}); got "
                     f"{idx.min()}..{idx.max()}")
  new = idx[~state.deleted[idx]]
  report = {"deleted": int(new.size), "already_deleted": int(idx.size - new.size)}
  if new.size == 0:
    report.update(affected_shards=[], restart_stage={}, examples_retrained=0, seconds=0.0)
    return report
  state.deleted[new] = True
  affected = sorted({int(s) for s in state.shard_of[new]})
  first = {s: int(state.slice_of[new[state.shard_of[new] == s]].min()) + 1 for s in affected}
  seconds, retrained = 0.0, 0
  # Shards restarting at the same stage share one program (vmapped over them).
  for stage in sorted(set(first.values())):
    group = [s for s in affected if first[s] == stage]
    seconds += _train_stages(state, group, stage)
    retrained += _examples_trained(state, group, stage)
  full = _examples_trained(state, range(state.config.shards), 1)
  report.update(affected_shards=affected, restart_stage=first, examples_retrained=retrained,
                full_retrain_examples=full, seconds=seconds,
                fraction_of_full=retrained / max(full, 1))
  state.log.append({"event": "delete", **report})
  return report


def sisa_logits(model, variables, x, batch_size: int = 1000) -> jax.Array:
  """[S, n, C] eval-mode logits of every shard model."""
  return jax.vmap(lambda v: train_lib.predict(model, v, x, batch_size))(variables)


def sisa_predict(model, variables, x, how: str = "vote", batch_size: int = 1000) -> jax.Array:
  """Aggregated predictions [n]: `vote` = the class most shard models predict (ties to the
  lowest class id), `mean_logits` = argmax of the shard models' mean logits."""
  if how not in AGGREGATIONS:
    raise ValueError(f"how={how!r} is unknown; allowed: {', '.join(AGGREGATIONS)}")
  return aggregate(sisa_logits(model, variables, x, batch_size), how)


def aggregate(logits, how: str = "vote") -> jax.Array:
  """[n] predictions from the shard models' logits [S, n, C] (see `sisa_predict`)."""
  if how not in AGGREGATIONS:
    raise ValueError(f"how={how!r} is unknown; allowed: {', '.join(AGGREGATIONS)}")
  if how == "mean_logits":
    return jnp.argmax(jnp.mean(logits, axis=0), axis=-1)
  votes = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]).sum(axis=0)
  return jnp.argmax(votes, axis=-1)
