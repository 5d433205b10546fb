"""Metrics against hand-computable cases."""

import jax.numpy as jnp
import chex
import jax
import numpy as np
import pytest

from unlearn_jax import metrics


def test_accuracy_and_loss_by_hand():
  logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
  labels = jnp.array([0, 1, 1])
  assert float(metrics.accuracy(logits, labels)) == pytest.approx(2 / 3)
  np.testing.assert_allclose(metrics.per_example_loss(logits, labels)[2],
                             np.log1p(np.e), rtol=1e-6)


def test_mia_loss_lr_chance_for_identical_distributions():
  rng = np.random.default_rng(0)
  score = metrics.mia_loss_lr(rng.exponential(1.0, 2000), rng.exponential(1.0, 2000))
  assert abs(score - 0.5) < 0.05


def test_mia_loss_lr_perfect_for_separated_losses():
  rng = np.random.default_rng(0)
  score = metrics.mia_loss_lr(rng.uniform(0, 0.1, 300), rng.uniform(1, 2, 500))
  assert score > 0.98


def test_mia_loss_lr_needs_enough_examples():
  with pytest.raises(ValueError, match=">= 10"):
    metrics.mia_loss_lr(np.ones(3), np.ones(30))


# ----------------------------------------------------------------------------- populations
def _pop(mu, n=64, s=20, seed=0, sd=1.0):
  return np.random.default_rng(seed).normal(mu, sd, size=(n, s))


def test_logit_scaled_confidence_and_hinge_by_hand():
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 1000.0, -1000.0]])
  labels = np.array([0, 1])
  p0 = np.exp(2) / (np.exp(2) + 2)
  with jax.enable_x64(True):        # the float64 form
    phi = np.asarray(metrics.logit_scaled_confidence(logits, labels))
    np.testing.assert_allclose(phi[0], np.log(p0 / (1 - p0)), rtol=1e-12)
    # Σ_{j≠y} p_j underflows even in float64; z_y − logsumexp_{j≠y} z_j stays exact.
    np.testing.assert_allclose(phi[1], 1000.0, rtol=1e-12)
    np.testing.assert_allclose(metrics.hinge(logits, labels), [2.0, 1000.0])
  # float32 (the default) agrees to float32 precision.
  np.testing.assert_allclose(metrics.logit_scaled_confidence(logits, labels), phi, rtol=1e-6)


def test_identical_populations_give_zero_epsilon_and_full_quality():
  u = _pop(0.0)
  eps = metrics.per_example_epsilons(u, u.copy())
  assert eps.shape == (20,) and np.all(eps < 0.5)
  assert metrics.forgetting_quality(eps, 64) == 1.0
  assert metrics.forgetting_quality(eps, 64, "kaggle") == 1.0
  np.testing.assert_allclose(metrics.competition_score(eps, 64, 0.9, 0.9, 0.8, 0.8), 1.0)


def test_separated_populations_give_epsilon_cap_and_zero_quality():
  eps = metrics.per_example_epsilons(_pop(0.0), _pop(100.0, seed=1))
  np.testing.assert_array_equal(eps, 50.0)
  assert metrics.forgetting_quality(eps, 64) == 0.0
  assert metrics.forgetting_quality(eps, 64, "kaggle") == 2.0 ** -12
  eps_hat, median = metrics.eps_hat(_logits_with_hinge(0.0), _logits_with_hinge(100.0),
                                    np.zeros(20, int))
  assert np.all(np.isinf(eps_hat)) and np.isinf(median)


def test_degenerate_population_is_epsilon_50():
  """One population with (almost) no spread: the competition's 1% range rule."""
  eps = metrics.per_example_epsilons(np.zeros((64, 3)), _pop(0.0, s=3))
  np.testing.assert_array_equal(eps, 50.0)


def _logits_with_hinge(mu, n=64, s=20, seed=0):
  h = np.random.default_rng(seed).normal(mu, 1.0, size=(n, s))
  return np.stack([h, np.zeros_like(h)], axis=-1)      # label 0: hinge = h


