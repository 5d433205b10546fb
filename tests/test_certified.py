"""Certified removal of a logistic head (Guo et al., ICML 2020; `unlearn_jax.certified` and
the `certified_head` method): the Newton removal equals refitting without the removed
points; the residual bound only grows and spends the budget into a refit; bad budgets are
clear errors; the method runs on a real model and carries its state across requests."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import certified as cr

LAM = 1e-3


@pytest.fixture(scope="module")
def digits_features(digits_mlp):
  """Penultimate features of a digits MLP trained for 5 epochs, and the labels."""
  return digits_mlp


def _numpy_fit(x, s, lam, b, iters=60):
  """The paper's binary objective Σ log(1+exp(−s wᵀx)) + λn/2‖w‖² + bᵀw minimised by
  Newton's method in float64 NumPy (the reference, independent of the library)."""
  x, s, b = (np.asarray(a, np.float64) for a in (x, s, b))
  n, d = x.shape
  w = np.zeros(d)
  for _ in range(iters):
    z = s * (x @ w)
    p = 1 / (1 + np.exp(z))                       # σ(−z)
    grad = x.T @ (-s * p) + lam * n * w + b
    hess = (x * (p * (1 - p))[:, None]).T @ x + lam * n * np.eye(d)
    w = w - np.linalg.solve(hess, grad)
  return w


def test_the_fit_is_the_papers_objective_minimiser(digits_features):
  _, _, _, feats, y = digits_features
  x = cr.scaled_features(feats, cr.feature_scale(feats))[:400]
  labels = y[:400]
  noise = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (10, x.shape[1]))
  w = cr.fit(x, labels, 10, LAM, noise, steps=40)
  for c in (0, 3, 9):
    s = np.where(np.asarray(labels) == c, 1.0, -1.0)
    np.testing.assert_allclose(np.asarray(w[c]), _numpy_fit(x, s, LAM, noise[c]), atol=2e-4,
                               err_msg=f"one-vs-rest classifier {c}")
  assert float(jnp.max(jnp.linalg.norm(x, axis=1))) <= 1 + 1e-6, "features must lie in the unit ball"


@pytest.mark.integration   # long: refits for every removal
def test_newton_removal_equals_refitting_for_one_point_and_a_sequence(digits_features):
  """No perturbation, λ = 1e-3: one Newton step per removed point lands on the refit head
  to 1e-4, for one point and for five removed one after another."""
  _, _, _, feats, y = digits_features
  x = cr.scaled_features(feats, cr.feature_scale(feats))
  zero = jnp.zeros((10, x.shape[1]))
  w = cr.fit(x, y, 10, LAM, zero, steps=30)
  present = np.ones(len(y), bool)
  diffs = []
  for i in (5, 17, 300, 901, 1200):
    idx = np.flatnonzero(present)
    removed = jnp.asarray(idx == i)
    w, _ = cr.remove(w, x[idx], y[idx], removed, 10, LAM)
    present[i] = False
    refit = cr.fit(x, y, 10, LAM, zero, mask=jnp.asarray(present), steps=30)
    diffs.append(float(jnp.max(jnp.abs(w - refit))))
  assert diffs[0] < 1e-4, f"one removal: max |Newton − refit| = {diffs[0]:.2e}"
  assert max(diffs) < 1e-4, f"after each of five removals: {diffs}"


