"""The compile-count contract: in every driver mode, a run compiles each program once.

Default lane: one method per kind of schedule (`POPULATION_METHODS`: epochs of a gradient
phase, a one-shot edit, cycles, noise then phases) with sequential seeds, and (in
`test_entry_points.py`) a vmapped population evaluation in chunks. Integration lane: every
method with data in both seed loops, and the four kinds of schedule in a population
evaluation in chunks. Counts come from JAX's own compile log (`tests/compile_log.py`): the
same program with the same shapes compiled twice fails, naming it.
"""

import pytest
import sys
from pathlib import Path


from experiments.pipeline import population
from experiments.pipeline import run as runner
from experiments.configs import default
from unlearn_jax import methods

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_log  # noqa: E402

# The methods experiments.unlearn runs: those that read data, less the matching ones (they
# need an oracle population, which only experiments.evaluate trains).
WITH_DATA = [m for m in methods.list_methods() if methods.get_method(m).reads
             and "targets" not in methods.get_method(m).reads]
# One per kind of schedule (epochs of a gradient phase, a one-shot edit, cycles, noise then
# phases); the 9-method N = 16 evaluation is measured in the closing note.
POPULATION_METHODS = ("finetune", "ssd", "scrub", "unsir")


def small_config(**fields):
  cfg = default.get_config()
  cfg.train_subset, cfg.test_subset, cfg.seeds = 400, 200, 2
  cfg.train.epochs = 3
  for k, v in fields.items():
    setattr(cfg, k, default.methods_config(v) if k == "methods" else v)
  return cfg


def assert_each_method_once(counts, names):
  twice = compile_log.compiled_twice(counts)
  assert not twice, f"compiled more than once in one run: {twice}"
  per = compile_log.per_program(counts)
  missing = [m for m in names if per[f"jit(unlearn_{m})"] == 0]
  assert not missing, f"no program of its own for {missing}"
  several = {m: per[f"jit(unlearn_{m})"] for m in names if per[f"jit(unlearn_{m})"] > 1}
  assert not several, f"a method compiled as several programs: {several}"


def run_and_count(seed_loop: str, names) -> dict:
  cfg = small_config(seed_loop=seed_loop, methods=",".join(names))
  with compile_log.compiles() as counts:
    runner.run(cfg, {}, log=lambda s: None)
  assert_each_method_once(counts, names)
  assert compile_log.per_program(counts)["jit(train_epoch)"] == 2, \
      "one epoch program per population (original, retrain)"
  return counts


# The integration lane, for the default lane's 5 minutes (CI runs both lanes).
@pytest.mark.integration
def test_each_kind_of_schedule_compiles_once_per_run_seed_after_seed():
  """Sequential seeds; the vmapped seed loop is the population test's below."""
  run_and_count("sequential", POPULATION_METHODS)


@pytest.mark.integration
@pytest.mark.parametrize("seed_loop", ["vmap", "sequential"])
def test_every_method_compiles_once_per_run(seed_loop):
  run_and_count(seed_loop, WITH_DATA)


@pytest.mark.integration   # the evaluate entry point's test checks one method in the default lane
def test_a_population_in_chunks_compiles_each_program_once():
  """Four methods over 4 models in chunks of 2: each method's program, the epoch programs
  and the logits of each split compile once, however many chunks and populations."""
  cfg = small_config(methods=",".join(POPULATION_METHODS))
  with compile_log.compiles() as counts:
    ev = population.run(cfg, {}, num_models=4, chunk=2, log=lambda s: None,
                        mia_models=2)
  assert {r["method"] for r in ev.rows} >= set(POPULATION_METHODS)
  assert_each_method_once(counts, POPULATION_METHODS)
  per = compile_log.per_program(counts)
  assert per["jit(train_epoch)"] == 2, per["jit(train_epoch)"]
  assert per["jit(population_logits)"] <= 3, "one logits program per split's shape"