def test_epsilons_grow_with_the_gaussian_shift():
  shifts = [0.0, 0.5, 1.0, 2.0, 4.0]
  means = [np.mean(metrics.per_example_epsilons(_pop(0.0), _pop(d, seed=1))) for d in shifts]
  assert all(a < b for a, b in zip(means, means[1:])), means
  medians = [metrics.eps_hat(_logits_with_hinge(0.0), _logits_with_hinge(d, seed=1),
                             np.zeros(20, int))[1] for d in shifts[:4]]
  assert all(a < b for a, b in zip(medians, medians[1:])), medians
  quality = [metrics.forgetting_quality(metrics.per_example_epsilons(_pop(0.0), _pop(d, seed=1)),
                                        64) for d in shifts]
  assert all(a >= b for a, b in zip(quality, quality[1:])), quality


def test_forgetting_quality_buckets_by_hand():
  with jax.enable_x64(True):   # the float64 form; float32 is checked under jit below
    # code: N=512 → ε_max = ⌈ln 511⌉ = 7; ε 0.2 → 1, 0.7 → 1/2, 1.2 → 1/4, 7.1 → 0
    assert metrics.forgetting_quality([0.2, 0.7, 1.2, 7.1], 512) == (1 + 0.5 + 0.25 + 0) / 4
    # kaggle: bin n = ⌊ε/0.5⌋ + 1, H = 2/2^n; beyond 13 bins 2^-12
    np.testing.assert_allclose(metrics.forgetting_quality([0.2, 0.7, 9.0], 512, "kaggle"),
                               (1 + 0.5 + 2 ** -12) / 3, rtol=1e-12)


def test_competition_score_of_retrain_against_itself_is_about_one():
  r = _pop(0.0, seed=3)
  eps = metrics.per_example_epsilons(r, r)
  score = metrics.competition_score(eps, 64, [0.9, 0.91], [0.9, 0.91], [0.8], [0.8])
  np.testing.assert_allclose(score, 1.0)
  # Two *independent* samples of 64 from one distribution: the best of ~160k attacks finds
  # chance gaps, so F sits well below 1 — the noise floor the evaluation report shows.
  floor = metrics.forgetting_quality(metrics.per_example_epsilons(r, _pop(0.0, seed=4)), 64)
  assert 0.05 < floor < 0.9, floor


def test_mia_efficacy_separates_confident_members():
  rng = np.random.default_rng(0)
  confident = lambda n: np.stack([np.full(n, 8.0) + rng.normal(0, .1, n), np.zeros(n)], -1)
  unsure = lambda n: np.stack([np.full(n, 0.2) + rng.normal(0, .1, n), np.zeros(n)], -1)
  zeros = lambda n: np.zeros(n, int)
  # forget examples that look like test examples → counted as non-members (efficacy 1)
  assert metrics.mia_efficacy(confident(200), zeros(200), unsure(200), zeros(200), unsure(50),
                              zeros(50)) > 0.95
  assert metrics.mia_efficacy(confident(200), zeros(200), unsure(200), zeros(200),
                              confident(50), zeros(50)) < 0.05
  assert metrics.mia_efficacy(confident(200), zeros(200), unsure(200), zeros(200),
                              unsure(50), zeros(50), feature="entropy") > 0.95


def test_lira_online_and_offline():
  rng = np.random.default_rng(0)
  m, s = 32, 50
  shadow_in = rng.random((m, s)) < 0.5
  shadow = rng.normal(0, 1, (m, s)) + 3.0 * shadow_in      # members: +3 confidence
  target_in = rng.random((8, s)) < 0.5
  target = rng.normal(0, 1, (8, s)) + 3.0 * target_in
  for online in (True, False):
    out = metrics.lira(shadow, shadow_in, target, target_in, online=online)
    assert out["auc"] > 0.9 and out["balanced_accuracy"] > 0.85, out
  blind = metrics.lira(shadow, shadow_in, rng.normal(0, 1, (8, s)), target_in)
  assert 0.35 < blind["auc"] < 0.65


