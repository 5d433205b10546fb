"""From flags to a validated experiment: every user mistake is caught here, as a
`UsageError` naming the flag (one line, exit status 2, nothing written).

`setup(cfg)` checks the config, loads the dataset, makes the split and picks the model, the
training recipe, the seed mode, the mesh and the methods. Also here: the run directory
staging (a run is written to a hidden sibling and moved into place only when complete) and
the resume store's fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax import driver
from unlearn_jax import methods as methods_lib
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from unlearn_jax import train as train_lib
from unlearn_jax import train_programs

REFERENCE_MODELS = ("original", "retrain")
LOOP_CHOICES = ("auto",) + parallel.LOOPS   # --config.seed_loop, --config.tune.search_loop


_FLAG_WORDS = ("dataset", "scenario", "forget_fraction", "forget_classes", "model")


def as_flags(message: str) -> str:
  """A library message names arguments (`dataset=x`); the CLI's names them as flags."""
  import re
  words = "|".join(_FLAG_WORDS)
  message = re.sub(r"(?<![\w-])(" + words + r")(?==| needs| names)", r"--config.\1", message)
  return re.sub(r"(?<=needs )(" + words + r")\b", r"--config.\1", message)


def flag_error_line(error: Exception) -> str:
  """One line for a flag error. absl wraps an exception raised while loading a config file
  (say `get_config` refusing an unknown `--config=FILE:ARG`) with its whole traceback:
  keep the flag's own first line and the exception's message."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return " ".join(lines)


class UsageError(ValueError):
  """A user mistake: printed as one line, exit status 2, nothing written."""


def one_process_only(entry_point: str, why: str) -> None:
  """UsageError when `entry_point` is started as one process of several."""
  if jax.process_count() > 1:
    raise UsageError(f"{entry_point} runs in one process ({why}); start it without "
                     "--config.distributed / --config.coordinator_address")


def error_line(error: Exception) -> str:
  """The one line a CLI prints for a user mistake (then it exits with status 2)."""
  return f"error: {error}"


INTERRUPTED_LINE = ("interrupted: the run directory was not written; rerun the same command "
                    "to resume from the last checkpoint")


def os_error_line(error: OSError) -> str:
  """The one line a CLI prints for an OS error (then it exits with status 1): what failed,
  on which path, and what to do."""
  what = error.strerror or type(error).__name__
  where = f": {error.filename}" if error.filename else ""
  return (f"error: {what}{where}; nothing was written to the run directory (choose a "
          "writable --workdir, or set UNLEARN_JAX_CACHE to a writable folder for the cache)")



# ----------------------------------------------------------------------------- recipe
def recipe_of(cfg) -> train_lib.TrainConfig:
  """The training recipe: the config's `train` fields (every field of `TrainConfig`,
  `experiments/configs/recipes.py`); UsageError naming a field it does not know."""
  given = cfg.train.to_dict()
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  unknown = sorted(set(given) - fields)
  if unknown:
    raise UsageError(f"--config.train.{unknown[0]} is unknown; allowed: {', '.join(sorted(fields))}")
  try:
    return train_lib.TrainConfig(**given)
  except (TypeError, ValueError) as e:
    raise UsageError(f"--config.train: {e}") from e


@contextlib.contextmanager
def checkpoint_errors_as_usage():
  """A corrupt or foreign resume checkpoint is the user's to fix: one line, no traceback."""
  from unlearn_jax import checkpoint
  try:
    yield
  except checkpoint.CheckpointError as e:
    raise UsageError(str(e)) from e


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
  if not os.access(final.parent, os.W_OK):
    raise UsageError(f"--workdir={workdir}: cannot write in {final.parent} (read-only or no "
                     "permission); choose a writable directory")
  staging = final.parent / f".{final.name}.partial-{os.getpid()}-{int(time.time() * 1e3)}"
  return final, staging