@pytest.mark.integration
def test_the_bound_grows_and_a_spent_budget_refits(digits_features):
  """Through the method: over a stream of one-point requests the accumulated bound never
  decreases until it passes the budget; then the head is refitted and the bound restarts."""
  ds, model, variables, _, y = digits_features
  x = jnp.asarray(ds.train_x)
  ctx = uj.MethodContext(model, num_classes=10, input_shape=ds.input_shape)
  # ε small enough that a handful of single-point removals spend the budget.
  unlearn = jax.jit(uj.certified_head(ctx, epsilon=0.02, sigma=1.0))
  present = np.ones(len(y), bool)
  bounds, refits, state = [], [], variables
  for k, i in enumerate(range(0, 240, 12)):
    present[i] = False
    keep = np.flatnonzero(present)
    data = uj.select_data(uj.certified_head, forget=(x[i:i + 1], y[i:i + 1]),
                          retain=(x[keep], y[keep]), ctx=ctx)
    state, aux = unlearn(state, data, jax.random.PRNGKey(k))
    bounds.append(float(aux["residual_bound"]))
    refits.append(int(aux["refits"]))
    assert float(aux["residual_bound"]) <= float(aux["residual_budget"]) + 1e-9
  assert refits[-1] >= 2, f"the budget was never spent: bounds {bounds}"
  for a, b, r0, r1 in zip(bounds, bounds[1:], refits, refits[1:]):
    if r1 == r0:
      assert b >= a, f"the bound decreased without a refit: {bounds}"
    else:
      assert b == 0.0, "a refit restarts the bound"
  noise = np.asarray(state["certified_head"]["noise"])
  assert np.all(noise != 0), "the perturbation is kept from the first call"


def test_the_budget_is_sigma_epsilon_over_c_per_classifier():
  eps, delta, sigma, classes = 2.0, 1e-5, 0.5, 10
  c = math.sqrt(2 * math.log(1.5 / (delta / classes)))
  assert cr.residual_budget(eps, delta, sigma, classes) == pytest.approx(
      sigma * (eps / classes) / c)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(epsilon=0.0), "epsilon=0.0 lies outside certified_head's bounds for epsilon: \\(0, inf\\)"),
    (dict(delta=1.0), "delta=1.0 lies outside certified_head's bounds for delta: \\(0, 1\\)"),
    (dict(lam=0.0), "lam=0.0 lies outside certified_head's bounds for lam: \\(0, inf\\)"),
    (dict(sigma=-1.0), "sigma=-1.0 lies outside certified_head's bounds for sigma: \\(0, inf\\)"),
])
def test_a_bad_budget_is_a_clear_error(kwargs, needle, digits_features):
  ds, model, *_ = digits_features
  ctx = uj.MethodContext(model, num_classes=10, input_shape=ds.input_shape)
  with pytest.raises(ValueError, match=needle):
    uj.certified_head(ctx, **kwargs)


def test_the_method_replaces_the_head_by_the_certified_one(digits_features):
  """On the digits MLP, 10% random forgetting: the model's logits are the certified head's
  one-vs-rest scores, its accuracy stays near the original's, and the aux is a certificate."""
  ds, model, variables, _, _ = digits_features
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  split = uj.make_split(uj.SplitSpec("random", 0.1), ds.train_y, ds.test_y, 10)
  ctx = uj.MethodContext(model, num_classes=10, input_shape=ds.input_shape)
  data = uj.select_data(uj.certified_head, forget=(x[split.forget], y[split.forget]),
                        retain=(x[split.retain], y[split.retain]), ctx=ctx)
  out, aux = jax.jit(uj.certified_head(ctx))(variables, data, jax.random.PRNGKey(3))
  state = out["certified_head"]
  feats = model.features(variables, x)[1]
  chex.assert_trees_all_close(model.logits(out, x), cr.scores(state["weights"], feats,
                                                               state["scale"]), atol=1e-4)
  ta = uj.accuracy(model.logits(out, jnp.asarray(ds.test_x)), jnp.asarray(ds.test_y))
  assert float(ta) > 0.9, f"test accuracy of the certified head {float(ta):.3f}"
  assert float(aux["certified_epsilon"]) == 1.0 and float(aux["residual_bound"]) <= float(
      aux["residual_budget"])


def _empirical_epsilon(t_a, t_b, delta, min_count=50):
  """The largest ε a threshold test on the statistic finds between samples A and B at
  `delta` (both tails, both directions), with its binomial sampling error at the
  maximising threshold: (ε̂, 2 standard errors)."""
  n = len(t_a)
  best, slack = 0.0, 0.0
  for tau in np.quantile(np.concatenate([t_a, t_b]), np.linspace(0.01, 0.99, 99)):
    for pa, pb in (((t_a > tau).mean(), (t_b > tau).mean()),
                   ((t_a <= tau).mean(), (t_b <= tau).mean())):
      for p, q in ((pa, pb), (pb, pa)):
        if q * n < min_count or p - delta <= 0:
          continue
        eps = math.log((p - delta) / q)
        if eps > best:
          best = eps
          slack = 2 * math.sqrt((1 - p) / (n * p) + (1 - q) / (n * q))
  return best, slack


