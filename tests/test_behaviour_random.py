"""Every method meant for forgetting random examples, held to the field's criterion on the
memorising benchmark (`tests/memorising.py`: MNIST-1D, a random 10% forget set, 3 seeds):
forget accuracy closes at least half of the gap to the retrained model and retain accuracy
stays within 10 points of the original's. And the suite checking itself: each method,
replaced by one that returns its input, fails that criterion by name.

Which scenario holds each method, and at which hyperparameters where its defaults do not
forget on this data, is `tests/expected/method_criteria.csv` (with the reason)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memorising  # noqa: E402

TABLE = memorising.read_table()
CASES = memorising.cases("random", TABLE)


def test_the_benchmark_memorises_its_forget_set():
  """The memorisation signal (original minus retrained forget accuracy) is at least 20
  points on every seed: the criterion below can tell forgetting from doing nothing."""
  seeds = memorising.references("random")["per_seed"]
  signal = seeds["original"]["forget_acc"] - seeds["retrain"]["forget_acc"]
  assert np.all(signal >= 0.20), f"memorisation signal per seed {signal}: below 0.20"
  assert np.all(seeds["original"]["retain_acc"] >= 0.99), seeds["original"]["retain_acc"]


@pytest.mark.parametrize("name", CASES)
def test_the_method_meets_its_criterion(name):
  row = TABLE[name]
  _, failed = memorising.check(name, row)
  assert not failed, f"{memorising.describe(name, row)}: " + "; ".join(failed)


@pytest.mark.parametrize("name", CASES)
def test_the_method_doing_nothing_fails_its_criterion(name):
  failed = memorising.failures_doing_nothing(name, TABLE[name])
  assert failed and all(f.startswith(f"{name} (random scenario)") for f in failed), failed