def test_ulira_chance_when_unlearning_equals_retraining():
  u, r = _pop(0.0, n=32, seed=5), _pop(0.0, n=32, seed=6)
  targets = np.concatenate([_pop(0.0, n=16, seed=7), _pop(0.0, n=16, seed=8)])
  which = np.arange(32) < 16
  assert abs(metrics.ulira(u, r, targets, which)["accuracy"] - 0.5) < 0.1
  u2 = _pop(3.0, n=32, seed=5)
  targets2 = np.concatenate([_pop(3.0, n=16, seed=7), _pop(0.0, n=16, seed=8)])
  assert metrics.ulira(u2, r, targets2, which)["accuracy"] > 0.9


def test_distribution_metrics_by_hand():
  with jax.enable_x64(True):   # the float64 form; float32 is checked under jit below
    a = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert metrics.js_to_retrain(a, a) == 0.0 and metrics.activation_distance(a, a) == 0.0
    assert metrics.zrf(a, a) == 1.0 and metrics.zrf(a, a, compat=True) == 1.0
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])     # disjoint: JS = ln 2
    lp, lq = np.log(np.maximum([p], 1e-300)), np.log(np.maximum([q], 1e-300))
    np.testing.assert_allclose(metrics.js_to_retrain(lp, lq), np.log(2), rtol=1e-9)
    np.testing.assert_allclose(metrics.activation_distance(lp, lq), np.sqrt(2), rtol=1e-9)
    np.testing.assert_allclose(metrics.zrf(lp, lq), 1 - np.log(2), rtol=1e-9)
    # compat: the reference averages m·(ln m − ln p) over n·C elements (here C = 2)
    pr, qr = np.array([0.7, 0.3]), np.array([0.2, 0.8])
    m = (pr + qr) / 2
    ref = 0.5 * np.mean(m * np.log(m / pr)) + 0.5 * np.mean(m * np.log(m / qr))
    np.testing.assert_allclose(metrics.zrf(np.log([pr]), np.log([qr]), compat=True), 1 - ref,
                               rtol=1e-9)


def test_avg_gap_by_hand():
  u = {"forget_acc": 0.2, "retain_acc": 0.9, "test_acc": 0.8, "mia_efficacy": 0.5}
  r = {"forget_acc": 0.0, "retain_acc": 1.0, "test_acc": 0.8, "mia_efficacy": 0.7}
  np.testing.assert_allclose(metrics.avg_gap(u, r), (20 + 10 + 0 + 20) / 4)


