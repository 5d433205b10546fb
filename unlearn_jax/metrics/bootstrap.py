"""Intervals over a population of models: the bootstrap over models.

A population metric (KLOM, the competition's forgetting quality, per-example ε) is a
function of N models per population. Its sampling error is that of the models: another N
seeds would give another value. The bootstrap (Efron & Tibshirani, "An Introduction to
the Bootstrap", 1993) redraws each population's N models with replacement R times,
recomputes the metric on every redraw and reads the spread of the R replicates.

Histogram metrics need care: a redraw repeats about a third of its models, which makes
the histograms lumpier, so the replicates of KLOM sit well above the estimate and the
percentile interval of the replicates can miss the estimate itself. The interval here is therefore the
normal one, θ̂ ± z_{(1+c)/2} · sd(replicates) (Efron & Tibshirani, §13.2): the replicates
give the spread, the estimate the centre. It is an interval for the metric *at this N*
(its expectation over draws of N models), not for the divergence at N → ∞: KLOM of two
identical populations is far above 0 at small N, and that is the floor every row is read
against (`evaluation.SplitHalfReference`). tests/test_intervals.py measures the coverage
on Gaussian populations with a known answer.

Everything here is `jax.numpy`: the replicates of a jittable statistic are one
`lax.map` over the resamples (vmapped `batch_size` at a time), so they run under `jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import stats as jstats


def resample_indices(key, num_models: int, num_resamples: int):
  """[num_resamples, num_models] int32 model indices drawn uniformly with replacement:
  row r is the r-th bootstrap redraw of a population of `num_models` models. Share one
  array between two populations whose models are paired (an unlearned model and the
  original it came from) so that a difference keeps the pairing."""
  if int(num_models) < 1 or int(num_resamples) < 1:
    raise ValueError(f"num_models={num_models} and num_resamples={num_resamples} must be "
                     ">= 1")
  return jax.random.randint(key, (int(num_resamples), int(num_models)), 0, int(num_models),
                            dtype=jnp.int32)


def bootstrap_replicates(statistic, populations, indices, batch_size: int | None = None):
  """The statistic on every redraw: `statistic(*[p[idx] for p, idx in zip(populations,
  indices)])` for each row of the index arrays.

  `populations`: a tuple of pytrees whose leaves have the models on axis 0 (e.g. margins
  [N, S] or {split: [N, S_split]}); `indices`: a tuple of [R, N_i] arrays, one per
  population (`resample_indices`). Returns the statistic's pytree with a leading axis R.
  `batch_size` resamples are vmapped at a time (None: one at a time, the least memory)."""
  populations, indices = tuple(populations), tuple(indices)
  if len(populations) != len(indices):
    raise ValueError(f"one index array per population: got {len(populations)} populations "
                     f"and {len(indices)} index arrays")
  counts = {jnp.shape(i)[0] for i in indices}
  if len(counts) != 1:
    raise ValueError(f"every index array needs the same number of resamples; got {counts}")

  def one(rows):
    return statistic(*[jax.tree_util.tree_map(lambda a: jnp.take(a, r, axis=0), p)
                       for p, r in zip(populations, rows)])
  return jax.lax.map(one, indices, batch_size=batch_size)


def normal_interval(estimate, replicates, confidence: float = 0.95):
  """(low, high) = θ̂ ∓ z_{(1+c)/2} · sd(replicates) over the leading axis (ddof 1): the
  normal bootstrap interval around the estimate (module docstring for why not the
  percentile one). NaN where fewer than two replicates are finite."""
  if not 0 < confidence < 1:
    raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1")
  reps = jnp.asarray(replicates)
  finite = jnp.isfinite(reps)
  n = jnp.sum(finite, axis=0)
  mean = jnp.sum(jnp.where(finite, reps, 0.0), axis=0) / jnp.maximum(n, 1)
  var = jnp.sum(jnp.where(finite, (reps - mean) ** 2, 0.0), axis=0) / jnp.maximum(n - 1, 1)
  half = jstats.norm.ppf(0.5 + confidence / 2) * jnp.sqrt(var)
  half = jnp.where(n >= 2, half, jnp.nan)
  est = jnp.asarray(estimate)
  return est - half, est + half
