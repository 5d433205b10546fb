"""The end-to-end unlearning experiment: data -> split -> original/retrain -> methods ->
metrics -> report. `experiments/unlearn.py` is a thin absl wrapper around `run`.

Seeds: seed s trains its original from `init_key(s)`; its retrained model starts from
the same initial weights; each method gets `fold_in(seed_key, crc32(name))`, so a
method's result does not depend on which other methods run. Seeds are vmapped in
`scan` loop mode and run one after another in `host` mode (conv models on CPU).

`seconds` is wall time of the execution after compilation, per seed: in vmapped mode
the batch's time divided by the number of seeds. Compile time is reported separately
in results.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import zlib
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax import methods as methods_lib
from unlearn_jax import metrics as metrics_lib
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from unlearn_jax import train as train_lib

REFERENCE_MODELS = ("original", "retrain")


class UsageError(ValueError):
  """A user mistake: printed as one line, exit status 2, nothing written."""


@dataclasses.dataclass
class ModelSet:
  """Variables for every seed (leading axis = seed) and how long they took."""
  name: str
  variables: dict
  seconds: float
  compile_seconds: float = 0.0
  aux: dict = dataclasses.field(default_factory=dict)
  artifacts: dict = dataclasses.field(default_factory=dict)   # e.g. synthetic images


# ----------------------------------------------------------------------------- recipes
def default_model(dataset: data_lib.Dataset) -> str:
  return "mlp" if dataset.image_size <= 8 else "cnn"


def default_recipe(dataset: data_lib.Dataset, model_name: str) -> train_lib.TrainConfig:
  """Training recipe by model and image size; every field can be overridden."""
  small = dataset.image_size <= 8
  if model_name == "mlp":
    return train_lib.TrainConfig(epochs=30, batch_size=64, lr=0.05)
  if model_name == "cnn":
    if small:
      return train_lib.TrainConfig(epochs=15, batch_size=64, lr=0.05)
    color = dataset.input_shape[-1] == 3
    return train_lib.TrainConfig(epochs=10, batch_size=128, lr=0.1, weight_decay=5e-4,
                                 augment=color)
  # resnet18: the GPU recipe (SGD momentum, cosine, crop+flip).
  return train_lib.TrainConfig(epochs=15 if small else 40, batch_size=128, lr=0.1,
                               weight_decay=5e-4, schedule="cosine",
                               augment=(not small) and dataset.input_shape[-1] == 3)


def resolve_recipe(base: train_lib.TrainConfig, overrides: dict) -> train_lib.TrainConfig:
  """Applies config overrides; -1, '' and None mean 'keep the recipe's value'."""
  fields = {f.name for f in dataclasses.fields(base)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise UsageError(f"--config.train.{unknown[0]} is unknown; allowed: {', '.join(sorted(fields))}")
  chosen = {k: v for k, v in overrides.items() if v is not None and v != "" and v != -1}
  if "augment" in chosen:
    chosen["augment"] = bool(chosen["augment"])
  return dataclasses.replace(base, **chosen)


def method_key(seed_key: jax.Array, name: str) -> jax.Array:
  return jax.random.fold_in(seed_key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


# ----------------------------------------------------------------------------- progress
class Progress:
  """Progress lines with throughput and time left."""

  def __init__(self, log: Callable[[str], None], label: str, total_epochs: int,
               examples_per_epoch: int):
    self.log, self.label, self.total, self.n = log, label, total_epochs, examples_per_epoch
    self.start = time.perf_counter()
    self.last_print = 0.0
    self.first = 0   # epochs done before this process started (a resumed run)

  def batch(self, epoch: int, seed: int, num_seeds: int, batch: int, num_batches: int):
    """Host mode: a line at most every 20 s inside long epochs."""
    now = time.perf_counter()
    if now - self.last_print < 20.0 or batch == num_batches:
      return
    self.last_print = now
    done = epoch - self.first + (seed + batch / num_batches) / num_seeds
    elapsed = now - self.start
    rate = done * self.n / max(elapsed, 1e-9)
    left = (self.total - self.first - done) * elapsed / max(done, 1e-9)
    self.log(f"  {self.label}: epoch {epoch + 1}/{self.total}, seed {seed + 1}/{num_seeds}, "
             f"batch {batch}/{num_batches} | {rate:,.0f} examples/s | {elapsed:.1f}s elapsed, "
             f"{left:.1f}s left")

  def update(self, done: int, metrics: dict):
    now = time.perf_counter()
    elapsed = now - self.start
    if done < self.total and now - self.last_print < 2.0:
      return
    self.last_print = now
    ran = done - self.first
    rate = ran * self.n / max(elapsed, 1e-9)
    left = (self.total - done) * elapsed / max(ran, 1)
    extra = " ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
    self.log(f"  {self.label}: epoch {done}/{self.total} {extra} | {rate:,.0f} examples/s | "
             f"{elapsed:.1f}s elapsed, {left:.1f}s left")


# ----------------------------------------------------------------------------- training
def stack_seeds(trees):
  """Per-seed pytrees stacked along a new leading (seed) axis."""
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


@contextlib.contextmanager
def checkpoint_errors_as_usage():
  """A corrupt or foreign resume checkpoint is the user's to fix: one line, no traceback."""
  from unlearn_jax import checkpoint
  try:
    yield
  except checkpoint.CheckpointError as e:
    raise UsageError(str(e)) from e


def train_population(model, cfg: train_lib.TrainConfig, init_vars, x, y, keys, vmapped: bool,
                     log, label: str, store=None) -> ModelSet:
  """Trains one model per seed (leading axis of `init_vars`/`keys`), epoch by epoch.

  With a `checkpoint.ResumeStore` the whole train state (every seed) is saved every
  `store.every` epochs and a rerun continues from the newest one: the epoch key comes from
  the state's step counter, so the result is bitwise that of an uninterrupted run."""
  num_seeds = keys.shape[0]
  tx = train_lib.make_optimizer(cfg, train_lib.steps_per_epoch(x.shape[0], cfg.batch_size))
  progress = Progress(log, label, cfg.epochs, x.shape[0] * num_seeds)
  compile_s = 0.0
  if vmapped:
    init_state = jax.jit(parallel.vmap_seeds(lambda v: train_lib.init_train_state(v, tx)))
    epoch = jax.jit(parallel.vmap_seeds(
        lambda st, xx, yy, k: train_lib.train_epochs(model, cfg, st, xx, yy, k, 1),
        in_axes=(0, None, None, 0)))
    state = init_state(init_vars)
  else:
    state = stack_seeds([train_lib.init_train_state(jax.tree_util.tree_map(lambda a: a[i], init_vars),
                                              tx) for i in range(num_seeds)])
  start, seconds_before = 0, 0.0
  if store is not None:
    with checkpoint_errors_as_usage():
      found = store.restore_latest(label, state)
    if found is not None:
      start, state, meta = found
      seconds_before, progress.first = float(meta.get("seconds", 0.0)), start
      log(f"  {label}: resumed after epoch {start}/{cfg.epochs} from {store.directory / label}")

  def save_if_due(e, state_fn):
    """Checkpoints after epoch `e` when due; `state_fn` builds the state only then."""
    if store is not None and store.due(e, cfg.epochs):
      store.save(label, e, state_fn(),
                 {"seconds": seconds_before + time.perf_counter() - progress.start})

  if vmapped:
    t0 = time.perf_counter()
    epoch_c = epoch.lower(state, x, y, keys).compile()
    compile_s = time.perf_counter() - t0
    progress.start = time.perf_counter()
    for e in range(start, cfg.epochs):
      state, hist = epoch_c(state, x, y, keys)
      progress.update(e + 1, {k: jnp.mean(v) for k, v in hist.items()})
      save_if_due(e + 1, lambda: state)
    variables = jax.block_until_ready(state.variables)
  else:
    states = [jax.tree_util.tree_map(lambda a: a[i], state) for i in range(num_seeds)]
    progress.start = time.perf_counter()
    for e in range(start, cfg.epochs):
      hists = []
      for i in range(num_seeds):
        with train_lib.on_host_batch(
            lambda b, nb, e=e, i=i: progress.batch(e, i, num_seeds, b, nb)):
          states[i], hist = train_lib.train_epochs(model, cfg, states[i], x, y, keys[i], 1)
        hists.append(hist)
      progress.update(e + 1, {k: np.mean([float(h[k][0]) for h in hists]) for k in hists[0]})
      save_if_due(e + 1, lambda: stack_seeds(states))
    variables = jax.block_until_ready(stack_seeds([s.variables for s in states]))
  seconds = (seconds_before + time.perf_counter() - progress.start) / num_seeds
  return ModelSet(label, variables, seconds, compile_s)


def train_population_streaming(model, cfg: train_lib.TrainConfig, init_vars, x, y, keys, log,
                               label: str, mesh=None) -> ModelSet:
  """`train_population` with batches streamed from host memory (`data.streaming`): the
  training set never sits in device memory; seeds run in sequence. Same batches, keys and
  steps as the host loop, hence the same weights."""
  from unlearn_jax.data import streaming
  num_seeds = keys.shape[0]
  source = streaming.ArraySource(np.asarray(x), np.asarray(y))
  progress = Progress(log, label, cfg.epochs * num_seeds, len(source))
  outs = []
  for i in range(num_seeds):
    v, _ = streaming.fit_streaming(
        model, cfg, jax.tree_util.tree_map(lambda a: a[i], init_vars), source, keys[i],
        mesh=mesh, on_epoch=lambda e, st, m, i=i: progress.update(
            i * cfg.epochs + e + 1, {k: float(val) for k, val in m.items()}))
    outs.append(v)
  variables = jax.block_until_ready(stack_seeds(outs))
  return ModelSet(label, variables, (time.perf_counter() - progress.start) / num_seeds)


def apply_method(spec, ctx, hparams: dict, variables, data, keys, vmapped: bool) -> ModelSet:
  """Runs one method on every seed's original; returns the unlearned ModelSet."""
  fn = spec(ctx, **hparams)
  num_seeds = keys.shape[0]
  if vmapped:
    f = jax.jit(parallel.vmap_seeds(fn, in_axes=(0, None, 0)))
    t0 = time.perf_counter()
    compiled = f.lower(variables, data, keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, aux = jax.block_until_ready(compiled(variables, data, keys))
    seconds = (time.perf_counter() - t0) / num_seeds
  else:
    outs, auxs = [], []
    t0 = time.perf_counter()
    for i in range(num_seeds):
      o, a = fn(jax.tree_util.tree_map(lambda v: v[i], variables), data, keys[i])
      outs.append(jax.block_until_ready(o))
      auxs.append(a)
    seconds = (time.perf_counter() - t0) / num_seeds
    compile_s = 0.0
    out = stack_seeds(outs)
    aux = jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(v) for v in a]), *auxs) if auxs[0] else {}
  leaves_ok = all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree_util.tree_leaves(out))
  if not leaves_ok:
    raise FloatingPointError(f"method {spec.name} returned non-finite weights")
  artifacts = {k: np.asarray(v) for k, v in aux.items() if k.startswith("synthetic_")
               and np.ndim(v) > 1}
  return ModelSet(spec.name, out, seconds, compile_s,
                  {k: np.asarray(v).tolist() for k, v in aux.items() if k not in artifacts},
                  artifacts)


