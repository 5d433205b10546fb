r"""Benchmark: models per hour, a population as one program against PyTorch, side by side.

    python -m experiments.benchmarks.population_benchmark                          # CIFAR-10 (tfds)
    python -m experiments.benchmarks.population_benchmark --dataset=image_folder:PATH --sizes=1,8,32

Trains populations of N models (`--sizes`) of each `--models` spec on a stratified CIFAR-10
subset (`--train_size`, `--test_size`) with one recipe (`--epochs`, `--batch_size`, `--lr`,
SGD with Nesterov momentum 0.9 and weight decay 5e-4 on the library's one-cycle schedule,
crop-and-flip augmentation on colour images), four ways (`--ways`), in one process:

* `jax_vmap` — the library's population primitive (`unlearn_jax.PopulationProgram`) over
  `train.fit`, the members vmapped as one compiled program;
* `jax_sequential` — the same primitive, one compiled single-model program member after
  member (the single-model recipe, `jit(train.fit)`, N times);
* `torch_loop` — PyTorch, the same architecture and recipe, one model at a time;
* `torch_stacked` — PyTorch, the N models as one network with `groups=N` convolutions and
  batched dense layers, the Easy Data Unlearning Bench's way (`easydub/train_models.py`).

Each row: training seconds for the N models (median of `--repeats`; JAX's compilation is
timed apart), models per hour, the ratio to the fastest PyTorch way at that N in the same
run, and the members' test accuracy (mean ± std over members). Every member draws its
own initialisation, batch order and augmentation. PyTorch's learning rate at each step is
the library schedule's value at that step. Without torch installed (`pip install torch`)
only the JAX rows are printed. `--out` also writes the table as CSV.

    python -m experiments.benchmarks.population_benchmark --memory_model=cnn   # largest N in 24 GiB

`--memory_model` compiles (does not run) one vmapped training epoch for N = 1, 2, 4, 8
and reads XLA's memory analysis: bytes per extra model and shared bytes give the largest
N within `--memory_gib`, checked by compiling that N.

    python -m experiments.benchmarks.population_benchmark --epsilon_sizes=30x32,10000x512

`--epsilon_sizes` (S examples x N models each) times the per-example ε of the competition
(`metrics.per_example_epsilons`, one vectorised float64 computation, after its compilation)
against the brute-force float64 rendering of the rule the tests check it with
(`tests/reference_epsilons.py`: a loop over examples, direct comparisons; skipped above
--epsilon_loop_max examples), median of --repeats, on normal statistics.
"""

import csv
import importlib.util
import os
import platform
import statistics
import time

from absl import app, flags, logging

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data, models, train

from .population_timing import jax_population, torch_population

WAYS = ("jax_vmap", "jax_sequential", "torch_loop", "torch_stacked")

flags.DEFINE_string("dataset", "cifar10", "dataset spec (data.load_dataset): cifar10 (tfds), "
                    "image_folder:PATH, digits, ...")
flags.DEFINE_integer("train_size", 1000, "stratified training subset (0 = all)")
flags.DEFINE_integer("test_size", 1000, "stratified test subset for member accuracy (0 = all)")
flags.DEFINE_string("models", "mlp,cnn:16-32-64,resnet9:16-32-64-32",
                    "comma list of model specs (mlp[:W-W], cnn[:W-W-W], resnet9[:W-W-W-W])")
flags.DEFINE_string("sizes", "1,8,32", "comma list of population sizes N")
flags.DEFINE_list("ways", list(WAYS), f"which ways to time; allowed: {', '.join(WAYS)}")
flags.DEFINE_integer("repeats", 3, "timed repetitions per measurement (median reported)")
flags.DEFINE_integer("epochs", 2, "epochs per model")
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_float("lr", 0.05, "peak learning rate (one-cycle)")
flags.DEFINE_string("out", "", "also write the table to this CSV file")
flags.DEFINE_string("memory_model", "", "instead of timing: the largest population of this "
                    "model (e.g. cnn) whose vmapped training fits in --memory_gib, by XLA's "
                    "memory analysis of the compiled epoch")
