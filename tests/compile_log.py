"""Which programs XLA compiles: JAX's own compile log (`jax_log_compiles`), captured.

A line "Compiling jit(<name>) with global shapes and types ..." is written once per
compilation; the same line twice means the same program (same function, same shapes and
types) was compiled twice in one run, which the driver promises never to do.
"""

import collections
import contextlib
import logging
import re

import jax

_LINE = re.compile(r"Compiling (jit\([^)]*\)) with global shapes and types (.*?)\. Argument")


@contextlib.contextmanager
def compiles():
  """Yields a Counter {(program name, signature): compilations} filled while inside."""
  counts = collections.Counter()

  class Handler(logging.Handler):
    def emit(self, record):
      m = _LINE.search(record.getMessage())
      if m:
        counts[(m.group(1), m.group(2))] += 1

  handler = Handler(logging.WARNING)
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  before = jax.config.jax_log_compiles
  jax.config.update("jax_log_compiles", True)
  try:
    yield counts
  finally:
    jax.config.update("jax_log_compiles", before)
    logger.removeHandler(handler)


# The driver's programs, named so (unlearn_<method>: `driver.MethodProgram`). Eager
# operations and anonymous lambdas are left out: their names say nothing, and an op run
# eagerly inside and outside `jax.enable_x64` is two programs under one log line.
DRIVER_PROGRAMS = ("jit(unlearn_", "jit(train_epoch)", "jit(population_logits)",
                   "jit(per_seed)", "jit(relearn)")


def compiled_twice(counts) -> list:
  """The driver's programs compiled more than once with the same shapes, with counts."""
  return [(name, n) for (name, _), n in counts.items()
          if n > 1 and name.startswith(DRIVER_PROGRAMS)]


def per_program(counts) -> collections.Counter:
  """{program name: compilations of any signature}."""
  out = collections.Counter()
  for (name, _), n in counts.items():
    out[name] += n
  return out