# ----------------------------------------------------------------------------- evaluation
def evaluate(model, model_set: ModelSet, arrays: dict, vmapped: bool, eval_batch: int):
  """Per seed: logits, losses and accuracies on every split; mia_loss_lr."""
  # The data goes in as arguments: closed-over arrays become constants that XLA tries
  # (slowly, noisily) to fold.
  def per_seed(v, arrays):
    out = {}
    for split, (x, y) in arrays.items():
      logits = train_lib.predict(model, v, x, eval_batch)
      out[split] = (metrics_lib.per_example_loss(logits, y), metrics_lib.accuracy(logits, y))
    return out

  num_seeds = jax.tree_util.tree_leaves(model_set.variables)[0].shape[0]
  if vmapped:
    res = jax.jit(parallel.vmap_seeds(per_seed, in_axes=(0, None)))(model_set.variables, arrays)
    per = [jax.tree_util.tree_map(lambda a: np.asarray(a[i]), res) for i in range(num_seeds)]
  else:
    f = jax.jit(per_seed)
    per = [jax.tree_util.tree_map(np.asarray, f(jax.tree_util.tree_map(lambda a: a[i],
                                                                        model_set.variables),
                                                 arrays))
           for i in range(num_seeds)]
  rows, losses = [], []
  for i, r in enumerate(per):
    row = {f"{split}_acc": float(acc) for split, (_, acc) in r.items()}
    # Non-members of the forget set's own distribution: in the class scenarios the
    # test examples of the forgotten classes, else the whole test split.
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