flags.DEFINE_string("memory_input", "32,32,3", "input shape for --memory_model")
flags.DEFINE_integer("memory_train", 50000, "training examples for --memory_model (CIFAR-10)")
flags.DEFINE_float("memory_gib", 24.0, "memory budget for --memory_model")
flags.DEFINE_string("epsilon_sizes", "", "instead of training: time per-example ε for these "
                    "SxN sizes (e.g. 30x32,10000x512)")
flags.DEFINE_integer("epsilon_loop_max", 2000, "largest S for which the Python-loop reference "
                     "is timed too")


def epoch_bytes(model_name: str, input_shape, n_train: int, n_models: int) -> int:
  """XLA's bytes for one vmapped training epoch of `n_models` models (arguments +
  outputs + temporaries − aliased donations), compiled, not run."""
  model = models.get_model(model_name, 10)
  cfg = train.TrainConfig(epochs=1, batch_size=128, lr=0.1, augment=input_shape[-1] == 3)
  tx = train.make_optimizer(cfg, train.steps_per_epoch(n_train, cfg.batch_size))
  x = jax.ShapeDtypeStruct((n_train,) + tuple(input_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((n_train,), jnp.int32)
  keys = jax.ShapeDtypeStruct((n_models, 2), jnp.uint32)
  state = jax.eval_shape(jax.vmap(lambda k: train.init_train_state(
      models.init_variables(model, k, input_shape), tx)), keys)
  epoch = jax.jit(jax.vmap(lambda st, xx, yy, k: train.train_epochs(model, cfg, st, xx, yy, k, 1),
                           in_axes=(0, None, None, 0)))
  ma = epoch.lower(state, x, y, keys).compile().memory_analysis()
  return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
             - ma.alias_size_in_bytes)


def memory_report(F):
  shape = tuple(int(v) for v in F.memory_input.split(","))
  print(f"vmapped {F.memory_model} training on {F.memory_train} x {shape} inputs, batch 128; "
        f"budget {F.memory_gib:g} GiB ({jax.default_backend()})")
  sizes = (1, 2, 4, 8)
  got = {}
  for n in sizes:
    got[n] = epoch_bytes(F.memory_model, shape, F.memory_train, n)
    print(f"  N={n:>3}: {got[n] / 2**30:.2f} GiB", flush=True)
  per_model = (got[8] - got[4]) / 4
  base = got[8] - 8 * per_model
  n_max = int((F.memory_gib * 2**30 - base) // per_model)
  print(f"per model {per_model / 2**20:.0f} MiB, shared {base / 2**20:.0f} MiB "
        f"(the training set and the program): largest N in {F.memory_gib:g} GiB = {n_max}")
  check = epoch_bytes(F.memory_model, shape, F.memory_train, n_max)
  print(f"check, compiled at N={n_max}: {check / 2**30:.2f} GiB")


def epsilon_report(F):
  """Per-example ε: the vectorised computation vs the loop over examples, same data."""
  import importlib.util
  from pathlib import Path

  import numpy as np

  from unlearn_jax import metrics
  path = Path(__file__).resolve().parents[1] / "tests" / "reference_epsilons.py"
  reference = None
  if path.exists():
    spec = importlib.util.spec_from_file_location("reference_epsilons", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.per_example_epsilons
  print(f"per-example ε, {jax.default_backend()}, float64, median of {F.repeats}")
  print("| S examples | N models | vectorised s | compile s | loop s | speed-up |")
  print("|---|---|---|---|---|---|")
  for size in F.epsilon_sizes.split(","):
    s_, n_ = (int(v) for v in size.lower().split("x"))
    rng = np.random.default_rng(0)
    u, r = rng.normal(0, 1, (n_, s_)), rng.normal(0.2, 1.1, (n_, s_))
    with jax.enable_x64(True):
      t0 = time.perf_counter()
      np.asarray(metrics.per_example_epsilons(u, r))        # compiles
      first = time.perf_counter() - t0
      vec = _median(lambda: np.asarray(metrics.per_example_epsilons(u, r)), F.repeats)
    loop = (_median(lambda: reference(u, r), F.repeats)
            if reference is not None and s_ <= F.epsilon_loop_max else float("nan"))
    print(f"| {s_:,} | {n_} | {vec:.3f} | {max(first - vec, 0):.1f} | "
          f"{loop:.3f} | {loop / vec:.1f}x |", flush=True)


def _median(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def recipe(F, ds) -> train.TrainConfig:
  """The one recipe every way trains with."""
  return train.TrainConfig(epochs=F.epochs, batch_size=F.batch_size, lr=F.lr, momentum=0.9,
                           weight_decay=5e-4, schedule="onecycle",
                           augment=ds.input_shape[-1] == 3)


def training_report(F):
  unknown = sorted(set(F.ways) - set(WAYS))
  if unknown:
    raise app.UsageError(f"--ways: {unknown[0]!r} is unknown; allowed: {', '.join(WAYS)}")
  have_torch = importlib.util.find_spec("torch") is not None
  ways = [w for w in F.ways if have_torch or not w.startswith("torch")]
  ds = data.load_dataset(F.dataset, train_subset=F.train_size, test_subset=F.test_size)
  cfg = recipe(F, ds)
  specs = [s for s in F.models.split(",") if s]
  for spec in specs:
    models.parse_model_spec(spec)                   # a bad spec fails before any training
  sizes = [int(s) for s in F.sizes.split(",")]
  versions = f"JAX {jax.__version__}"
  if have_torch:
    import torch
    versions += f", PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"
  print(f"{jax.default_backend()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores), {versions}; {F.dataset}: {len(ds.train_y)} training, "
        f"{len(ds.test_y)} test examples; {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}, augment {cfg.augment}; median of {F.repeats}")
  if not have_torch:
    print("PyTorch is not installed (pip install torch): the torch rows are skipped")
  print("| model | N | way | train s | models/hour | vs best PyTorch | compile s | "
        "test accuracy (mean ± std over members) |")
  print("|---|---|---|---|---|---|---|---|")
  rows = []
  for spec in specs:
    for n in sizes:
      got = {}
      for way in ways:
        if way.startswith("jax"):
          got[way] = jax_population(spec, ds, cfg, n, way[4:], F.repeats)
        else:
          got[way] = torch_population(spec, ds, cfg, n, way == "torch_stacked", F.repeats)
      torch_best = min((got[w][0] for w in got if w.startswith("torch")), default=None)
      for way, (sec, compile_s, acc) in got.items():
        per_hour = 3600 * n / sec
        ratio = torch_best / sec if torch_best else float("nan")
        # Four significant figures: a sub-10 ms step rounded to 3 decimals would misstate models/hour.
        rows.append({"model": spec, "n": n, "way": way, "train_s": float(f"{sec:.4g}"),
                     "models_per_hour": round(per_hour, 1), "vs_best_torch": round(ratio, 3),
                     "compile_s": round(compile_s, 2), "acc_mean": float(np.mean(acc)),
                     "acc_std": float(np.std(acc)), "acc_min": float(np.min(acc))})
        shown = f"{ratio:.2f}x" if torch_best else "–"
        print(f"| {spec} | {n} | {way} | {sec:.2f} | {per_hour:,.0f} | {shown} | "
              f"{compile_s:.1f} | {100 * np.mean(acc):.1f} ± {100 * np.std(acc):.1f}% |",
              flush=True)
  if F.out:
    with open(F.out, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
    print(f"wrote {F.out}")


def main(argv):
  del argv
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    if F.memory_model:
      memory_report(F)
    elif F.epsilon_sizes:
      epsilon_report(F)
    else:
      training_report(F)
  except ValueError as e:                    # a bad spec, size or dataset: one line
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  app.run(main)
