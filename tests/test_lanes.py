"""Each lane compiles as it says (tests/conftest.py): a lane whose setting did not reach
the compiler would test the wrong programs and still pass. Checked where it takes effect:
the XLA debug options JAX hands the compiler for every program (backend optimisation
level 0 and LLVM's expensive passes off in the default lane; level 3 in the optimised
one), in this process and in a subprocess (the CLI, the 8-device suite)."""

import subprocess
import sys

import pytest

PROBE = ("from jax._src import compiler; "
         "d = compiler.get_compile_options(num_replicas=1, num_partitions=1)"
         ".executable_build_options.debug_options; "
         "print(d.xla_backend_optimization_level, d.xla_llvm_disable_expensive_passes)")


def compiler_options(in_subprocess: bool) -> str:
  if not in_subprocess:
    from jax._src import compiler
    d = compiler.get_compile_options(num_replicas=1, num_partitions=1) \
        .executable_build_options.debug_options
    return f"{d.xla_backend_optimization_level} {d.xla_llvm_disable_expensive_passes}"
  out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=120)
  return out.stdout.strip() or out.stderr[-500:]


@pytest.mark.parametrize("in_subprocess", [False, True])
def test_the_default_lane_compiles_without_backend_optimisations(in_subprocess):
  assert compiler_options(in_subprocess) == "0 True", (
      "the default lane's programs are compiled with XLA's backend optimisations on: "
      "JAX_DISABLE_MOST_OPTIMIZATIONS did not reach JAX before it was imported")


@pytest.mark.optimised
@pytest.mark.parametrize("in_subprocess", [False, True])
def test_the_optimised_lane_compiles_the_programs_a_user_runs(in_subprocess):
  assert compiler_options(in_subprocess) == "3 False", (
      "the optimised lane's programs are compiled without XLA's backend optimisations")
