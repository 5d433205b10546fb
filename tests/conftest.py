"""Shared fixtures (the real digits dataset and a small split over it) and the lanes.

Four lanes, each test in exactly one:
* default (`python -m pytest`): XLA's backend optimisations off
  (`JAX_DISABLE_MOST_OPTIMIZATIONS=1`). The suite compiles hundreds of small programs and
  runs each for milliseconds, so the optimisations cost more than they save (measured on
  2 cores: the contract matrix of one user model 229 s -> 118 s).
* optimised (`python -m pytest --optimised`): only the tests marked `optimised`, with the
  optimisations on, i.e. the programs a user runs: the tests whose meaning depends on the
  compiled program (the method contract matrix on user models, parity with the reference
  codes, metrics under jit, trace counts, the 8-device suite).
* integration (`python -m pytest --integration`): only the tests marked `integration`, the
  end-to-end runs as a user starts them (entry points as subprocesses, the wheel installed
  into a new venv, the docs site and its commands, a SIGKILL and the resume, the all-method
  compile counts); XLA's optimisations off, like the default lane, which keeps one real
  step of each entry point in process (`tests/test_entry_points.py`).
* multiprocess (`python -m pytest --multiprocess`): only the tests marked `multiprocess`,
  jobs launched as 2 processes x 4 simulated CPU devices (`tests/test_multiprocess.py`,
  launched by `tests/process_launcher.py`);
  XLA's optimisations off, like the default lane.
The variable is set in `pytest_configure`, before any test module imports JAX, in the
controller and in every xdist worker; CLI and sharded-suite subprocesses inherit it.
"""

import os

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# tests/sharded needs 8 simulated devices, fixed at JAX's first backend use: it runs in its
# own process, launched by tests/test_parallel.py with UNLEARN_JAX_SHARDED=1.
SHARDED = bool(os.environ.get("UNLEARN_JAX_SHARDED"))
if not SHARDED:
  collect_ignore = ["sharded"]


LANES = ("optimised", "multiprocess", "integration")


def pytest_addoption(parser):
  parser.addoption("--optimised", action="store_true", default=False,
                   help="run only the tests marked `optimised`, with XLA's optimisations on")
  parser.addoption("--multiprocess", action="store_true", default=False,
                   help="run only the tests marked `multiprocess` (jobs over 2 processes)")
  parser.addoption("--integration", action="store_true", default=False,
                   help="run only the tests marked `integration` (subprocess end-to-end runs: "
                        "the wheel, the docs site, the CLI jobs, a SIGKILL and its resume)")
  parser.addoption("--do-nothing", default="", metavar="METHOD[,METHOD]",
                   help="the suite checking itself: every listed registered method returns "
                        "its input unchanged in this session (each must then fail a test "
                        "that names it)")


def pytest_configure(config):
  if SHARDED:      # the sharded suite inherits its launcher's lane
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  else:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if config.getoption("optimised") else "1"
  # `--do-nothing=METHOD`: the suite checking itself (tests/do_nothing.py). After the lane's
  # setting: replacing a method imports JAX.
  names = [n for n in config.getoption("do_nothing").split(",") if n]
  if names:
    import do_nothing
    do_nothing.replace_methods(names)


def pytest_collection_modifyitems(config, items):
  if SHARDED:
    return
  lane = next((m for m in LANES if config.getoption(m)), None)
  keep, drop = [], []
  for item in items:
    marked = [m for m in LANES if item.get_closest_marker(m)]
    (keep if marked == ([lane] if lane else []) else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def digits():
  from unlearn_jax.data import load_dataset
  return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_split(digits):
  from unlearn_jax.data import SplitSpec, make_split
  return make_split(SplitSpec("random", 0.1, seed=0), digits.train_y, digits.test_y, 10)


@pytest.fixture(scope="session")
def digits_mlp():
  """A digits MLP trained for 5 epochs: (dataset, adapter, variables, penultimate features of
  the training set, training labels). The certified heads (test_certified, test_langevin)
  are fitted on these features."""
  import jax
  import jax.numpy as jnp
  import unlearn_jax as uj
  digits = uj.load_dataset("digits")   # not the `digits` fixture: test_langevin has its own
  model = uj.as_adapter(uj.get_model("mlp", 10))
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  variables, _ = jax.jit(uj.fit, static_argnums=(0, 1))(
      model, uj.TrainConfig(epochs=5, batch_size=64, lr=0.05),
      model.init(jax.random.PRNGKey(0), digits.input_shape), x, y, jax.random.PRNGKey(1))
  return digits, model, variables, model.features(variables, x)[1], y
