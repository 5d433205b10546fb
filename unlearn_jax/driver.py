"""The loop driver: populations of models over seeds, epoch by epoch, compiled once.

Methods and training provide pure steps (`train.make_supervised_step`, each method's
`unlearn`); this module owns what surrounds them: the seed loop (one vmapped program, or one
compiled single-seed program called seed after seed), progress lines with throughput and
time left, resumable checkpoints of whole populations, and timing. Everything it needs is
an argument: the seed mode, the progress `log`, the resume `store`; the device mesh is JAX's
own context (`parallel.data_parallel`, i.e. `jax.set_mesh`).

Seed modes. `vmap` runs every seed in one program; `sequential` calls one compiled
single-seed program seed after seed. `default_seed_mode` picks `sequential` only for a
model with convolutions on the CPU backend: vmapping a convolution over seeds makes it a
grouped convolution, for which XLA:CPU has no fast path, so it need not beat a loop there
(`python -m experiments.benchmarks.benchmark`'s seeds table measures both on your machine); on
accelerators, and for models without convolutions, vmapping pays.

Compiled once: each population's epoch function (and each method's `unlearn`) is lowered and
compiled a single time with `.lower(...).compile()` and that executable is called for every
epoch and every seed; a state whose types drifted between epochs would fail loudly rather
than silently compile again. `seconds` is wall time after compilation, per seed.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import metrics as metrics_lib
from unlearn_jax import parallel
from unlearn_jax import steps as steps_lib
from unlearn_jax import train as train_lib
from unlearn_jax import train_programs
from unlearn_jax.adapter import model_variables
from unlearn_jax.population import PopulationProgram, compiled_peak_bytes, stack_members  # noqa: F401



def has_convolution(variables) -> bool:
  """Whether a model's variables (arrays or `jax.eval_shape` structs) hold a convolution
  kernel: a parameter of four or more dimensions (H, W, C_in, C_out)."""
  return any(len(getattr(a, "shape", ())) >= 4
             for a in jax.tree_util.tree_leaves(variables.get("params", variables)
                                                if isinstance(variables, dict) else variables))


def default_seed_mode(variables, backend: str | None = None) -> str:
  """`sequential` for a model with convolutions (`has_convolution` of its variables, or
  of their `jax.eval_shape`) on the CPU backend, `vmap` otherwise (module docstring: why).
  It names no model: a user's conv net gets the same choice as the library's."""
  backend = backend or jax.default_backend()
  return "sequential" if backend == "cpu" and has_convolution(variables) else "vmap"


def check_seed_mode(mode: str) -> str:
  return parallel.check_loop(mode, "seed_mode")


def method_key(seed_key: jax.Array, name: str) -> jax.Array:
  """A method's key for one seed: independent of which other methods run."""
  return jax.random.fold_in(seed_key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class SeedSlots:
  """Seeds per stage: T trained models × U unlearning seeds as one leading axis of T·U
  slots (slot t·U + u: trained model t, unlearning seed u), so a method runs on every pair
  as one program. With U = 1 the slots are the training seeds and the keys are exactly the
  single-stage ones (`method_key(seed_key, name)`); unlearning seed u > 0 folds u in."""
  num_train: int
  num_unlearn: int = 1

  @property
  def size(self) -> int:
    return self.num_train * self.num_unlearn

  def stages(self, slot: int) -> tuple[int, int]:
    """(training seed index, unlearning seed index) of a slot."""
    return divmod(int(slot), self.num_unlearn)

  def tile(self, tree):
    """Each trained model's leaves repeated U times along the leading axis."""
    if self.num_unlearn == 1:
      return tree
    return jax.tree_util.tree_map(lambda a: jnp.repeat(a, self.num_unlearn, axis=0), tree)

  def method_keys(self, seed_keys: jax.Array, name: str) -> jax.Array:
    """[T·U] keys of method `name`: slot (t, u) gets method_key(seed t), with u folded in
    for u > 0."""
    base = jax.vmap(lambda k: method_key(k, name))(seed_keys)
    if self.num_unlearn == 1:
      return base
    return jnp.stack([base[t] if u == 0 else jax.random.fold_in(base[t], u)
                      for t in range(self.num_train) for u in range(self.num_unlearn)])


@dataclasses.dataclass
class ModelSet:
  """Variables for every seed (leading axis = seed) and how long they took."""
  name: str
  variables: dict
  seconds: float
  compile_seconds: float = 0.0
  aux: dict = dataclasses.field(default_factory=dict)
  artifacts: dict = dataclasses.field(default_factory=dict)   # e.g. synthetic images
  peak_bytes: float = float("nan")   # XLA's memory analysis of the compiled method
  along: dict = dataclasses.field(default_factory=dict)   # phase/metric -> [seeds, evals]


def stack_seeds(trees):
  """Per-seed pytrees stacked along a new leading (seed) axis."""
  return stack_members(trees)


def seed_slice(tree, i: int):
  return jax.tree_util.tree_map(lambda a: a[i], tree)


class Progress:
  """Progress lines with throughput and time left (at most one every 2 s, and the last)."""

  def __init__(self, log: Callable[[str], None], label: str, total: int,
               examples_per_unit: int, unit: str = "epoch"):
    self.log, self.label, self.total, self.n, self.unit = log, label, total, examples_per_unit, unit
    self.start = time.perf_counter()
    self.last_print = 0.0
    self.first = 0   # units done before this process started (a resumed run)

  def update(self, done: int, metrics: dict | None = None):
    now = time.perf_counter()
    elapsed = now - self.start
    if done < self.total and now - self.last_print < 2.0:
      return
    self.last_print = now
    ran = done - self.first
    rate = ran * self.n / max(elapsed, 1e-9)
    left = (self.total - done) * elapsed / max(ran, 1)
    extra = " ".join(f"{k} {float(v):.4f}" for k, v in (metrics or {}).items())
    self.log(f"  {self.label}: {self.unit} {done}/{self.total} {extra} | {rate:,.0f} examples/s "
             f"| {elapsed:.1f}s elapsed, {left:.1f}s left")


class StepProgress:
  """Progress inside a method (`steps.run(..., progress=self)`, called from the compiled
  program): steps done of the schedule, steps/s and time left, at most one line every 2 s
  and none for a method that finishes within 2 s. Vmapped seeds report together (the
  slowest seed's count)."""

  def __init__(self, log: Callable[[str], None], label: str):
    self.log, self.label = log, label
    self.start = self.last_print = None
    self.done = 0

  def __call__(self, done, total):
    now = time.perf_counter()
    done, total = int(np.min(done)), int(np.max(total))
    if self.start is None or done < self.done:   # the first report, or the next seed's
      self.start = self.last_print = now
      self.first = self.done = done
      return
    self.done = done
    if now - self.last_print < 2.0:
      return
    self.last_print = now
    elapsed = now - self.start
    rate = (done - self.first) / max(elapsed, 1e-9)
    self.log(f"  {self.label}: step {done}/{total} | {rate:,.1f} steps/s | {elapsed:.1f}s "
             f"elapsed, {(total - done) / max(rate, 1e-9):.1f}s left")


def chunk_steps(steps_per_epoch: int, most: int) -> int:
  """The largest divisor of `steps_per_epoch` that is at most `most` (>= 1): the chunk an
  `unrolled` train loop runs per call, so that no chunk spans two epochs."""
  most = max(1, min(int(most), int(steps_per_epoch)))
  return max(k for k in range(1, most + 1) if steps_per_epoch % k == 0)


def train_population(model, cfg: train_lib.TrainConfig, init_vars, x, y, keys, *,
                     seed_mode: str = "vmap", log: Callable[[str], None] = print,
                     label: str = "train", store=None,
                     programs: dict | None = None, loop: str = "scan",
                     steps_per_call: int = 8) -> ModelSet:
  """Trains one model per seed (leading axis of `init_vars`/`keys`), epoch by epoch.

  One epoch function is compiled once and called for every epoch (and, in `sequential`
  mode, every seed). With a `checkpoint.ResumeStore` the whole train state (every seed) is
  saved every `store.every` epochs and a rerun continues from the newest one: the epoch key
  comes from the state's step counter, so the result is bitwise that of an uninterrupted
  run. `programs` (a dict the caller keeps): the epoch program is compiled once for every
  call with the same model, recipe and shapes (the chunks of a population). The state is
  donated to each epoch (its buffers are dead once the next state exists).

  `loop`: `scan` compiles an epoch as one `lax.scan`; `unrolled` compiles a chunk of
  `chunk_steps(spe, steps_per_call)` steps written out without a loop
  (`train.train_steps`) and calls it until the epoch is done: the same batches, keys and
  steps, so the same model up to rounding. Which is faster depends on the model, its
  convolution and the backend: `unlearn_jax.train_programs` chooses by measurement."""
  check_seed_mode(seed_mode)
  # The one check of a loop and its chunk (the ValueError names the argument).
  train_programs.TrainProgram(loop=loop, steps_per_call=steps_per_call)
  num_seeds = keys.shape[0]
  x, y = jnp.asarray(x), jnp.asarray(y)
  spe = train_lib.steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = train_lib.make_optimizer(cfg, spe)
  chunk = chunk_steps(spe, steps_per_call) if loop == "unrolled" else spe
  calls = spe // chunk   # program calls per epoch

  def train_epoch(st, xx, yy, k):
    """(state, metrics of the chunk's steps [steps]): an epoch (scan) or a chunk of it."""
    if loop == "scan":
      st, hist = train_lib.train_epochs(model, cfg, st, xx, yy, k, 1, tx)
      return st, jax.tree_util.tree_map(lambda a: a[0], hist)   # [1] epoch -> the epoch
    return train_lib.train_steps(model, cfg, st, xx, yy, k, chunk, tx)
  # One name per loop form: a scan and an unrolled program are different executables.
  one_epoch = train_epoch
  program_name = f"epoch {seed_mode} {loop} {chunk} {model!r} {cfg}"
  # A copy: the state is donated epoch by epoch, and jit would otherwise hand back
  # `init_vars`' own buffers (the caller's, e.g. the retrained population's start).
  init_state = parallel.vmap_seeds(lambda v: train_lib.init_train_state(
      jax.tree_util.tree_map(jnp.copy, v), tx))
  # Seeds on the mesh's `seeds` axis (the optimizer's fresh zeros would otherwise come out
  # replicated, and the epoch program's output, seed-sharded, would not match its input).
  state = jax.jit(init_state)(init_vars)
  if seed_mode == "vmap":
    state = parallel.shard_seeds(state)
  start, seconds_before = 0, 0.0
  progress = Progress(log, label, cfg.epochs, x.shape[0] * num_seeds)
  if store is not None:
    found = store.restore_latest(label, state)
    if found is not None:
      start, state, meta = found
      seconds_before, progress.first = float(meta.get("seconds", 0.0)), start
      log(f"  {label}: resumed after epoch {start}/{cfg.epochs} from {store.directory / label}")

  epochs = PopulationProgram(one_epoch, (0, None, None, 0), mode=seed_mode, donate=(0,),
                             cache=programs, name=program_name)
  epochs.calls((state, x, y, keys))          # compiled now, not inside the first epoch's time
  compile_s = epochs.compile_seconds
  run_call = lambda st: epochs(st, x, y, keys)

  def run_epoch(st):
    """An epoch: `calls` calls of the program; metrics averaged over the epoch's steps
    (a scan's per-epoch mean)."""
    if loop == "scan":
      return run_call(st)
    hists = []
    for _ in range(calls):
      st, h = run_call(st)
      hists.append(h)
    return st, jax.tree_util.tree_map(
        lambda *a: jnp.mean(jnp.concatenate(a, axis=-1), axis=-1), *hists)

  progress.start = time.perf_counter()
  for e in range(start, cfg.epochs):
    state, hist = run_epoch(state)
    progress.update(e + 1, {k: jnp.mean(v) for k, v in hist.items()})
    if store is not None and store.due(e + 1, cfg.epochs):
      store.save(label, e + 1, state,
                 {"seconds": seconds_before + time.perf_counter() - progress.start})
  variables = jax.block_until_ready(state.variables)
  seconds = (seconds_before + time.perf_counter() - progress.start) / num_seeds
  return ModelSet(label, variables, seconds, compile_s)


def train_population_streaming(model, cfg: train_lib.TrainConfig, init_vars, x, y, keys, *,
                               log: Callable[[str], None] = print, label: str = "train",
                               mesh=None) -> ModelSet:
  """`train_population` with batches streamed from host memory (`data.streaming`): the
  training set never sits in device memory; seeds run in sequence. Same batches, keys and
  steps as the in-memory loop, hence the same weights."""
  from unlearn_jax.data import streaming
  num_seeds = keys.shape[0]
  source = streaming.ArraySource(np.asarray(x), np.asarray(y))
  progress = Progress(log, label, cfg.epochs * num_seeds, len(source))
  step = streaming.train_step(model, cfg, train_lib.steps_per_epoch(len(source), cfg.batch_size))
  outs = []
  for i in range(num_seeds):
    v, _ = streaming.fit_streaming(
        model, cfg, seed_slice(init_vars, i), source, keys[i], step=step,
        mesh=mesh, on_epoch=lambda e, st, m, i=i: progress.update(
            i * cfg.epochs + e + 1, {k: float(val) for k, val in m.items()}))
    outs.append(v)
  variables = jax.block_until_ready(stack_seeds(outs))
  return ModelSet(label, variables, (time.perf_counter() - progress.start) / num_seeds)


class MethodProgram:
  """One method's program over seeds, compiled once per input signature and reused (every
  chunk of a population, every call of a run): `vmap` runs the seeds as one program,
  `sequential` one single-seed program called seed after seed.

  With `along=(evaluate, every)` the program also returns the evaluations the driver loop
  records along the method's steps (`steps.run`: `evaluate(variables, eval_data) ->
  {name: scalar}` every `every` epochs of each phase); `eval_data` is an argument of the
  program, not a constant folded into it."""

  def __init__(self, method, ctx, hparams: dict, *, seed_mode: str = "vmap", along=None,
               log: Callable[[str], None] | None = None):
    check_seed_mode(seed_mode)
    self.method, self.seed_mode = method, seed_mode
    unlearn = method(ctx, **hparams)          # checks the hyperparameters now
    evaluate, every = along if along is not None else (None, 1)
    progress = StepProgress(log, method.name) if log is not None else None

    def fn(v, d, k, e):
      return unlearn(v, d, k, every=every, progress=progress,
                     evaluate=None if evaluate is None else (lambda vv: evaluate(vv, e)))

    # Named after the method, so compile logs (`jax_log_compiles`) say which program it is.
    fn.__name__ = fn.__qualname__ = f"unlearn_{method.name}"
    self._programs = {}        # one executable per (program, input signature)
    self._whole = self._population(fn, (0, None, 0, None), "whole")
    self._spent = 0.0          # compile seconds of the programs built and dropped
    self.peak_bytes = float("nan")
    self._steps, self._evaluate, self._every, self._progress = (
        unlearn.steps, evaluate, every, progress)

  def _population(self, fn, in_axes, name: str) -> PopulationProgram:
    """`fn` over the seeds (`population.PopulationProgram`), sharing this method's cache."""
    return PopulationProgram(fn, in_axes, mode=self.seed_mode, cache=self._programs,
                             name=f"{self.method.name} {name}")

  @property
  def compile_seconds(self) -> float:
    return self._spent + self._whole.compile_seconds

  def compiled(self, *args):
    """The executable for every seed of arguments shaped like `args` (compiled on first
    use; in `sequential` mode the single-seed one)."""
    return self._whole.calls(args)[0][0]

  def __call__(self, variables, data, keys, eval_data=()):
    """(variables, aux) for every seed, and the seconds after compilation per seed
    (`peak_bytes`: the compiled program's, `compiled_peak_bytes`)."""
    out, aux = self._whole(variables, data, keys, eval_data)
    self.peak_bytes = compiled_peak_bytes(self._whole.last)
    return out, aux, self._whole.seconds / keys.shape[0]

  # ---------------------------------------------------------------- checkpointed chunks
  def resumable(self, variables, data, keys, eval_data, store, label: str,
                every_epochs: int, every_steps: int = 0,
                log: Callable[[str], None] = print):
    """(variables, aux, seconds per seed) of the method run as checkpointed chunks
    (`steps.plan`): `every_epochs` epochs of a phase (cycles of a cycled schedule) and
    `every_steps` data-free steps (0: whole phases) per chunk. The state of every seed and
    the histories so far are saved in the `checkpoint.ResumeStore` `store` under `label`
    after each chunk (step = chunks done), and a rerun continues from the newest. A chunk
    is that piece of the one-program run (same keys, same batches, same order), so the
    weights equal an uninterrupted run's; equal-length chunks of a phase share one
    compiled program, `start` being an argument. `seconds` excludes compilation."""
    steps, n = self._steps, keys.shape[0]
    evaluate, every, progress = self._evaluate, self._every, self._progress

    def init(v, d, k):
      return steps.init(jax.tree_util.tree_map(jnp.copy, v), d, k)

    def chunk_fn(chunk):
      def f(st, start, e):
        return steps_lib.run_chunk(
            steps, chunk, st, start, every=every, progress=progress, total=total,
            evaluate=None if evaluate is None else (lambda vv: evaluate(vv, e)))
      f.__name__ = f.__qualname__ = f"unlearn_{self.method.name}_{chunk.kind}"
      return f

    first = jax.eval_shape(init, seed_slice(variables, 0), data, keys[0])
    chunks = steps_lib.plan(steps, first, every_epochs, every_steps)
    total = steps_lib.total_steps(steps, first) if progress is not None else 0

    def hists_tree(hists):
      """The histories so far as leaves and their structure: orbax drops empty subtrees
      (a phase without metrics), so the saved tree holds only leaves."""
      leaves, treedef = jax.tree_util.tree_flatten(hists, is_leaf=lambda x: x is None)
      return [leaf for leaf in leaves if leaf is not None], treedef

    def saved_like(done: int):
      """The shapes of the tree saved after `done` chunks (every seed)."""
      st, hists = first, []
      for c in chunks[:done]:
        st, h = jax.eval_shape(chunk_fn(c), st, 0, eval_data)
        hists.append(h)
      with_seeds = lambda s: jax.ShapeDtypeStruct((n,) + s.shape, s.dtype)
      leaves, treedef = hists_tree(hists)
      structure[done] = (treedef, hists)
      return jax.tree_util.tree_map(with_seeds, {"state": st, "hists": leaves})

    structure = {}

    def call(fn, tree, *shared, name):
      """`fn` compiled once (per signature) and applied to every seed of `tree`."""
      program = self._population(fn, (0,) + (None,) * len(shared), name)
      program.calls((tree,) + shared)
      self._spent += program.compile_seconds
      self.peak_bytes = float(np.nanmax([self.peak_bytes, compiled_peak_bytes(program.last)]))
      out = program(tree, *shared)
      return out, program.seconds

    found = store.restore_latest(label, saved_like)
    if found is None:
      done, seconds = 0, 0.0
      state, _ = call(lambda vk, d: init(vk[0], d, vk[1]), (variables, keys), data, name="init")
      hists = []
    else:
      done, tree, meta = found
      state, seconds = tree["state"], float(meta["seconds"])
      treedef, abstract = structure[done]
      it = iter(tree["hists"])
      hists = jax.tree_util.tree_unflatten(treedef, [
          None if leaf is None else next(it) for leaf in jax.tree_util.tree_flatten(
              abstract, is_leaf=lambda x: x is None)[0]])
      log(f"  {self.method.name}: resumed after chunk {done}/{len(chunks)} from "
          f"{store.directory / label}")
    for i in range(done, len(chunks)):
      c = chunks[i]
      (state, hist), secs = call(chunk_fn(c), state, jnp.asarray(c.start, jnp.int32),
                                 eval_data, name=f"chunk {c.signature}")
      hists.append(hist)
      seconds += secs
      if c.kind != "enter":
        t = time.perf_counter()
        store.save(label, i + 1, {"state": state, "hists": hists_tree(hists)[0]},
                   {"seconds": seconds})
        seconds += time.perf_counter() - t
    joined = steps_lib.join_histories(steps, chunks, hists, axis=1)
    (out, aux), secs = call(lambda sh: steps_lib.finish(steps, *sh), (state, joined),
                            name="finish")
    return out, aux, (seconds + secs) / n


def apply_method(method, ctx, hparams: dict, variables, data, keys, *,
                 seed_mode: str = "vmap", program: MethodProgram | None = None,
                 along=None, eval_data=(), log: Callable[[str], None] | None = None,
                 resume=None) -> ModelSet:
  """Runs one method on every seed's original (compiled once; pass the same `program` to
  reuse its executable across calls); returns the unlearned ModelSet. Synthetic images in
  the method's aux become `artifacts`; the evaluations along its steps (`along`, see
  `MethodProgram`) `ModelSet.along`; with `log`, progress lines from inside a long method
  (`StepProgress`). `resume=(store, label, every_epochs, every_steps)` runs it as
  checkpointed chunks that a rerun continues (`MethodProgram.resumable`)."""
  program = program or MethodProgram(method, ctx, hparams, seed_mode=seed_mode, along=along,
                                     log=log)
  before = program.compile_seconds
  if resume is None:
    out, aux, seconds = program(variables, data, keys, eval_data)
  else:
    store, label, every_epochs, every_steps = resume
    out, aux, seconds = program.resumable(variables, data, keys, eval_data, store, label,
                                          every_epochs, every_steps, log=log or print)
  if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(out)):
    raise FloatingPointError(f"method {method.name} returned non-finite weights")
  aux = dict(parallel.to_host(aux))
  along_out = {k: np.asarray(v) for k, v in aux.pop("along", {}).items()}
  artifacts = {k: np.asarray(v) for k, v in aux.items() if k.startswith("synthetic_")
               and np.ndim(v) > 1}
  return ModelSet(method.name, out, seconds, program.compile_seconds - before,
                  {k: np.asarray(v).tolist() for k, v in aux.items() if k not in artifacts},
                  artifacts, program.peak_bytes, along_out)


