"""The ε lower bound of an audit (`metrics.audit`): Clopper-Pearson bounds equal an
independent inversion of the binomial CDF; the bound is the hypothesis-testing formula on
them; on populations whose true ε is known (Gaussian scores, μ-GDP) the bound stays below
the truth in at least 1 − α of draws and finds a real separation."""

import math

import numpy as np
import pytest
from scipy import optimize, stats

import unlearn_jax as uj


def _cp_by_root(count, total, alpha):
  """P(Binomial(total, p) ≤ count) = α solved for p by root finding (not the Beta route)."""
  if count == total:
    return 1.0
  return optimize.brentq(lambda p: stats.binom.cdf(count, total, p) - alpha, 1e-12, 1 - 1e-12,
                         xtol=1e-14)


@pytest.mark.parametrize("count,total,alpha", [(0, 50, 0.025), (3, 50, 0.025), (17, 200, 0.05),
                                               (99, 100, 0.01), (100, 100, 0.025)])
def test_clopper_pearson_equals_the_binomial_inversion(count, total, alpha):
  assert abs(uj.clopper_pearson_upper(count, total, alpha) - _cp_by_root(count, total, alpha)) < 1e-6


def test_the_bound_is_the_hypothesis_testing_formula():
  fp, neg, fn, pos, delta, alpha = 2, 400, 150, 400, 1e-5, 0.05
  out = uj.epsilon_lower_bound(fp, neg, fn, pos, delta=delta, alpha=alpha)
  fpr, fnr = _cp_by_root(fp, neg, alpha / 2), _cp_by_root(fn, pos, alpha / 2)
  want = max(0.0, math.log((1 - delta - fpr) / fnr), math.log((1 - delta - fnr) / fpr))
  assert abs(out["epsilon_lower_bound"] - want) < 1e-6
  assert abs(out["fpr_upper"] - fpr) < 1e-6 and abs(out["fnr_upper"] - fnr) < 1e-6
  assert uj.epsilon_lower_bound(50, 100, 50, 100)["epsilon_lower_bound"] == 0.0   # chance


def _gdp_epsilon(mu, delta):
  """The ε of μ-GDP at δ (Dong, Roth & Su, 2022): the root of
  Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) = δ."""
  f = lambda e: stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2) - delta
  return optimize.brentq(f, 0.0, 50.0)


def test_on_populations_with_a_known_epsilon_the_bound_holds_and_has_power():
  """Scores N(μ, 1) for unlearned models and N(0, 1) for retrained: the best test between
  them is μ-GDP's, so the true ε at δ is known. The 95% bound exceeds it in at most a few
  of 40 draws (the guarantee allows 5%), is 0 for identical populations in nearly all, and
  is clearly positive for a large shift (above 3, where 1,000 counted scores can prove at
  most about ln 1000)."""
  delta, rng = 1e-3, np.random.default_rng(0)
  for mu in (0.0, 3.0):
    truth = _gdp_epsilon(mu, delta) if mu > 0 else 0.0
    bounds = [uj.audit_epsilon(rng.normal(mu, 1, 2000), rng.normal(0, 1, 2000), delta=delta,
                               seed=i)["epsilon_lower_bound"] for i in range(40)]
    assert np.mean(np.asarray(bounds) > truth + 1e-9) <= 0.1, (mu, truth, bounds)
    if mu > 0:   # 1,000 counted scores cannot prove much more than ln(1000) ≈ 6.9
      assert np.median(bounds) > 3.0, (truth, np.median(bounds))


def test_bad_audit_inputs_are_one_line_errors():
  with pytest.raises(ValueError, match="count=5 of total=3"):
    uj.clopper_pearson_upper(5, 3, 0.05)
  with pytest.raises(ValueError, match="at least 4 scores of each population"):
    uj.audit_epsilon([1.0, 2.0], [0.0] * 10)