# ----------------------------------------------------------------------------- workdir
def prepare_workdir(workdir: str, overwrite: bool) -> tuple[Path, Path]:
  """Checks the workdir and returns (final path, staging path); writes nothing yet."""
  final = Path(workdir).expanduser().resolve()
  if final.exists() and not final.is_dir():
    raise UsageError(f"--workdir={workdir} is a file; give a directory path")
  if final.is_dir() and any(final.iterdir()) and not overwrite:
    raise UsageError(f"--workdir={workdir} already holds files; pass --overwrite to replace "
                     "them or choose another directory")
  if not final.parent.exists():
    raise UsageError(f"--workdir={workdir}: parent directory {final.parent} does not exist")
  staging = final.parent / f".{final.name}.partial-{int(time.time() * 1e3)}"
  return final, staging


def commit_workdir(staging: Path, final: Path) -> None:
  """Moves the finished run into place (the only step that touches `final`)."""
  if final.exists():
    shutil.rmtree(final)
  staging.rename(final)


def resume_dir_for(workdir: str) -> Path:
  """Where a run's resume checkpoints live: a hidden sibling of the workdir."""
  final = Path(workdir).expanduser().resolve()
  return final.parent / f".{final.name}.resume"


@contextlib.contextmanager
def staged_workdir(workdir: str, overwrite: bool):
  """Yields (final, staging): write into `staging`; it is moved to `final` when the block
  ends normally and deleted when it raises, so no half-written run is ever left."""
  final, staging = prepare_workdir(workdir, overwrite)
  try:
    yield final, staging
    commit_workdir(staging, final)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- the run
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


