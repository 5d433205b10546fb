r"""Benchmark: N models trained as one vmapped program vs a Python loop over the same code.

    python -m experiments.population_benchmark                    # digits MLP, N = 8, 32, 64
    python -m experiments.population_benchmark --sizes=16 --repeats=5 --epochs=30

For each N: the whole training (the default digits recipe) of N models, once as
`jit(vmap(fit))` over N keys and once as N calls of `jit(fit)`, each timed after
compilation; the median of --repeats runs is printed with models/s and the speed-up,
both measured in the same process. Compile times are printed separately.
"""

import statistics
import time

from absl import app, flags, logging

import jax
import jax.numpy as jnp

from unlearn_jax import data, models, runner, train

flags.DEFINE_string("sizes", "8,32,64", "comma list of population sizes N")
flags.DEFINE_integer("repeats", 3, "timed repetitions per measurement (median reported)")
flags.DEFINE_integer("epochs", 0, "epochs per model (0 = the default digits recipe)")
flags.DEFINE_string("model", "mlp", "model (mlp recommended on CPU)")


def main(argv):
  del argv
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  ds = data.load_dataset("digits")
  model = models.get_model(F.model, ds.num_classes)
  cfg = runner.default_recipe(ds, F.model)
  if F.epochs:
    cfg = runner.resolve_recipe(cfg, {"epochs": F.epochs})
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
