"""Intervals over models (`metrics.bootstrap`) and the split-half floor
(`evaluation.SplitHalfReference`), on Gaussian populations whose answer is known.

Margins of N(μ_s, 1) for the scored models and N(0, 1) for the oracles, per example s. The
KL of two such Gaussians is μ²/2; KLOM at N models estimates it with a bias that only
vanishes as N grows, so at small N the truth an interval must cover is KLOM's expectation
at that N, computed here by Monte Carlo over independent draws with this file's NumPy
rendering of the benchmark's rule (tests/test_klom.py), and at large N the analytic KL."""

import jax
import numpy as np
import pytest

from tests.test_klom import reference_klom
from unlearn_jax import evaluation
from unlearn_jax import metrics as M


def _p95(u, o):
  """The 95th percentile over examples of the NumPy KLOM: the independent reference."""
  return float(np.percentile([reference_klom(u[:, s], o[:, s]) for s in range(u.shape[1])], 95))


_replicates = jax.jit(lambda u, o, iu, io: M.bootstrap_replicates(
    lambda uu, oo: M.klom_average_95({"forget": uu}, {"forget": oo})["average_95"], (u, o),
    (iu, io), batch_size=50))


def _coverage(n, mus, truth, draws, rng, resamples=200):
  hits, widths = [], []
  for d in range(draws):
    u = rng.normal(mus, 1, (n, mus.size))
    o = rng.normal(0, 1, (n, mus.size))
    estimate = float(M.klom_average_95({"forget": u}, {"forget": o})["average_95"])
    ku, ko = jax.random.split(jax.random.PRNGKey(d))
    reps = _replicates(u, o, M.resample_indices(ku, n, resamples),
                       M.resample_indices(ko, n, resamples))
    low, high = (float(v) for v in M.normal_interval(estimate, reps))
    hits.append(low <= truth <= high)
    widths.append(high - low)
  return float(np.mean(hits)), float(np.mean(widths))


# The integration lane, for the default lane's 5 minutes (CI runs both lanes).
@pytest.mark.integration
def test_the_klom_interval_covers_its_expectation_at_small_n():
  """At 32 models per side the 95% interval covers KLOM's expectation (Monte Carlo over 200
  independent draws, NumPy) in at least 90% of 40 draws, and is no wider than four of the
  estimate's true standard deviations (an interval of everything would cover too). The
  percentile interval of the same replicates covers it in almost none: the redraws repeat
  models and lift KLOM (the reason `normal_interval` centres on the estimate)."""
  rng = np.random.default_rng(0)
  n, mus = 32, np.linspace(0.0, 1.0, 20)
  truth_draws = [_p95(rng.normal(mus, 1, (n, mus.size)), rng.normal(0, 1, (n, mus.size)))
                 for _ in range(200)]
  truth, sd = float(np.mean(truth_draws)), float(np.std(truth_draws))
  coverage, width = _coverage(n, mus, truth, 40, rng)
  assert coverage >= 0.9, (coverage, truth)
  assert width <= 4 * 2 * sd, (width, sd)
  # The percentile interval of the replicates, for contrast.
  u, o = rng.normal(mus, 1, (n, mus.size)), rng.normal(0, 1, (n, mus.size))
  reps = np.asarray(_replicates(u, o, M.resample_indices(jax.random.PRNGKey(1), n, 200),
                                M.resample_indices(jax.random.PRNGKey(2), n, 200)))
  assert np.percentile(reps, 2.5) > truth, "the redraws no longer lift KLOM: revisit the docs"


@pytest.mark.integration    # 30 draws of 4,000 models: half a minute
def test_at_large_n_the_interval_covers_the_analytic_kl():
  """With 4,000 models per side KLOM's bias is small against its spread: the interval covers
  the 95th percentile over examples of μ²/2, the Gaussians' KL, in ≥ 90% of 30 draws."""
  rng = np.random.default_rng(1)
  mus = np.linspace(0.0, 1.0, 20)
  truth = float(np.percentile(mus ** 2 / 2, 95))
  coverage, _ = _coverage(4000, mus, truth, 30, rng, resamples=100)
  assert coverage >= 0.9, coverage


def test_normal_interval_is_the_estimate_plus_minus_z_sd():
  reps = np.array([1.0, 2.0, 4.0, 7.0])
  low, high = M.normal_interval(3.0, reps, 0.9)
  half = 1.6448536269514722 * np.std(reps, ddof=1)
  np.testing.assert_allclose([float(low), float(high)], [3.0 - half, 3.0 + half], rtol=1e-6)
  assert np.isnan(float(M.normal_interval(1.0, np.array([1.0, np.nan]))[0]))
  with pytest.raises(ValueError, match="confidence"):
    M.normal_interval(1.0, reps, 1.5)


def test_replicates_redraw_each_population_by_its_own_indices():
  u, o = np.arange(4.0)[:, None] * np.ones((4, 3)), 10 + np.arange(4.0)[:, None] * np.ones((4, 3))
  iu, io = np.array([[0, 0, 1, 3], [2, 2, 2, 2]]), np.array([[1, 1, 1, 1], [0, 1, 2, 3]])
  reps = M.bootstrap_replicates(lambda a, b: a.sum() - b.sum(), (u, o), (iu, io))
  assert reps.shape == (2,)
  np.testing.assert_allclose(np.asarray(reps), [(0 + 0 + 1 + 3 - 44) * 3, (8 - 46) * 3])
  with pytest.raises(ValueError, match="one index array per population"):
    M.bootstrap_replicates(lambda a: a, (u,), (iu, io))