@pytest.mark.integration   # long: an attack over many refits
def test_the_stated_epsilon_holds_against_a_likelihood_ratio_attack(digits_features):
  """Heads on the digits MLP's features (300 examples, 31 principal components), one
  one-vs-rest classifier: the released head (fit with the perturbation, then the Newton
  removal of one example) against the head fitted without that example, 4,000 noise draws
  each (vmapped), attacked by the likelihood-ratio statistic of the two noise-free heads.
  σ is what the certificate asks for ε = 1 (σ = c·bound/ε): the attack's ε̂ stays within
  ε plus its sampling error. The control, the head that was never unlearned, is far
  outside it: the attack is strong enough to see a real difference."""
  _, _, _, feats, y = digits_features
  f = np.asarray(feats[:300], np.float64)
  f = f - f.mean(0)
  comps = np.linalg.svd(f, full_matrices=False)[2][:31]
  x = cr.scaled_features(jnp.asarray(f @ comps.T, jnp.float32),
                         cr.feature_scale(jnp.asarray(f @ comps.T, jnp.float32)))
  i, cls = 7, int(y[7])
  s = jnp.where(y[:300] == cls, 1.0, -1.0)
  removed = jnp.arange(300) == i
  eps, delta = 1.0, 1e-3
  zero = jnp.zeros(x.shape[1])
  w_a0, bound = cr.remove_binary(cr.fit_binary(x, s, LAM, zero), x, s, removed, LAM)
  w_b0 = cr.fit_binary(x, s, LAM, zero, mask=~removed)
  sigma = float(bound) * math.sqrt(2 * math.log(1.5 / delta)) / eps
  assert cr.residual_budget(eps, delta, sigma, 1) == pytest.approx(float(bound), rel=1e-5)

  released = jax.jit(jax.vmap(lambda b: cr.remove_binary(cr.fit_binary(x, s, LAM, b), x, s,
                                                         removed, LAM)[0]))
  never_unlearned = jax.jit(jax.vmap(lambda b: cr.fit_binary(x, s, LAM, b)))
  retrained = jax.jit(jax.vmap(lambda b: cr.fit_binary(x, s, LAM, b, mask=~removed)))
  noise = sigma * jax.random.normal(jax.random.PRNGKey(11), (3, 4000, x.shape[1]))
  _, hess = cr._grad_hess(w_b0, x, s, LAM, zero, (~removed).astype(x.dtype))
  direction = hess @ hess @ (w_a0 - w_b0)       # the Gaussian LR test: Σ⁻¹μ with Σ ∝ H⁻²
  stat = lambda w: np.asarray(w @ direction, np.float64)
  eps_hat, slack = _empirical_epsilon(stat(released(noise[0])), stat(retrained(noise[1])),
                                      delta)
  assert eps_hat <= eps + slack, f"empirical ε {eps_hat:.3f} > stated {eps} + {slack:.3f}"
  ctl_direction = hess @ hess @ (cr.fit_binary(x, s, LAM, zero) - w_b0)
  ctl = lambda w: np.asarray(w @ ctl_direction, np.float64)
  ctl_hat, ctl_slack = _empirical_epsilon(ctl(never_unlearned(noise[2])),
                                          ctl(retrained(noise[1])), delta)
  assert ctl_hat > eps + ctl_slack, (
      f"the attack cannot tell the never-unlearned head apart (ε̂ {ctl_hat:.3f}): too weak")
  print(f"certified_head, ε = {eps}, δ = {delta}: empirical ε̂ = {eps_hat:.3f} ± {slack:.3f}; "
        f"never unlearned: ε̂ = {ctl_hat:.3f}")