def parse_classes(text) -> tuple:
  if isinstance(text, (tuple, list)):
    return tuple(int(c) for c in text)
  text = str(text).strip()
  if not text:
    return ()
  try:
    return tuple(int(c) for c in text.split(","))
  except ValueError:
    raise UsageError(f"--forget_classes={text!r} must be a comma list of class ids, e.g. 3 or 3,5")


def resolve_methods(text, scenario: str, batch_norm: Optional[bool] = None,
                    log: Callable[[str], None] = lambda s: None) -> tuple:
  """The methods to run. By default every registered method meant for `scenario` (and,
  when `batch_norm` is known, runnable on the model); a method named explicitly that
  cannot run here is a UsageError naming why."""
  names = [m.strip() for m in str(text).split(",") if m.strip()] if text else []
  known = methods_lib.list_methods()
  if not names:
    chosen = []
    for m in known:
      spec = methods_lib.get_method(m)
      if scenario not in spec.scenarios:
        continue
      if batch_norm is False and "batch_norm" in spec.requires:
        log(f"note: skipping {m}: it needs a model with BatchNorm (--model=cnn or resnet18)")
        continue
      chosen.append(m)
    return tuple(chosen)
  for m in names:
    if m in REFERENCE_MODELS:
      raise UsageError(f"--methods: {m!r} is always run as a reference; list unlearning "
                       f"methods only ({', '.join(known)})")
    if m not in known:
      raise UsageError(f"--methods: {m!r} is unknown; allowed: {', '.join(known)}")
    spec = methods_lib.get_method(m)
    if not spec.reads and scenario not in spec.scenarios:
      raise UsageError(f"--methods: {m} is zero-shot and forgets whole classes: it needs "
                       f"--scenario=class with --forget_classes (got --scenario={scenario})")
    if batch_norm is False and "batch_norm" in spec.requires:
      raise UsageError(f"--methods: {m} needs a model with BatchNorm layers; the chosen "
                       f"model has none (use --model=cnn or --model=resnet18)")
  return tuple(dict.fromkeys(names))


