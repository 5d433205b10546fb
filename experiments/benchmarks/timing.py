"""Wall-clock timing shared by the benchmark scripts."""

import statistics
import time

import jax


def median_seconds(fn, repeats: int) -> float:
  """The median wall time of `repeats` calls of `fn` (each waited for with
  `jax.block_until_ready`); warm it up (compile, first run) before calling this."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
