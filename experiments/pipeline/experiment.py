"""From a config to a `Setup`: the dataset, the split, the model, the recipe, the seed
mode, the mesh and the methods, every user mistake a `UsageError` naming the field."""

from __future__ import annotations

import dataclasses
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
from .settings import parse_classes, recipe_of, resolve_methods, validate
from .usage import UsageError, as_flags


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


def setup(cfg, log: Callable[[str], None] = print, population: int | None = None, *,
          targets: bool = False) -> Setup:
  """Validates `cfg`, loads the dataset, makes the split and picks model, recipe, seed
  mode, methods and mesh (`population`: the models vmapped along the mesh's seeds axis,
  default `--seeds`; `targets`: the stage gives the matching methods their targets);
  raises UsageError (naming the flag) for every user mistake."""
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
                                 models_lib.has_batch_norm(shapes), log, targets=targets)
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


def take_test(ds: data_lib.Dataset, idx: np.ndarray):
  return jnp.asarray(ds.test_x[idx]), jnp.asarray(ds.test_y[idx])


def method_context(st: Setup, forget_classes: tuple = ()) -> methods_lib.MethodContext:
  """The methods' context: the setup's model, classes and input shape, and the classes to
  forget (class scenarios; the zero-shot methods read them)."""
  return methods_lib.MethodContext(st.model, st.ds.num_classes, st.ds.input_shape,
                                   tuple(forget_classes), st.model_name)