# --- the split-half floor, through the evaluation ----------------------------------------

def _logits(margins):
  """Two-class logits whose logit-scaled confidence for label 0 is `margins` [N, S]."""
  return np.stack([margins, np.zeros_like(margins)], -1)


def _evaluate(name, scored, oracles, resamples=100):
  s = scored.shape[1]
  labels = {k: np.zeros(s, np.int64) for k in ("forget", "retain", "test")}
  ref = evaluation.SplitHalfReference({k: _logits(oracles) for k in labels}, labels,
                                      num_resamples=resamples, epsilon_resamples=2)
  logits = {k: _logits(scored) for k in labels}
  row, _, _, reps = evaluation.evaluate_population(name, logits, labels, ref,
                                                   np.zeros((scored.shape[0], s, 2)), 0.0, 1)
  return row, reps, ref


@pytest.mark.integration    # two evaluations' compilation: tens of seconds on 2 cores
def test_the_floor_is_two_halves_of_the_oracles_scored_like_any_row():
  """The retrain row's KLOM is the NumPy KLOM of the oracles' first half against their
  second half, and every other row's is its first h models against that same second half:
  the floor and the rows compare h models with h models."""
  rng = np.random.default_rng(2)
  h, s = 16, 12
  oracles, scored = rng.normal(0, 1, (2 * h, s)), rng.normal(1.5, 1, (2 * h, s))
  floor, _, _ = _evaluate("retrain", oracles, oracles)
  row, _, _ = _evaluate("method", scored, oracles)
  assert floor["models_per_side"] == row["models_per_side"] == h
  np.testing.assert_allclose(floor["klom_average_95"], _p95(oracles[:h], oracles[h:]), atol=2e-4)
  np.testing.assert_allclose(row["klom_average_95"], _p95(scored[:h], oracles[h:]), atol=2e-4)
  for r in (floor, row):
    assert r["klom_average_95_low"] <= r["klom_average_95"] <= r["klom_average_95_high"]


def _verdict(rng, h, shift, s=40):
  oracles = rng.normal(0, 1, (2 * h, s))
  rows, reps = [], {}
  for name, pop in (("retrain", oracles), ("original", rng.normal(shift, 1, (2 * h, s)))):
    row, reps[name], ref = _evaluate(name, pop, oracles)
    rows.append(row)
  evaluation.compare_to_floor(rows, reps, ref)
  return rows[1]["klom_distinguishable_from_floor"]


@pytest.mark.integration    # 25 evaluations of three populations
def test_identical_populations_are_rarely_told_from_the_floor_and_shifted_ones_are():
  """At 16 models per side (`MIN_MODELS_PER_SIDE`) a third population drawn like the
  oracles is told apart from the floor in at most 10% of 20 draws; one shifted by 2σ in
  every draw."""
  rng = np.random.default_rng(3)
  h = evaluation.MIN_MODELS_PER_SIDE
  same = [_verdict(rng, h, 0.0) for _ in range(20)]
  assert np.mean(same) <= 0.1, same
  assert all(_verdict(rng, h, 2.0) for _ in range(5))


@pytest.mark.integration    # an evaluation's compilation: seconds
def test_below_the_minimum_there_are_no_intervals_and_no_verdicts():
  rng = np.random.default_rng(4)
  h = evaluation.MIN_MODELS_PER_SIDE // 2
  oracles = rng.normal(0, 1, (2 * h, 8))
  row, reps, ref = _evaluate("original", rng.normal(0, 1, (2 * h, 8)), oracles)
  assert ref.no_intervals and "at least 16 per side" in ref.no_intervals
  assert reps == {} and np.isnan(row["klom_average_95_low"])
  evaluation.compare_to_floor([row], {"original": reps}, ref)
  assert row["klom_distinguishable_from_floor"] is None


@pytest.mark.integration    # two evaluations' compilation: seconds
def test_margins_too_wide_for_the_epsilon_grid_get_no_epsilon_interval():
  """A population whose margins span more than `EPSILON_BOOTSTRAP_MAX_THRESHOLDS`/100 units
  keeps its KLOM interval but redraws no ε (each redraw would run a grid of millions)."""
  rng = np.random.default_rng(5)
  h = evaluation.MIN_MODELS_PER_SIDE
  oracles = rng.normal(0, 1, (2 * h, 6))
  wide = rng.normal(0, 1, (2 * h, 6))
  wide[0, 0] = 1000.0      # one model, one example: a range of 1,000 units (100,000 thresholds)
  row, reps, _ = _evaluate("method", wide, oracles)
  assert row["epsilon_resamples"] == 0 and "forgetting_quality" not in reps
  assert np.isnan(row["forgetting_quality_low"]) and not np.isnan(row["klom_average_95_low"])
  narrow, _, _ = _evaluate("method", rng.normal(0, 1, (2 * h, 6)), oracles)
  assert narrow["epsilon_resamples"] == 2 and not np.isnan(narrow["forgetting_quality_low"])
