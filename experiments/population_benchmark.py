r"""Benchmark: N models trained as one vmapped program vs a Python loop over the same code.

    python -m experiments.population_benchmark                    # digits MLP, N = 8, 32, 64
    python -m experiments.population_benchmark --sizes=16 --repeats=5 --epochs=30

For each N: the whole training (the default digits recipe) of N models, once as
`jit(vmap(fit))` over N keys and once as N calls of `jit(fit)`, each timed after
compilation; the median of --repeats runs is printed with models/s and the speed-up,
both measured in the same process. Compile times are printed separately.

    python -m experiments.population_benchmark --memory_model=cnn   # largest N in 24 GiB

`--memory_model` compiles (does not run) one vmapped training epoch for N = 1, 2, 4, 8
and reads XLA's memory analysis: bytes per extra model and shared bytes give the largest
N within `--memory_gib`, checked by compiling that N.

    python -m experiments.population_benchmark --epsilon_sizes=30x32,10000x512

`--epsilon_sizes` (S examples x N models each) times the per-example ε of the competition
(`metrics.per_example_epsilons`, one vectorised float64 computation, after its compilation)
against the brute-force float64 rendering of the rule the tests check it with
(`tests/reference_epsilons.py`: a loop over examples, direct comparisons; skipped above
--epsilon_loop_max examples), median of --repeats, on normal statistics.
"""

import statistics
import time

from absl import app, flags, logging

import jax
import jax.numpy as jnp

from . import setup
from unlearn_jax import data, models, train

flags.DEFINE_string("sizes", "8,32,64", "comma list of population sizes N")
flags.DEFINE_integer("repeats", 3, "timed repetitions per measurement (median reported)")
flags.DEFINE_integer("epochs", 0, "epochs per model (0 = the default digits recipe)")
flags.DEFINE_string("model", "mlp", "model (mlp recommended on CPU)")
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


def main(argv):
  del argv
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if F.memory_model:
    memory_report(F)
    return
  if F.epsilon_sizes:
    epsilon_report(F)
    return
  ds = data.load_dataset("digits")
  model = models.get_model(F.model, ds.num_classes)
  cfg = setup.default_recipe(ds, F.model)
  if F.epochs:
    cfg = setup.resolve_recipe(cfg, {"epochs": F.epochs})
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  init = lambda k: models.init_variables(model, k, ds.input_shape)
  fit_one = jax.jit(lambda k: train.fit(model, cfg, init(k), x, y, jax.random.fold_in(k, 1))[0])
  fit_many = jax.jit(jax.vmap(lambda k: train.fit(model, cfg, init(k), x, y,
                                                  jax.random.fold_in(k, 1))[0]))
  print(f"{jax.default_backend()} ({len(jax.devices())} device(s)), model {F.model}, "
        f"{cfg.epochs} epochs x {len(y)} examples per model, median of {F.repeats}")
  t0 = time.perf_counter()
  jax.block_until_ready(fit_one(jax.random.PRNGKey(0)))
  print(f"compile+first run, one model: {time.perf_counter() - t0:.1f}s")
  print(f"{'N':>4} | {'vmapped s':>9} | {'models/s':>8} | {'loop s':>8} | {'models/s':>8} | "
        f"{'speed-up':>8} | {'vmap compile s':>14}")
  for n in [int(s) for s in F.sizes.split(",")]:
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    t0 = time.perf_counter()
    compiled = fit_many.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    vm, loop = [], []
    for _ in range(F.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(keys))
      vm.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      for k in keys:
        jax.block_until_ready(fit_one(k))
      loop.append(time.perf_counter() - t0)
    v, l = statistics.median(vm), statistics.median(loop)
    print(f"{n:>4} | {v:>9.2f} | {n / v:>8.1f} | {l:>8.2f} | {n / l:>8.1f} | {l / v:>7.2f}x | "
          f"{compile_s:>14.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
