"""Each lane compiles as it says (tests/conftest.py): a lane whose setting did not reach
JAX would test the wrong programs and still pass."""

import subprocess
import sys

import jax
import pytest


def test_the_default_lane_compiles_without_backend_optimisations():
  assert jax.config.read("jax_disable_most_optimizations") is True


@pytest.mark.optimised
def test_the_optimised_lane_compiles_the_programs_a_user_runs():
  assert jax.config.read("jax_disable_most_optimizations") is False
  # ... and its subprocesses (the CLI, the 8-device suite) inherit the setting.
  out = subprocess.run([sys.executable, "-c", "import jax; "
                        "print(jax.config.read('jax_disable_most_optimizations'))"],
                       capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == "False", out.stdout + out.stderr