def provenance() -> dict:
  """What made a run, for the stamp under every table built from it: the command, the
  code's commit (None outside a git checkout; `dirty` when it had uncommitted changes
  outside `docs/results/`, the committed run directories),
  the date, the package versions and the hardware."""
  import datetime
  import platform
  import subprocess
  import __main__
  here = Path(__file__).resolve().parent

  def git(*args):
    try:
      r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                         timeout=10)
      return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
      return None

  program = sys.argv[0]
  if not program.startswith("unlearn-jax"):
    spec = getattr(__main__, "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {program}"
  commit = git("rev-parse", "HEAD")
  cpu = next((line.split(":", 1)[1].strip() for line in
              Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
             platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
  import unlearn_jax
  return {"command": " ".join([program, *sys.argv[1:]]),
          # Committed run directories (docs/results/) are outputs, not code: a run made
          # after another one rewrote them is still a run of the committed code.
          "commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no",
                                              "--", ":(top)", ":(top,exclude)docs/results"))
          if commit else None,
          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
          "unlearn_jax": unlearn_jax.__version__, "jax": jax.__version__,
          "python": platform.python_version(),
          "hardware": {"cpu": cpu, "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                       "devices": jax.device_count(),
                       "device_kind": jax.devices()[0].device_kind,
                       "processes": jax.process_count()}}


def commit_workdir(staging: Path, final: Path, stamp: dict | None = None) -> None:
  """Moves the finished run into place (the only step that touches `final`), with its
  `provenance.json`: `stamp` (`provenance()` taken when the run started, so the commit and
  a dirty tree are those the run began with) and the time it finished."""
  import datetime
  stamp = dict(stamp or provenance())
  stamp["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  (staging / "provenance.json").write_text(json.dumps(stamp, indent=1) + "\n")
  if final.exists():
    shutil.rmtree(final)
  staging.rename(final)


def resume_dir_for(workdir: str) -> Path:
  """Where a run's resume checkpoints live: a hidden sibling of the workdir."""
  final = Path(workdir).expanduser().resolve()
  return final.parent / f".{final.name}.resume"


def workdir_lock(final: Path):
  """The inter-process lock of a run directory and its resume store, taken without waiting:
  a second process given the same --workdir while the first still writes it gets a
  UsageError. The lock file lives in the cache (`$UNLEARN_JAX_CACHE/locks/`), keyed by the
  directory's absolute path, so nothing is added beside the run."""
  import hashlib
  import filelock
  locks = data_lib.cache_dir() / "locks"
  locks.mkdir(parents=True, exist_ok=True)
  key = hashlib.sha1(str(final).encode()).hexdigest()[:20]
  return filelock.FileLock(str(locks / f"workdir-{key}.lock"), timeout=0)


@contextlib.contextmanager
def staged_workdir(workdir: str, overwrite: bool):
  """Yields (final, staging): write into `staging`; it is moved to `final` when the block
  ends normally and deleted when it raises, so no half-written run is ever left. The
  block holds the workdir's lock (`workdir_lock`): two processes never write one run
  directory or its resume store at once. In a multi-process job only process 0 stages
  and writes; the others get `staging=None`."""
  import filelock
  final, _ = prepare_workdir(workdir, overwrite)      # bad input: nothing written yet
  if not parallel.is_writer():     # a multi-process job: process 0 writes the run
    yield final, None
    return
  lock = workdir_lock(final)
  try:
    lock.acquire()
  except filelock.Timeout:
    raise UsageError(f"--workdir={workdir} is being written by another running process; "
                     "wait for it to finish or choose another directory") from None
  try:
    final, staging = prepare_workdir(workdir, overwrite)   # again, now that it is ours
    stamp = provenance()
    try:
      yield final, staging
      commit_workdir(staging, final, stamp)
    finally:
      if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
  finally:
    lock.release()
    # Nothing is left in the cache: the lock file goes with the lock. Nobody waits on it
    # (timeout=0); only a second command on the same workdir that opened the file in the
    # microseconds between this release and this unlink could still lock the old file.
    with contextlib.suppress(OSError):
      os.unlink(lock.lock_file)


# ----------------------------------------------------------------------------- the run
def parse_classes(text) -> tuple:
  if isinstance(text, (tuple, list)):
    return tuple(int(c) for c in text)
  text = str(text).strip()
  if not text:
    return ()
  try:
    return tuple(int(c) for c in text.split(","))
  except ValueError:
    raise UsageError(f"--config.forget_classes={text!r} must be a comma list of class ids, e.g. 3 or "
                     "3,5") from None


def resolve_methods(names, scenario: str, batch_norm: bool | None = None,
                    log: Callable[[str], None] = lambda s: None) -> tuple:
  """The methods to run, in the registry's order, from the config's `methods` (their
  names). When it lists every registered method (the default), those not meant for
  `scenario` or (when `batch_norm` is known) not runnable on the model are skipped, with a
  note; a method chosen by name that cannot run here is a UsageError naming why."""
  known = methods_lib.list_methods()
  names = [m for m in names]
  for m in names:
    if m in REFERENCE_MODELS:
      raise UsageError(f"--methods: {m!r} is always run as a reference; list unlearning "
                       f"methods only ({', '.join(known)})")
    if m not in known:
      raise UsageError(f"--methods: {m!r} is unknown; allowed: {', '.join(known)}")
  if not names:
    raise UsageError("--methods: no method chosen; allowed: " + ", ".join(known))
  if set(names) == set(known):
    chosen = []
    for m in known:
      spec = methods_lib.get_method(m)
      if scenario not in spec.scenarios:
        continue
      if batch_norm is False and "batch_norm" in spec.requires:
        log(f"note: skipping {m}: it needs a model with BatchNorm (--config.model=cnn or "
            "resnet18)")
        continue
      chosen.append(m)
    return tuple(chosen)
  for m in names:
    spec = methods_lib.get_method(m)
    if not spec.reads and scenario not in spec.scenarios:
      raise UsageError(f"--methods: {m} is zero-shot and forgets whole classes: it needs "
                       f"--config.scenario=class with --config.forget_classes (got "
                       f"--config.scenario={scenario})")
    if batch_norm is False and "batch_norm" in spec.requires:
      raise UsageError(f"--methods: {m} needs a model with BatchNorm layers; the chosen "
                       f"model has none (use --config.model=cnn or --config.model=resnet18)")
  return tuple(m for m in known if m in names)


def validate(cfg) -> None:
  """Checks everything that needs no data; raises UsageError naming the flag."""
  name = cfg.dataset
  if not (name in data_lib.TFDS_NAMES or name in ("digits", "mnist1d")
          or name.startswith("image_folder:")
          or (":" in name and name.split(":", 1)[0] in data_lib.CIFAR_PYTHON)):
    raise UsageError(f"--config.dataset={name!r} is unknown; allowed: {', '.join(data_lib.DATASET_CHOICES)}")
  if cfg.get("conv", "auto") not in models_lib.CONV_IMPLS:
    raise UsageError(f"--config.conv={cfg.conv!r} is unknown; allowed: {', '.join(models_lib.CONV_IMPLS)}")
  if cfg.get("train_program", "auto") != "auto":
    try:
      train_programs.parse(cfg.train_program)
    except ValueError as e:
      raise UsageError(f"--config.train_program={cfg.train_program!r}: {e}") from e
  if cfg.model.partition(":")[0] not in models_lib.list_models():
    raise UsageError(f"--config.model={cfg.model!r} is unknown; allowed: "
                     f"{', '.join(models_lib.list_models())} (optionally name:W1-W2-...)")
  try:
    models_lib.parse_model_spec(cfg.model)
  except ValueError as e:
    raise UsageError(f"--config.model={cfg.model!r}: {str(e).partition(': ')[2]}") from e
  if cfg.scenario not in data_lib.SCENARIOS:
    raise UsageError(f"--config.scenario={cfg.scenario!r} is unknown; allowed: "
                     f"{', '.join(data_lib.SCENARIOS)}")
  if cfg.scenario == "random" and not 0.0 < float(cfg.forget_fraction) < 1.0:
    raise UsageError(f"--config.forget_fraction={cfg.forget_fraction} must lie strictly between 0 and 1")
  if cfg.seeds < 1:
    raise UsageError(f"--seeds={cfg.seeds} must be at least 1")
  if cfg.get("unlearn_seeds", 1) < 1:
    raise UsageError(f"--config.unlearn_seeds={cfg.unlearn_seeds} must be at least 1")
  if cfg.seed_loop not in LOOP_CHOICES:
    raise UsageError(f"--config.seed_loop={cfg.seed_loop!r} is unknown; allowed: "
                     f"{', '.join(LOOP_CHOICES)}")
  for name in ("mesh_seeds", "mesh_data", "train_subset", "test_subset"):
    if cfg.get(name) is not None and cfg.get(name) < 1:
      raise UsageError(f"--config.{name}={cfg.get(name)} must be at least 1 (or None: "
                       f"{'automatic' if name.startswith('mesh') else 'all'})")
  for name in ("checkpoint_every", "method_checkpoint_every", "along_every"):
    if int(cfg.get(name, 0)) < 0:
      raise UsageError(f"--config.{name}={cfg.get(name)} must be >= 0 (0 = off)")
  resolve_methods(list(cfg.methods.keys()), cfg.scenario)
  parse_classes(cfg.forget_classes)


@dataclasses.dataclass
class Setup:
  """Everything an experiment needs before training: data, split, model, recipe, seed mode
  (`vmap` or `sequential`, see `unlearn_jax.driver`), methods and mesh."""
  ds: data_lib.Dataset
  spec: data_lib.SplitSpec
  split: data_lib.Split
  model_name: str
  model: object
  recipe: train_lib.TrainConfig
  mode: str
  method_names: tuple
  mesh: object = None   # jax.sharding.Mesh over ("seeds", "data"), None on one device
  # How original/retrain are trained (`train_program`): `train_model` is `model` with the
  # program's convolution (same parameters); the methods and metrics use `model`.
  train_program: train_programs.TrainProgram = train_programs.DEFAULT
  train_model: object = None

  @property
  def vmapped(self) -> bool:
    return self.mode == "vmap"


def setup(cfg, log: Callable[[str], None] = print, population: int | None = None) -> Setup:
  """Validates `cfg`, loads the dataset, makes the split and picks model, recipe, seed
  mode, methods and mesh (`population`: the models vmapped along the mesh's seeds axis,
  default `--seeds`); raises UsageError (naming the flag) for every user mistake."""
  validate(cfg)
  try:
    ds = data_lib.load_dataset(cfg.dataset, cfg.data_dir, cfg.train_subset or 0,
                               cfg.test_subset or 0)
  except data_lib.DatasetError as e:
    raise UsageError(as_flags(str(e))) from e
  train_fine = test_fine = None
  if cfg.scenario == "subclass":
    if ds.train_coarse_y is None:
      raise UsageError(f"--config.scenario=subclass needs a dataset with coarse labels (cifar100); "
                       f"--config.dataset={cfg.dataset} has one label set")
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
    raise UsageError(as_flags(str(e))) from e
  model_name = cfg.model   # a name or a `cnn:16-32-64` spec
  base = models_lib.parse_model_spec(model_name)[0]
  conv = {"conv": cfg.get("conv", "auto")} if base in models_lib.CONV_MODELS else {}
  model = models_lib.get_model(model_name, ds.num_classes, **conv)
  shapes = jax.eval_shape(lambda: models_lib.init_variables(model, jax.random.PRNGKey(0),
                                                            ds.input_shape))
  method_names = resolve_methods(list(cfg.methods.keys()), cfg.scenario,
                                 models_lib.has_batch_norm(shapes), log)
  recipe = recipe_of(cfg)
  mode = driver.default_seed_mode(shapes) if cfg.seed_loop == "auto" else cfg.seed_loop
  mesh = make_mesh(cfg, recipe.batch_size, mode, population)
  program, train_model = train_program(cfg, model_name, model, recipe, ds)
  return Setup(ds, spec, split, model_name, model, recipe, mode, method_names, mesh,
               program, train_model)


def train_program(cfg, model_name: str, model, recipe, ds):
  """(TrainProgram, the model it trains): `--config.train_program` by hand, or (auto) the fastest
  measured for this backend, model, input and batch (`unlearn_jax.train_programs`). The
  program's convolution applies to conv models only (others keep `model`); an explicit
  `--config.conv` wins over the table's."""
  spec = cfg.get("train_program", "auto")
  base = models_lib.parse_model_spec(model_name)[0]
  if spec == "auto":
    program = train_programs.choose(model_name, jax.default_backend(), recipe.batch_size,
                                    ds.input_shape)
    if cfg.get("conv", "auto") != "auto":
      program = dataclasses.replace(program, conv=cfg.conv)
  else:
    program = train_programs.parse(spec)
  if base not in models_lib.CONV_MODELS or program.conv in ("auto", cfg.get("conv", "auto")):
    return program, model
  return program, models_lib.get_model(model_name, ds.num_classes, conv=program.conv)


def make_mesh(cfg, batch_size: int, mode: str, population: int | None = None):
  """The device mesh of `--config.mesh_seeds` x `--config.mesh_data` (None when one device is all there
  is); UsageError when the devices or the batch size do not fit it.

  `--config.mesh_seeds=0` (the default) is automatic: 1 in a one-process job (every device on
  `data`); in a multi-process job the population axis spans the processes and `data` stays
  within one (`parallel.population_mesh_shape`), so no gradient crosses a process.
  `population` (default `--seeds`): the models vmapped along `seeds`, which that axis
  must divide; 0: the job builds its own meshes (no mesh here)."""
  seeds, data = int(cfg.get("mesh_seeds") or 0), int(cfg.get("mesh_data") or 0)
  population = int(cfg.seeds) if population is None else int(population)
  if population == 0:
    return None
  if jax.process_count() > 1:
    if mode != "vmap":
      raise UsageError(f"--config.seed_loop={mode} runs the population one model after another in "
                       f"one process; a {jax.process_count()}-process job spreads it over "
                       "the processes: pass --config.seed_loop=vmap")
    if seeds == 0:
      try:
        seeds, data = parallel.population_mesh_shape(population, data)
      except parallel.MeshError as e:
        raise UsageError(f"--seeds={population}: {e}") from e
  seeds = max(seeds, 1)
  if jax.device_count() == 1 and seeds == 1 and data <= 1:
    return None
  try:
    mesh = parallel.make_mesh(data=data, seeds=seeds)
    parallel.check_batch_size(batch_size, mesh, "--config.train.batch_size")
  except parallel.MeshError as e:
    raise UsageError(f"--config.mesh_seeds={seeds} --config.mesh_data={data}: {e}") from e
  if seeds > 1 and mode != "vmap":
    raise UsageError(f"--config.mesh_seeds={seeds} shards vmapped seeds, but --config.seed_loop={mode} runs "
                     "seeds in sequence; pass --config.seed_loop=vmap or --config.mesh_seeds=1")
  if seeds > 1 and population % seeds:
    raise UsageError(f"a population of {population} models cannot be split over the "
                     f"{seeds} devices of the mesh's seeds axis (--config.mesh_seeds={seeds}); use a "
                     f"multiple of {seeds} models")
  if jax.process_count() > 1 and cfg.get("stream", False) and seeds > 1:
    raise UsageError("--config.stream in a multi-process job has each process read its share of "
                     "every batch over a data axis that spans the processes: pass "
                     "--config.mesh_seeds=1")
  if jax.process_count() > 1 and seeds > 1 and seeds % jax.process_count():
    raise UsageError(f"--config.mesh_seeds={seeds}: the seeds axis must span all "
                     f"{jax.process_count()} processes (a multiple of {jax.process_count()})")
  return mesh


def with_scenario_defaults(name: str, given: dict, scenario: str, model_name: str, log) -> dict:
  """`given` with the values a method's authors set for this scenario and model family in
  place of the registry's defaults (a value that differs from the registry's default was
  chosen by the user and is kept). Today: jit_lipschitz's σ and lr (`JIT_DEFAULTS`)."""
  if name != "jit_lipschitz" or not model_name:
    return given
  from unlearn_jax.methods.lipschitz import jit_lipschitz_defaults
  registry = methods_lib.get_method(name).defaults
  chosen = jit_lipschitz_defaults(model_name, scenario)
  if not chosen:
    return given
  out = dict(given)
  for k, v in chosen.items():
    if out.get(k, registry[k]) == registry[k]:
      out[k] = v
  log(f"note: jit_lipschitz uses its authors' {scenario}-scenario values for this model "
      f"family: sigma {out['sigma']}, lr {out['lr']}")
  return out


def resolve_hparams(method_names, method_hparams: dict, scenario: str, log,
                    model_name: str = "") -> dict:
  """Each method's defaults with the user's overrides, checked by the method itself
  (names, types, ranges, choices); a bad one is a UsageError naming the flag. With
  `model_name`, methods whose authors set values per scenario and model family get them
  (`with_scenario_defaults`)."""
  hparams = {}
  for m in method_names:
    method = methods_lib.get_method(m)
    try:
      given = with_scenario_defaults(m, dict(method_hparams.get(m, {})), scenario,
                                     model_name, log)
      hparams[m] = method.validate(given)
    except methods_lib.HyperparameterError as e:
      raise UsageError(f"--config.methods.{e.method}.{e.name}={e.value!r} {e.reason}") from e
    if scenario not in method.scenarios:
      log(f"note: {m} is not meant for the {scenario} scenario "
          f"(meant for: {', '.join(method.scenarios)}); running it anyway")
  return hparams


# method_checkpoint_every is fingerprinted: it decides what a mid-method checkpoint step is.
_NOT_FINGERPRINTED = ("plots", "save_checkpoints", "checkpoint_every", "distributed",
                      "heartbeat_seconds")


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


def resumed_method(store, name: str, like_variables, log) -> driver.ModelSet | None:
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
  return driver.ModelSet(name, variables, float(meta["seconds"]), float(meta["compile_seconds"]),
                  dict(meta.get("aux", {})),
                  {k: np.asarray(v) for k, v in (tree.get("artifacts") or {}).items()},
                  float(meta.get("peak_bytes", float("nan"))),
                  {k: np.asarray(v) for k, v in (tree.get("along") or {}).items()})


def begin_cli(argv) -> None:
  """What every experiments CLI does first: refuse stray arguments, keep the console for
  progress (orbax and tfds log every file they touch at INFO), no tfds progress bars."""
  from absl import app, flags, logging
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()


def take_test(ds: data_lib.Dataset, idx: np.ndarray):
  return jnp.asarray(ds.test_x[idx]), jnp.asarray(ds.test_y[idx])


# ----------------------------------------------------------------------------- references
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


def method_context(st: Setup, forget_classes: tuple = ()) -> methods_lib.MethodContext:
  """The methods' context: the setup's model, classes and input shape, and the classes to
  forget (class scenarios; the zero-shot methods read them)."""
  return methods_lib.MethodContext(st.model, st.ds.num_classes, st.ds.input_shape,
                                   tuple(forget_classes), st.model_name)