def validate(cfg) -> None:
  """Checks everything that needs no data; raises UsageError naming the flag."""
  name = cfg.dataset
  if not (name in data_lib.TFDS_NAMES or name == "digits" or name.startswith("image_folder:")):
    raise UsageError(f"--dataset={name!r} is unknown; allowed: {', '.join(data_lib.DATASET_CHOICES)}")
  if cfg.model and cfg.model not in models_lib.MODEL_CHOICES:
    raise UsageError(f"--model={cfg.model!r} is unknown; allowed: {', '.join(models_lib.MODEL_CHOICES)}")
  if cfg.scenario not in data_lib.SCENARIOS:
    raise UsageError(f"--scenario={cfg.scenario!r} is unknown; allowed: {', '.join(data_lib.SCENARIOS)}")
  if cfg.scenario == "random" and not 0.0 < float(cfg.forget_fraction) < 1.0:
    raise UsageError(f"--forget_fraction={cfg.forget_fraction} must lie strictly between 0 and 1")
  if cfg.seeds < 1:
    raise UsageError(f"--seeds={cfg.seeds} must be at least 1")
  if cfg.loop not in ("auto",) + train_lib.LOOP_MODES:
    raise UsageError(f"--loop={cfg.loop!r} is unknown; allowed: auto, scan, host")
  if cfg.get("mesh_seeds", 1) < 1 or cfg.get("mesh_data", 0) < 0:
    raise UsageError(f"--mesh_seeds={cfg.get('mesh_seeds', 1)} must be >= 1 and "
                     f"--mesh_data={cfg.get('mesh_data', 0)} >= 0 (0 = all remaining devices)")
  resolve_methods(cfg.methods, cfg.scenario)
  parse_classes(cfg.forget_classes)


@dataclasses.dataclass
class Setup:
  """Everything an experiment needs before training: data, split, model, recipe."""
  ds: data_lib.Dataset
  spec: data_lib.SplitSpec
  split: data_lib.Split
  model_name: str
  model: object
  recipe: train_lib.TrainConfig
  mode: str
  method_names: tuple
  mesh: object = None   # jax.sharding.Mesh over ("seeds", "data"), None on one device

  @property
  def vmapped(self) -> bool:
    return self.mode == "scan"


def setup(cfg, log: Callable[[str], None] = print) -> Setup:
  """Validates `cfg`, loads the dataset, makes the split and picks model, recipe, loop
  mode and methods; raises UsageError (naming the flag) for every user mistake."""
  validate(cfg)
  try:
    ds = data_lib.load_dataset(cfg.dataset, cfg.data_dir or None, cfg.train_subset,
                               cfg.test_subset)
  except data_lib.DatasetError as e:
    raise UsageError(str(e)) from e
  train_fine = test_fine = None
  if cfg.scenario == "subclass":
    if ds.train_coarse_y is None:
      raise UsageError(f"--scenario=subclass needs a dataset with coarse labels (cifar100); "
                       f"--dataset={cfg.dataset} has one label set")
    train_fine, test_fine = ds.train_y, ds.test_y
    ds = dataclasses.replace(ds, train_y=ds.train_coarse_y, test_y=ds.test_coarse_y,
                             num_classes=ds.num_coarse_classes)
  spec = data_lib.SplitSpec(cfg.scenario, float(cfg.forget_fraction),
                            parse_classes(cfg.forget_classes), bool(cfg.stratified),
                            int(cfg.split_seed))
  try:
    split = data_lib.make_split(spec, ds.train_y, ds.test_y, ds.num_classes, train_fine,
                                test_fine)
  except data_lib.SplitError as e:
    raise UsageError(str(e)) from e
  model_name = cfg.model or default_model(ds)
  model = models_lib.get_model(model_name, ds.num_classes)
  shapes = jax.eval_shape(lambda: models_lib.init_variables(model, jax.random.PRNGKey(0),
                                                            ds.input_shape))
  method_names = resolve_methods(cfg.methods, cfg.scenario, models_lib.has_batch_norm(shapes),
                                 log)
  recipe = resolve_recipe(default_recipe(ds, model_name), dict(cfg.train))
  mode = train_lib.default_loop_mode(model_name) if cfg.loop == "auto" else cfg.loop
  mesh = make_mesh(cfg, recipe.batch_size, mode)
  return Setup(ds, spec, split, model_name, model, recipe, mode, method_names, mesh)


