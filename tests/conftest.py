"""Shared fixtures: the real digits dataset and a small split over it."""

import os

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite compiles hundreds of small programs and runs each for milliseconds: XLA's
# backend optimisations cost more than they save here (measured on 2 cores: the contract
# matrix of one user model 229 s -> 118 s, the SISA/train/parity files 131 s -> 99 s).
# Set before JAX is imported, so CLI subprocesses inherit it too. Export
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# tests/sharded needs 8 simulated devices, fixed at JAX's first backend use: it runs in its
# own process, launched by tests/test_parallel.py with UNLEARN_JAX_SHARDED=1.
if not os.environ.get("UNLEARN_JAX_SHARDED"):
  collect_ignore = ["sharded"]


@pytest.fixture(scope="session")
def digits():
  from unlearn_jax.data import load_dataset
  return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_split(digits):
  from unlearn_jax.data import SplitSpec, make_split
  return make_split(SplitSpec("random", 0.1, seed=0), digits.train_y, digits.test_y, 10)
