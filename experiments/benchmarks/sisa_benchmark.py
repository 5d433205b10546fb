r"""SISA's price and payoff by shard count: accuracy of the aggregated shard models against
one model, the cost of a deletion, and vmapped against sequential shard training.

    python -m experiments.benchmarks.sisa_benchmark                                  # digits
    python -m experiments.benchmarks.sisa_benchmark --dataset=cifar10:cifar-10-python.tar.gz \
        --train_subset=2500 --test_subset=2000 --model=cnn:16-32-64 --shards=1,4,8

For every S in --shards: train S shards × --slices slices (`unlearn_jax.sisa`) once as one
vmapped program and once as one compiled single-shard program per shard (same keys: the
ratio is measured in one run, compile excluded), test accuracy by majority vote and by
mean logits, then --deletions single-example deletions one after another: the seconds per
deletion (median) and the share of a full retrain's example-passes it cost. The reference
row `one model` is the recipe's own training of a single model on everything (what a
deletion would retrain without SISA), and its seconds are that retrain's cost.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ..pipeline import usage
from ..configs import recipes
from unlearn_jax import data as data_lib, models as models_lib, sisa, train as train_lib

flags.DEFINE_string("dataset", "digits", "dataset (as experiments.unlearn)")
flags.DEFINE_string("model", "", "model spec (default: mlp for 8x8, else cnn)")
flags.DEFINE_integer("train_subset", 0, "stratified subset of train (0 = all)")
flags.DEFINE_integer("test_subset", 0, "stratified subset of test (0 = all)")
flags.DEFINE_string("shards", "1,4,8,16", "comma list of shard counts S")
flags.DEFINE_integer("slices", 4, "slices R per shard")
flags.DEFINE_integer("epochs_per_slice", 0, "epochs per stage (0: the recipe's epochs / R)")
flags.DEFINE_integer("deletions", 5, "single-example deletions timed per S")
flags.DEFINE_float("lr", 0.05, "SISA shards' SGD learning rate (constant)")
flags.DEFINE_bool("sequential", True, "also train the shards one program per shard (ratio)")


def _sisa_row(s: int, model, x, y, tx, ty, key, init, recipe, epochs: int, one_s: float,
              F) -> None:
  """One SISA configuration's row: S shards trained (vmapped, and sequential with
  --sequential), its test accuracy both ways, and --deletions timed deletions."""
  cfg = sisa.SisaConfig(shards=s, slices=F.slices, epochs_per_slice=epochs,
                        batch_size=recipe.batch_size, lr=F.lr)
  timed = {}
  loops = ("vmap", "sequential") if F.sequential else ("vmap",)
  for loop in loops:
    first = sisa.train_sisa(model, (x, y), key, cfg, init_variables=init, shard_loop=loop)
    state = sisa.train_sisa(model, (x, y), key, cfg, init_variables=init, shard_loop=loop,
                            programs=first.programs)     # compiled: timed without compiling
    timed[loop] = state.log[0]["seconds"]
  acc = {how: float(jnp.mean(sisa.sisa_predict(model, state.variables, tx, how) == ty))
         for how in sisa.AGGREGATIONS}
  rng = np.random.default_rng(1)
  secs, shares = [], []
  for idx in rng.choice(len(y), F.deletions, replace=False):
    rep = sisa.unlearn_sisa(state, [idx])
    secs.append(rep["seconds"])
    shares.append(rep["fraction_of_full"])
  per = statistics.median(secs)
  seq = timed.get("sequential")
  seq_cells = (f"{seq:.2f} | {seq / timed['vmap']:.2f}×" if seq else "— | —")
  print(f"| SISA S={s} | {100 * acc['vote']:.1f} | {100 * acc['mean_logits']:.1f} | "
        f"{timed['vmap']:.2f} | {seq_cells} | {per:.2f} | {per / one_s:.2f} | "
        f"{100 * statistics.mean(shares):.1f}% |", flush=True)


def main(argv):
  usage.begin_cli(argv)
  F = flags.FLAGS
  try:
    counts = [int(s) for s in F.shards.split(",") if s]
    if not counts or min(counts) < 1:
      raise ValueError
  except ValueError:
    print(f"error: --shards={F.shards!r} must be a comma list of positive integers",
          file=sys.stderr)
    sys.exit(2)
  try:
    ds = data_lib.load_dataset(F.dataset, None, F.train_subset, F.test_subset)
  except data_lib.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  name = F.model or ("mlp" if ds.image_size <= 8 else "cnn")
  try:
    base = models_lib.parse_model_spec(name)[0]
  except ValueError as e:
    print(f"error: --model={name!r}: {e}", file=sys.stderr)
    sys.exit(2)
  model = models_lib.get_model(name, ds.num_classes)
  recipe = recipes.train_config_for(base, ds)
  epochs = F.epochs_per_slice or max(1, recipe.epochs // F.slices)
  x, y = ds.train_x, ds.train_y
  tx, ty = jnp.asarray(ds.test_x), jnp.asarray(ds.test_y)
  key = jax.random.PRNGKey(0)
  init = models_lib.init_variables(model, key, ds.input_shape)

  print(f"## SISA on {ds.name} ({len(y)} train, {len(ty)} test), {name}, {F.slices} slices × "
        f"{epochs} epochs per stage, SGD lr {F.lr}, backend {jax.default_backend()}\n")
  fit = jax.jit(train_lib.fit, static_argnums=(0, 1))
  jax.block_until_ready(fit(model, recipe, init, jnp.asarray(x), jnp.asarray(y), key))  # compile
  t0 = time.perf_counter()
  one, _ = jax.block_until_ready(fit(model, recipe, init, jnp.asarray(x), jnp.asarray(y), key))
  one_s = time.perf_counter() - t0
  one_acc = float(jnp.mean(jnp.argmax(train_lib.predict(model, one, tx), -1) == ty))
  head = ["model", "test acc (vote)", "test acc (mean logits)", "train s (vmapped)",
          "train s (sequential)", "sequential ÷ vmapped", "s per deletion",
          "deletion ÷ one-model retrain", "share of full SISA retrain"]
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  print(f"| one model ({recipe.epochs} epochs) | {100 * one_acc:.1f} | | {one_s:.2f} | | | "
        f"{one_s:.2f} (retrain) | 1.00 | |", flush=True)
  for s in counts:
    _sisa_row(s, model, x, y, tx, ty, key, init, recipe, epochs, one_s, F)
  print("\nTimes exclude compilation (each configuration runs once to compile first; a "
        "deletion reuses the stage programs, whose padded shapes are fixed at training). "
        "The share is in example-passes of retraining every shard from scratch.")


if __name__ == "__main__":
  app.run(main)