def make_mesh(cfg, batch_size: int, mode: str):
  """The device mesh of `--mesh_seeds` x `--mesh_data` (None when one device is all there
  is); UsageError when the devices or the batch size do not fit it."""
  seeds, data = int(cfg.get("mesh_seeds", 1)), int(cfg.get("mesh_data", 0))
  if jax.device_count() == 1 and seeds == 1 and data <= 1:
    return None
  try:
    mesh = parallel.make_mesh(data=data, seeds=seeds)
    parallel.check_batch_size(batch_size, mesh, "--config.train.batch_size")
  except parallel.MeshError as e:
    raise UsageError(f"--mesh_seeds={seeds} --mesh_data={data}: {e}") from e
  if seeds > 1 and mode != "scan":
    raise UsageError(f"--mesh_seeds={seeds} shards vmapped seeds, but loop mode {mode} runs "
                     "seeds in sequence; pass --loop=scan or --mesh_seeds=1")
  return mesh


def resolve_hparams(method_names, method_hparams: dict, scenario: str, log) -> dict:
  """Each method's defaults with the user's overrides; an unknown name is a UsageError."""
  hparams = {}
  for m in method_names:
    mspec = methods_lib.get_method(m)
    given = dict(method_hparams.get(m, {}))
    unknown = sorted(set(given) - set(mspec.defaults))
    if unknown:
      raise UsageError(f"--{m}.{unknown[0]} is not a hyperparameter of {m}; allowed: "
                       f"{', '.join(sorted(mspec.defaults))}")
    hparams[m] = {**mspec.defaults, **given}
    if scenario not in mspec.scenarios:
      log(f"note: {m} is not meant for the {scenario} scenario "
          f"(meant for: {', '.join(mspec.scenarios)}); running it anyway")
  return hparams