class SeedMetrics:
  """Per seed: losses and accuracies on every split of `arrays` ({split: (x, y)}) and the
  loss-threshold MIA (forget vs the test examples of the forgotten classes, or all of test).

  Built once per run: its jitted evaluation compiles once and serves every model set of the
  same shapes (original, retrain, each method). `__call__(model_set, arrays)` returns (rows,
  per-seed {split: per-example losses})."""

  def __init__(self, model, *, seed_mode: str = "vmap", eval_batch: int = 1000):
    check_seed_mode(seed_mode)
    self.seed_mode = seed_mode

    # The data goes in as arguments: closed-over arrays become constants that XLA tries
    # (slowly, noisily) to fold.
    def per_seed(v, arrays):
      out = {}
      for split, (x, y) in arrays.items():
        logits = train_lib.predict(model, v, x, eval_batch)
        out[split] = (metrics_lib.per_example_loss(logits, y), metrics_lib.accuracy(logits, y))
      return out

    self._program = PopulationProgram(per_seed, (0, None), mode=seed_mode)

  def __call__(self, model_set: ModelSet, arrays: dict):
    variables = model_variables(model_set.variables)
    num_seeds = jax.tree_util.tree_leaves(variables)[0].shape[0]
    res = parallel.to_host(self._program(variables, arrays))
    per = [jax.tree_util.tree_map(lambda a: a[i], res) for i in range(num_seeds)]
    rows, losses = [], []
    for i, r in enumerate(per):
      row = {f"{split}_acc": float(acc) for split, (_, acc) in r.items()}
      nonmember = r["test_forget"][0] if "test_forget" in r else r["test"][0]
      try:
        row["mia_loss_lr"] = metrics_lib.mia_loss_lr(r["forget"][0], nonmember, seed=i)
      except ValueError:
        row["mia_loss_lr"] = float("nan")
      for split in ("retain", "forget", "test"):
        row[f"{split}_loss"] = float(np.mean(r[split][0]))
      rows.append(row)
      losses.append({split: loss for split, (loss, _) in r.items()})
    return rows, losses


class Relearner:
  """Relearning steps (`metrics.relearn_steps`) of every seed's model, for the anamnesis
  index; built once per run, so its scan compiles once for every model set."""

  def __init__(self, model, forget, *, seed_mode: str = "vmap", **relearn_kwargs):
    check_seed_mode(seed_mode)
    self.seed_mode = seed_mode
    def relearn(v, f, t, k):
      return metrics_lib.relearn_steps(model, v, f, t, k, **relearn_kwargs)[0]
    self.forget = forget
    self._program = PopulationProgram(relearn, (0, None, 0, 0), mode=seed_mode)

  def __call__(self, model_set: ModelSet, targets, keys) -> np.ndarray:
    variables = model_variables(model_set.variables)
    return np.asarray(parallel.to_host(self._program(variables, self.forget,
                                                     jnp.asarray(targets), keys)))
