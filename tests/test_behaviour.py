"""Every registered method held, in the scenario it is meant for, to the field's criterion
on the memorising benchmark (`tests/memorising.py`: MNIST-1D, a 64-64 MLP, 3 seeds; its
docstring states the rules): random examples, forget accuracy closes at least half of the
gap to the retrained model; a class, forget accuracy below chance; retain accuracy within
10 points of the original's, or, for a method that reads no retain data or replaces the
head by a convex refit, test accuracy kept. And the suite checking itself: each method,
replaced by one that returns its input, fails its criterion by name.

Which scenario holds each method, and at which hyperparameters where its defaults do not
forget on this data, is `tests/expected/method_criteria.csv` (with the reason)."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from unlearn_jax import methods

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memorising  # noqa: E402

TABLE = memorising.read_table()
CASES = [m for m in methods.list_methods() if m in TABLE]


def test_the_table_holds_every_registered_method_to_one_criterion():
  registered = set(methods.list_methods())
  missing, unknown = sorted(registered - set(TABLE)), sorted(set(TABLE) - registered)
  assert not missing, f"methods with no criterion: {missing}; add rows to {memorising.TABLE}"
  assert not unknown, f"rows for methods that are not registered: {unknown}"
  for name, row in TABLE.items():
    assert row["scenario"] in memorising.SCENARIOS, (name, row["scenario"])
    assert row["scenario"] in methods.get_method(name).scenarios, (
        f"{name} is held to the {row['scenario']} scenario, which it is not meant for")
    methods.get_method(name).validate(row["hparams"])     # a stale name or value fails here
    assert row["hparams"] == {} or row["reason"].strip(), (
        f"{name}: hyperparameters other than its defaults need a reason in the table")


def test_the_class_is_forgotten_by_retraining():
  refs = memorising.references("class")["metrics"]
  assert refs["retrain"]["forget_acc"] == 0.0 and refs["original"]["forget_acc"] == 1.0, refs


def test_the_benchmark_memorises_its_forget_set():
  """The memorisation signal (original minus retrained forget accuracy) is at least 20
  points on every seed: the random-scenario criterion can tell forgetting from doing
  nothing."""
  seeds = memorising.references("random")["per_seed"]
  signal = seeds["original"]["forget_acc"] - seeds["retrain"]["forget_acc"]
  assert np.all(signal >= 0.20), f"memorisation signal per seed {signal}: below 0.20"
  assert np.all(seeds["original"]["retain_acc"] >= 0.99), seeds["original"]["retain_acc"]


# The two slowest criteria (a generator trained against the model; synthesised images) run
# in the integration lane, for the default lane's time; CI runs both lanes.
SLOW = ("gkt", "deepinversion")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.integration) if n in SLOW else n for n in CASES])
def test_the_method_meets_its_criterion(name):
  row = TABLE[name]
  _, failed = memorising.check(name, row)
  assert not failed, f"{memorising.describe(name, row)}: " + "; ".join(failed)


@pytest.mark.parametrize("name", CASES)
def test_the_method_doing_nothing_fails_its_criterion(name):
  """The suite checking itself: the method replaced by one that returns its input."""
  scenario = TABLE[name]["scenario"]
  failed = memorising.failures_doing_nothing(name, TABLE[name])
  assert failed and all(f.startswith(f"{name} ({scenario} scenario)") for f in failed), failed


# Methods whose table row sets hyperparameters only to fit the default lane's time, not
# because their defaults fail to forget.
SHORTER_FOR_TIME = ("gkt", "deepinversion")


def test_the_guide_names_every_method_whose_defaults_do_not_transfer():
  """docs/getting_started.md lists the methods the table runs away from their defaults;
  the list follows the table (add or drop a row's hyperparameters and this fails)."""
  text = (Path(__file__).resolve().parents[1] / "docs" / "getting_started.md").read_text()
  found = re.search(r"\*\*those defaults do not\s+transfer\*\* to a memorising MLP \(([^;)]*)",
                    text)
  assert found, "docs/getting_started.md lost its list of methods whose defaults do not transfer"
  listed = set(re.findall(r"[a-z_0-9]+", found.group(1).replace(" and ", ", "))) - {"and"}
  tuned = {m for m, row in TABLE.items() if row["hparams"]} - set(SHORTER_FOR_TIME)
  assert listed == tuned, (f"the guide lists {sorted(listed - tuned)} too many and misses "
                           f"{sorted(tuned - listed)}; the table is {memorising.TABLE}")