def run(cfg, method_hparams: dict, log: Callable[[str], None] = print,
        resume_dir: Optional[Path] = None) -> RunResult:
  """Runs the experiment described by `cfg` (see experiments/configs/default.py).

  Pure computation plus logging: writing the run directory is `report.write_run`'s job.
  With `resume_dir`, training states (every `cfg.checkpoint_every` epochs) and finished
  methods are checkpointed there, and a rerun with the same settings continues from them.
  """
  t_start = time.perf_counter()
  st = setup(cfg, log)
  ds, spec, split, model_name, model = st.ds, st.spec, st.split, st.model_name, st.model
  recipe, mode, vmapped, method_names = st.recipe, st.mode, st.vmapped, st.method_names
  hparams = resolve_hparams(method_names, method_hparams, cfg.scenario, log)
  store = open_resume_store(resume_dir, cfg, hparams, st)

  log(f"dataset {ds.name}: {len(ds.train_y)} train / {len(ds.test_y)} test, "
      f"{ds.num_classes} classes, input {ds.input_shape}")
  log(f"split {spec.scenario}: forget {split.forget.size}, retain {split.retain.size}, "
      f"val {split.val.size}, test {split.test.size}"
      + (f", forget-class test {split.test_forget.size}" if split.test_forget.size else ""))
  log(f"model {model_name}, {cfg.seeds} seed(s), loop mode {mode} "
      f"({'seeds vmapped' if vmapped else 'seeds in sequence'}), backend {jax.default_backend()}")
  log(f"recipe: {recipe}")

  log(f"devices: {parallel.describe(st.mesh)}")
  with parallel.data_parallel(st.mesh):
    # In memory and replicated on every device of the mesh; batches are split over `data`
    # inside the steps. With --stream the original and retrained models read their batches
    # from host memory instead, so the whole train set is never copied to the device (the
    # methods still get forget and retain there).
    stream = bool(cfg.get("stream", False))
    if stream:
      take = lambda idx: parallel.replicate((jnp.asarray(ds.train_x[idx]),
                                             jnp.asarray(ds.train_y[idx])))
      train_set = (ds.train_x, ds.train_y)
    else:
      train_set = parallel.replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)))
      take = lambda idx: (train_set[0][idx], train_set[1][idx])
    forget, retain = take(split.forget), take(split.retain)
    seed_keys = jnp.stack([jax.random.PRNGKey(int(cfg.seed) + i) for i in range(cfg.seeds)])
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys)
    init_vars = jax.jit(jax.vmap(lambda k: models_lib.init_variables(model, k, ds.input_shape)))(
        init_keys)
    if vmapped:
      init_vars = parallel.shard_seeds(init_vars)

    model_sets = {}
    with train_lib.loop_mode(mode):
      def population(x, y, salt, label):
        keys = jax.vmap(lambda k: jax.random.fold_in(k, salt))(seed_keys)
        if stream:   # from host memory, batch by batch (seeds in sequence, no resume)
          return train_population_streaming(model, recipe, init_vars, x, y, keys, log, label,
                                            st.mesh)
        return train_population(model, recipe, init_vars, x, y, keys, vmapped, log, label,
                                store)

      log("training original (all of train)" + (", streamed from host memory" if stream else ""))
      model_sets["original"] = population(*train_set, 1, "original")
      log(f"  original: {model_sets['original'].seconds:.2f}s per seed")
      log("training retrain (retain only, same recipe and initial weights)")
      retain_set = (ds.train_x[split.retain], ds.train_y[split.retain]) if stream else retain
      model_sets["retrain"] = population(*retain_set, 2, "retrain")
      retrain_s = model_sets["retrain"].seconds
      log(f"  retrain: {retrain_s:.2f}s per seed")
      ctx = methods_lib.MethodContext(model, ds.num_classes, ds.input_shape,
                                      spec.forget_classes if cfg.scenario == "class" else (),
                                      model_name)
      for m in method_names:
        mspec = methods_lib.get_method(m)
        keys = jax.vmap(lambda k: method_key(k, m))(seed_keys)
        data = methods_lib.select_data(mspec, forget, retain)
        ms = resumed_method(store, m, model_sets["original"].variables, log)
        if ms is None:
          ms = apply_method(mspec, ctx, hparams[m], model_sets["original"].variables, data,
                            keys, vmapped)
          if store is not None:
            store.save(f"method_{m}", 0, {"variables": ms.variables, "artifacts": ms.artifacts},
                       {"seconds": ms.seconds, "compile_seconds": ms.compile_seconds,
                        "aux": ms.aux})
        model_sets[m] = ms
        flags = {k: v for k, v in ms.aux.items() if k in ("stopped_early",) and any(np.ravel(v))}
        log(f"method {m}: {ms.seconds:.2f}s per seed ({ms.seconds / max(retrain_s, 1e-9):.2f}x "
            f"retrain)" + (f", compile {ms.compile_seconds:.1f}s" if ms.compile_seconds else "")
            + (f" [{m} stopped early on seeds {flags}]" if flags else ""))

    arrays = {"retain": retain, "forget": forget, "val": take_test(ds, split.val),
              "test": take_test(ds, split.test)}
    if split.test_forget.size:
      arrays["val_forget"] = take_test(ds, split.val_forget)
      arrays["test_forget"] = take_test(ds, split.test_forget)
    log("evaluating")
    rows, losses = [], {}
    with train_lib.loop_mode(mode):
      for name, ms in model_sets.items():
        metric_rows, losses[name] = evaluate(model, ms, arrays, vmapped, cfg.eval_batch_size)
        for i, r in enumerate(metric_rows):
          rows.append({"method": name, "seed": int(cfg.seed) + i, **r, "seconds": ms.seconds})
    if cfg.scenario == "class":
      log(f"relearning the forgotten classes for AIN (up to {cfg.ain.max_steps} steps per model)")
      targets = 0.95 * np.asarray([r["forget_acc"] for r in rows if r["method"] == "original"])
      keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(seed_keys)
      steps = {}
      with train_lib.loop_mode(mode):
        for name, ms in model_sets.items():
          steps[name] = relearn_population(model, ms, forget, targets, keys, vmapped, dict(cfg.ain))
      for r in rows:
        i = r["seed"] - int(cfg.seed)
        r["relearn_steps"] = float(steps[r["method"]][i])
        r["ain"] = float(metrics_lib.anamnesis_index(steps[r["method"]][i], steps["retrain"][i]))
  info = {"model": model_name, "loop_mode": mode, "seeds_vmapped": vmapped,
          "mesh": dict(st.mesh.shape) if st.mesh is not None else None,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "jax_version": jax.__version__,
          "compile_seconds": {k: v.compile_seconds for k, v in model_sets.items()},
          "aux": {k: v.aux for k, v in model_sets.items() if v.aux},
          "wall_seconds": time.perf_counter() - t_start}
  return RunResult(rows, model_sets, losses, split, ds, recipe, hparams, info)


