"""RMIA, IAM and the linear probe against computations written here from the papers' rules
(plain NumPy loops, SciPy's Gumbel, scikit-learn's RidgeClassifier), and on populations
where the answer is known: identical ones give chance, separated ones do not."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from unlearn_jax import metrics as M


def _rmia_loops(tx, rx, tz, rz, a=0.3, gamma=1.0):
  """Score(x; θ) = fraction of z with [Pr(x|θ)/Pr(x)] / [Pr(z|θ)/Pr(z)] > γ, one by one."""
  out = np.zeros(tx.shape)
  for t in range(tx.shape[0]):
    for s in range(tx.shape[1]):
      px = 0.5 * (1 + a) * np.mean(rx[:, s]) + 0.5 * (1 - a)
      hits = 0
      for z in range(tz.shape[1]):
        pz = 0.5 * (1 + a) * np.mean(rz[:, z]) + 0.5 * (1 - a)
        hits += (tx[t, s] / px) / (tz[t, z] / pz) > gamma
      out[t, s] = hits / tz.shape[1]
  return out


def test_rmia_is_the_papers_score():
  rng = np.random.default_rng(0)
  tx, rx = rng.uniform(0.01, 1, (3, 5)), rng.uniform(0.01, 1, (4, 5))
  tz, rz = rng.uniform(0.01, 1, (3, 7)), rng.uniform(0.01, 1, (4, 7))
  with jax.enable_x64(True):
    got = np.asarray(M.rmia(tx, rx, tz, rz, offline_a=0.3))
  np.testing.assert_allclose(got, _rmia_loops(tx, rx, tz, rz), atol=1e-12)
  with pytest.raises(ValueError, match="rmia takes"):
    M.rmia(tx, rx[:, :4], tz, rz)


def _iam_scipy(target, shadows, fitted, k=100, eps1=1e-2, eps2=1e-5):
  """IAM from its rule with SciPy's gumbel_r, one interpolation step and example at a time."""
  g = lambda p: -np.log(eps1 - np.log(eps2 + p))
  sig = lambda p: (g(p) - g(0.0)) / (g(1.0) - g(0.0))
  t, s, f = sig(target), sig(shadows), np.mean(sig(fitted))
  alphas = np.linspace(0, 1, k)
  out = np.zeros(t.shape)
  for i in range(t.shape[0]):
    for j in range(t.shape[1]):
      total = 0.0
      for step in range(k - 1):
        inter = s + alphas[step] * (f - s)                  # all shadows, all examples
        beta = math.sqrt(6) * np.std(inter) / math.pi
        mu = np.mean(inter[:, j]) - 0.5772 * beta
        total += alphas[step + 1] * stats.gumbel_r.cdf(t[i, j], mu, beta)
      out[i, j] = 1 - total / alphas[1:].sum()
  return out


def test_iam_is_the_papers_score():
  rng = np.random.default_rng(1)
  target, shadows = rng.uniform(0.05, 1, (2, 4)), rng.uniform(0.05, 0.9, (3, 4))
  fitted = rng.uniform(0.9, 1.0, 50)
  with jax.enable_x64(True):
    got = np.asarray(M.iam(target, shadows, fitted, interpolations=20))
  np.testing.assert_allclose(got, _iam_scipy(target, shadows, fitted, k=20), atol=1e-9)
  with pytest.raises(ValueError, match="interpolations"):
    M.iam(target, shadows, fitted, interpolations=1)


def _probs(rng, models, examples, mean):
  """True-class probabilities of a population: sigmoid of N(mean, 1) logits."""
  return 1 / (1 + np.exp(-rng.normal(mean, 1.0, (models, examples))))


@pytest.mark.integration    # populations of 16 × 100: seconds each
@pytest.mark.parametrize("attack", ["rmia", "iam"])
def test_the_attacks_are_at_chance_on_identical_populations_and_find_a_shift(attack):
  """Targets drawn like the retrained references score like retrained targets (AUC within
  0.1 of 0.5); targets whose forget examples are fitted (higher p_y) score apart (> 0.8)."""
  rng = np.random.default_rng(2)
  reference, retrained_targets = _probs(rng, 16, 100, 0.0), _probs(rng, 16, 100, 0.0)
  population = {"ref": _probs(rng, 16, 200, 0.0)}

  def scores(targets):
    if attack == "rmia":
      return np.asarray(M.rmia(targets, reference, _probs(rng, 16, 200, 0.0), population["ref"]))
    # IAM's score is "unlearned"-ness: 1 − it is the membership score.
    return 1 - np.asarray(M.iam(targets, reference, _probs(rng, 16, 500, 4.0)))

  base = scores(retrained_targets)
  same = M.roc_summary(scores(_probs(rng, 16, 100, 0.0)), base)["auc"]
  fitted = M.roc_summary(scores(_probs(rng, 16, 100, 3.0)), base)["auc"]
  assert abs(same - 0.5) < 0.1, same
  assert fitted > 0.8, fitted


def test_ridge_probe_is_scikit_learns_ridge_classifier():
  from sklearn.linear_model import RidgeClassifier
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
  with jax.enable_x64(True):
    w, b = M.ridge_probe(x, y, 3, l2=2.0)
  ref = RidgeClassifier(alpha=2.0).fit(x, y)
  np.testing.assert_allclose(np.asarray(w), ref.coef_.T, atol=1e-9)
  np.testing.assert_allclose(np.asarray(b), ref.intercept_, atol=1e-9)
  x_eval, y_eval = rng.normal(size=(20, 5)), rng.integers(0, 3, 20)
  with jax.enable_x64(True):
    acc = float(M.linear_probe_accuracy(x, y, x_eval, y_eval, 3, l2=2.0))
  assert acc == pytest.approx(np.mean(ref.predict(x_eval) == y_eval), abs=1e-6)


@pytest.mark.integration    # three probes of 400 examples, vmapped: seconds
def test_the_probe_recovers_what_the_features_keep():
  """Features that carry the class (its mean shifted per class) give a probe far above
  chance on fresh examples; features that dropped it (pure noise) give chance; vmapped
  over a population of feature maps."""
  rng = np.random.default_rng(4)
  centres = rng.normal(0, 3, (4, 8))
  y_train, y_eval = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
  keep = lambda y: centres[y] + rng.normal(size=(y.size, 8))
  drop = lambda y: rng.normal(size=(y.size, 8))
  acc = jax.vmap(lambda a, b: M.linear_probe_accuracy(a, y_train, b, y_eval, 4))
  kept = np.asarray(acc(np.stack([keep(y_train)] * 3), np.stack([keep(y_eval)] * 3)))
  dropped = np.asarray(acc(np.stack([drop(y_train)] * 3), np.stack([drop(y_eval)] * 3)))
  assert kept.min() > 0.9 and dropped.max() < 0.4, (kept, dropped)