# ----------------------------------------------------------------------------- under jit
def _metric_cases():
  """Every metric of unlearn_jax.metrics with small arguments: (name, fn(*args), args)."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(40, 5)).astype(np.float32)
  logits2 = rng.normal(size=(40, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 40).astype(np.int32)
  u, r = _pop(0.0, n=16, s=6).astype(np.float32), _pop(0.3, n=16, s=6, seed=1).astype(np.float32)
  pop_u = rng.normal(size=(8, 6, 5)).astype(np.float32)
  pop_r = rng.normal(size=(8, 6, 5)).astype(np.float32)
  losses = np.abs(rng.normal(size=40)).astype(np.float32)
  return {
      "accuracy": (metrics.accuracy, (logits, labels)),
      "per_example_loss": (metrics.per_example_loss, (logits, labels)),
      "logit_scaled_confidence": (metrics.logit_scaled_confidence, (logits, labels)),
      "hinge": (metrics.hinge, (logits, labels)),
      "zrf": (metrics.zrf, (logits, logits2)),
      "js_to_retrain": (metrics.js_to_retrain, (logits, logits2)),
      "activation_distance": (metrics.activation_distance, (logits, logits2)),
      "avg_gap": (lambda a, b: metrics.avg_gap(
          {"forget_acc": a, "retain_acc": a, "test_acc": b, "mia_efficacy": b},
          {"forget_acc": b, "retain_acc": b, "test_acc": a, "mia_efficacy": a}),
                  (np.float32(0.9), np.float32(0.7))),
      "forgetting_quality": (lambda e: metrics.forgetting_quality(e, 16),
                             (np.float32([0.2, 0.7, 1.2, 7.1]),)),
      "competition_score": (lambda e, a: metrics.competition_score(e, 16, a, a, a, a),
                            (np.float32([0.2, 0.7]), np.float32([0.9, 0.8]))),
      "anamnesis_index": (metrics.anamnesis_index, (np.float32([0, 10, 40]), np.float32([20] * 3))),
      "per_example_epsilons": (lambda a, b: metrics.per_example_epsilons(a, b, max_thresholds=2000),
                               (u, r)),
      "eps_hat": (lambda a, b: metrics.eps_hat(a, b, labels[:6]), (pop_u, pop_r)),
      "roc_summary": (metrics.roc_summary, (u[0], r[0])),
      "lira": (lambda s, t: metrics.lira(s, np.broadcast_to(np.arange(16)[:, None] % 2 == 0,
                                                            (16, 6)), t, np.ones((4, 6), bool)),
               (u, r[:4])),
      "ulira": (lambda a, b: metrics.ulira(a[:8], b[:8], jnp.concatenate([a[8:], b[8:]]),
                                           np.arange(16) < 8), (u, r)),
      "mia_loss_lr": (metrics.mia_loss_lr, (losses, losses * 2)),
      "mia_efficacy": (lambda a, b: metrics.mia_efficacy(a, labels, b, labels, a[:10], labels[:10]),
                       (logits, logits2)),
      "relearn_steps": None,    # needs a model: covered in test_methods under jit and vmap
      "klom_report": None,      # floats for a report: tests/test_klom.py
      # Audits: SciPy's Beta quantiles on counts, floats for a report: tests/test_audit.py.
      "audit_epsilon": None, "epsilon_lower_bound": None, "clopper_pearson_upper": None,
      "klom": (metrics.klom, (u, r)),
      "klom_average_95": (lambda a, b: metrics.klom_average_95({"f": a, "g": b}, {"f": b, "g": a}),
                          (u, r)),
      "resample_indices": None,   # takes a key and static sizes: tests/test_intervals.py
      "bootstrap_replicates": (lambda a, b: metrics.bootstrap_replicates(
          lambda x, y: jnp.mean(x) - jnp.mean(y), (a, b),
          (np.arange(32).reshape(2, 16) % 16, np.zeros((2, 16), np.int32))), (u, r)),
      "rmia": (lambda a, b: metrics.rmia(a, b, a, b), (np.abs(u) + 0.1, np.abs(r) + 0.1)),
      "iam": (lambda a, b: metrics.iam(a, b, b), (1 / (1 + np.exp(-u)), 1 / (1 + np.exp(-r)))),
      "bounded_gumbel_signal": (metrics.bounded_gumbel_signal, (1 / (1 + np.exp(-u)),)),
      "true_class_probability": (metrics.true_class_probability, (logits, labels)),
      "ridge_probe": (lambda a, b: metrics.ridge_probe(a, labels[:16], 5), (u, r)),
      "linear_probe_accuracy": (lambda a, b: metrics.linear_probe_accuracy(
          a, labels[:16], b, labels[16:32], 5), (u, r)),
      "normal_interval": (lambda e, reps: metrics.normal_interval(e, reps),
                          (np.float32(1.0), np.float32([0.5, 1.0, 2.0]))),
      "klom_percentiles": (lambda a, b: metrics.klom_percentiles(metrics.klom(a, b)), (u, r)),
      "layer_distance": (lambda a, b: metrics.layer_distance({"l0": a, "l1": b}, {"l0": b, "l1": a}),
                         (u, r)),
      "mean_layer_distance": (lambda a, b: metrics.mean_layer_distance({"l0": a}, {"l0": b}),
                              (u, r)),
  }


# Not in the jit matrix: relearn_steps takes a model (jit and vmap are tested with one in
# test_methods); klom_report and the audits return Python floats for a report (klom itself
# is here; the audits' tests are tests/test_audit.py).
WITH_A_MODEL = ("relearn_steps", "klom_report", "audit_epsilon", "epsilon_lower_bound",
                "clopper_pearson_upper", "resample_indices")


def test_every_exported_metric_has_a_jit_case():
  assert set(_metric_cases()) == set(metrics.__all__), set(_metric_cases()) ^ set(metrics.__all__)


@pytest.mark.optimised
@pytest.mark.parametrize("name", [m for m in metrics.__all__ if m not in WITH_A_MODEL])
def test_every_metric_runs_under_jit_and_matches_its_float64_form(name):
  fn, args = _metric_cases()[name]
  got = jax.jit(fn)(*args)                      # float32, traced (host metrics: pure_callback)
  with jax.enable_x64(True):                    # the float64 form, eager
    want = fn(*[np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else a
                for a in args])
  chex.assert_trees_all_close(jax.tree_util.tree_map(np.asarray, got),
                              jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), want),
                              rtol=1e-4, atol=1e-5)


def _epsilon_cases():
  rng = np.random.default_rng(5)
  u = rng.normal(0.0, 1.0, (32, 30))
  r = rng.normal(0.4, 1.3, (32, 30))
  r[:, :5] = u[:, :5]                                  # identical samples
  r[:, 5:8] = u[:, 5:8] + 10                           # perfectly separated
  u[:, 8] = 1.0                                        # degenerate range
  r[:, 9:12] = np.round(r[:, 9:12], 1)                 # ties on the grid
  return u, r


def test_vectorised_epsilons_equal_the_competitions_rule_in_float64():
  """Against tests/reference_epsilons.py, an independent NumPy rendering of the rule."""
  from reference_epsilons import per_example_epsilons as reference
  u, r = _epsilon_cases()
  with jax.enable_x64(True):
    got = np.asarray(metrics.per_example_epsilons(u, r))
  # The same attacks are chosen; only the last bits of a logarithm may differ.
  np.testing.assert_allclose(got, reference(u, r), rtol=1e-12)
  # Different population sizes (the retrain-vs-retrain floor uses halves).
  with jax.enable_x64(True):
    got = np.asarray(metrics.per_example_epsilons(u[:20], r))
  np.testing.assert_allclose(got, reference(u[:20], r), rtol=1e-12)


@pytest.mark.optimised
def test_vectorised_epsilons_in_float32_under_jit_stay_close():
  from reference_epsilons import per_example_epsilons as reference
  u, r = _epsilon_cases()
  want = reference(u, r)
  size = int(np.max(np.ceil(100 * (np.maximum(u.max(0), r.max(0)) - np.minimum(u.min(0), r.min(0))))))
  got = np.asarray(jax.jit(lambda a, b: metrics.per_example_epsilons(a, b, max_thresholds=size))(
      u.astype(np.float32), r.astype(np.float32)))
  assert np.mean(np.isclose(got, want, rtol=1e-4)) >= 0.9
  np.testing.assert_allclose(metrics.forgetting_quality(got, 32),
                             metrics.forgetting_quality(want, 32), atol=0.05)
  with pytest.raises(ValueError, match="max_thresholds"):
    jax.jit(metrics.per_example_epsilons)(u, r)


@pytest.mark.optimised
def test_layer_distance_is_relative_per_layer_and_traceable():
  ref = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
         "head": {"kernel": 2.0 * jnp.ones((4, 2)), "bias": jnp.ones(2)}}
  moved = {"Dense_0": {"kernel": 1.5 * jnp.ones((3, 4)), "bias": jnp.zeros(4)}, "head": ref["head"]}
  d = metrics.layer_distance(moved, ref)
  assert list(d) == ["Dense_0", "head"]
  np.testing.assert_allclose([float(d["Dense_0"]), float(d["head"])], [0.5, 0.0], atol=1e-6)
  np.testing.assert_allclose(float(jax.jit(metrics.mean_layer_distance)(moved, ref)), 0.25,
                             atol=1e-6)
  with pytest.raises(ValueError, match="layers differ"):
    metrics.layer_distance({"a": jnp.ones(2)}, {"b": jnp.ones(2)})


def test_epsilons_of_widely_spread_statistics_fit_in_memory():
  """A method that spreads margins over thousands of units asks for millions of thresholds
  (⌈100·range⌉): the grid is searched, not compared against every model at once, and the
  examples are chunked by the grid's length (a 64-model population once asked for 342 GB)."""
  from reference_epsilons import per_example_epsilons as reference
  rng = np.random.default_rng(1)
  u, r = rng.normal(0, 3000, (64, 2)), rng.normal(500, 3000, (64, 2))
  with jax.enable_x64(True):
    got = np.asarray(metrics.per_example_epsilons(u, r))
  np.testing.assert_allclose(got, reference(u, r), rtol=1e-12)