# Fields that do not change what is computed: a resumed run may differ in these.
_NOT_FINGERPRINTED = ("plots", "save_checkpoints", "checkpoint_every", "distributed")


def open_resume_store(resume_dir, cfg, hparams: dict, st: Setup):
  """The `checkpoint.ResumeStore` of a run (None without `resume_dir`); UsageError when
  it holds another run's checkpoints or a corrupt fingerprint."""
  if resume_dir is None:
    return None
  from unlearn_jax import checkpoint
  fp = {"config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_FINGERPRINTED},
        "hparams": hparams, "recipe": dataclasses.asdict(st.recipe), "mode": st.mode,
        "mesh": dict(st.mesh.shape) if st.mesh is not None else None}
  with checkpoint_errors_as_usage():
    return checkpoint.ResumeStore.open(resume_dir, fp, int(cfg.get("checkpoint_every", 1)))


def resumed_method(store, name: str, like_variables, log) -> Optional[ModelSet]:
  """A method's ModelSet from the resume store, or None if it has not finished before."""
  if store is None:
    return None
  with checkpoint_errors_as_usage():
    found = store.restore_latest(f"method_{name}", None)
  if found is None:
    return None
  _, tree, meta = found
  variables = jax.tree_util.tree_map(jnp.asarray, tree["variables"])
  if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(like_variables):
    raise UsageError(f"{store.directory}/method_{name} does not hold this model's weights; "
                     f"delete {store.directory} to start over")
  log(f"method {name}: finished before, restored from {store.directory / ('method_' + name)}")
  return ModelSet(name, variables, float(meta["seconds"]), float(meta["compile_seconds"]),
                  dict(meta.get("aux", {})),
                  {k: np.asarray(v) for k, v in (tree.get("artifacts") or {}).items()})


def relearn_population(model, ms: ModelSet, forget, targets, keys, vmapped: bool,
                       ain_cfg: dict) -> np.ndarray:
  """Relearning steps (see `metrics.relearn_steps`) of every seed's model."""
  fn = lambda v, t, k: metrics_lib.relearn_steps(model, v, forget, t, k, **ain_cfg)[0]
  if vmapped:
    return np.asarray(jax.jit(parallel.vmap_seeds(fn))(ms.variables, jnp.asarray(targets), keys))
  return np.asarray([fn(jax.tree_util.tree_map(lambda a: a[i], ms.variables), targets[i],
                        keys[i]) for i in range(len(targets))])


def take_test(ds: data_lib.Dataset, idx: np.ndarray):
  return jnp.asarray(ds.test_x[idx]), jnp.asarray(ds.test_y[idx])
