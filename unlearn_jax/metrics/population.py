"""Per-example attacks over populations of models (N unlearned vs N retrained).

For every forget example s there are two samples of size N of a statistic: one from the
models the method unlearned, one from models retrained without s. The less an attacker
can tell them apart, the better the unlearning. Inputs are arrays [N, S] (statistics) or
[N, S, C] (logits).

The statistics (`logit_scaled_confidence`, `hinge`) and the scores (`forgetting_quality`,
`competition_score`) are `jax.numpy`: they run under `jit`/`vmap`, in float32, or in float64
inside `jax.enable_x64(True)` (what the evaluation does: the competition's thresholds are
placed on a grid of step 0.01 over φ, and φ near p_y ≈ 1 needs the precision; the tests
check the float32 path against float64). The per-example ε families (`per_example_epsilons`,
`eps_hat`) are float64 NumPy on the host, callable from traced code (`host.host_metric`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.metrics.host import host_metric

EPS_CAP = 50.0


def _true_and_others(logits, labels):
  z = jnp.asarray(logits)
  y = jnp.asarray(labels)
  onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
  return z_y, jnp.where(onehot, -jnp.inf, z)


def logit_scaled_confidence(logits, labels):
  """φ = ln p_y − ln Σ_{j≠y} p_j  ( = ln(p_y / (1 − p_y)) ), per example.

  Logits [..., C], labels [...] (broadcast against the logits' leading axes); returns [...].
  Computed as z_y − logsumexp_{j≠y} z_j, exact where p_y rounds to 1. Ideal: the retrained
  models' distribution of φ for the same example.
  """
  z_y, others = _true_and_others(logits, labels)
  return z_y - jax.nn.logsumexp(others, axis=-1)


def hinge(logits, labels):
  """h = z_y − max_{j≠y} z_j (the margin), per example; logits [..., C], labels [...].
  Ideal: as for retrained models."""
  z_y, others = _true_and_others(logits, labels)
  return z_y - jnp.max(others, axis=-1)


def _epsilon(fpr, fnr, delta):
  """ε of a set of attacks from their error rates: ∞ if one attack makes no error, attacks
  with exactly one zero rate skipped, else max(0, ln(1−δ−FPR) − ln FNR, ln(1−δ−FNR) − ln FPR)."""
  fpr, fnr = np.ravel(fpr), np.ravel(fnr)
  if np.any((fpr == 0) & (fnr == 0)):
    return math.inf
  ok = (fpr > 0) & (fnr > 0)
  if not np.any(ok):
    return 0.0
  fpr, fnr = fpr[ok], fnr[ok]
  with np.errstate(divide="ignore", invalid="ignore"):
    a = np.where(1 - delta - fpr > 0, np.log(np.maximum(1 - delta - fpr, 1e-300)) - np.log(fnr),
                 -np.inf)
    b = np.where(1 - delta - fnr > 0, np.log(np.maximum(1 - delta - fnr, 1e-300)) - np.log(fpr),
                 -np.inf)
  return float(max(0.0, np.max(a), np.max(b)))


def _example_epsilon(u, r, delta, num_right=400, num_left=400):
  pos, neg = (u, r) if np.median(u) >= np.median(r) else (r, u)
  ranges = np.ptp(u), np.ptp(r)
  if min(ranges) < 0.01 * max(ranges):
    return EPS_CAP
  lo, hi = min(u.min(), r.min()), max(u.max(), r.max())
  # Single thresholds: predict positive when φ ≥ t.
  t = np.linspace(lo, hi, int(math.ceil(100 * (hi - lo))))
  pos_s, neg_s = np.sort(pos), np.sort(neg)
  fpr = 1 - np.searchsorted(neg_s, t, "left") / neg.size
  fnr = np.searchsorted(pos_s, t, "left") / pos.size
  eps = _epsilon(fpr, fnr, delta)
  # Intervals: predict "A" (the population with the smaller range w) when l ≤ φ ≤ r.
  a, b = (u, r) if ranges[0] <= ranges[1] else (r, u)
  w = np.ptp(a)
  rights = np.linspace(a.max() - 2, a.max() + 2, num_right)
  lefts = rights[:, None] + np.linspace(-w - 2, -w + 2, num_left)[None, :]
  a_s, b_s = np.sort(a), np.sort(b)
  inside = lambda s: (np.searchsorted(s, rights[:, None], "right") -
                      np.searchsorted(s, lefts, "left")).clip(min=0)
  fnr_i = 1 - inside(a_s) / a.size       # A predicted not-A
  fpr_i = inside(b_s) / b.size           # B predicted A
  fpr_i = np.where(lefts <= rights[:, None], fpr_i, 0.0)
  fnr_i = np.where(lefts <= rights[:, None], fnr_i, 1.0)
  eps = max(eps, _epsilon(fpr_i, fnr_i, delta))
  return float(min(eps, EPS_CAP))


@host_metric(lambda u, r: (u[1],))
def per_example_epsilons(unlearned, retrained, delta: float = 1e-5) -> np.ndarray:
  """Per-example ε of the NeurIPS 2023 unlearning competition, from statistics [N, S].

  Positive = the population with the larger median. If the smaller range of the two is
  under 1% of the larger, ε_s = 50. Otherwise two attack families: thresholds t on
  linspace(min, max, ⌈100·range⌉) (positive when φ ≥ t) and intervals [l, r] around the
  narrower population A (400 right edges on [max A − 2, max A + 2], for each 400 left
  edges on [r − w − 2, r − w + 2]). Per attack FPR/FNR over the N models; ε = ∞ if both are
  0, attacks with exactly one 0 skipped, else max(0, ln(1−δ−FPR) − ln FNR,
  ln(1−δ−FNR) − ln FPR); ε_s = max over attacks, clipped to [0, 50].
  Ideal: 0 (the populations are indistinguishable). Returns [S]. Host NumPy (float64).
  """
  u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
  if u.ndim != 2 or u.shape[1] != r.shape[1]:
    raise ValueError(f"expected [N, S] statistics with the same S; got {u.shape}, {r.shape}")
  return np.asarray([_example_epsilon(u[:, s], r[:, s], delta) for s in range(u.shape[1])])


def forgetting_quality(epsilons, num_models: int, variant: str = "code"):
  """F = mean_s H(ε_s) over per-example ε [S]: 1 = every forget example indistinguishable
  from retraining, 0 = all fully exposed. Ideal: 1. `num_models` (N) and `variant` are static.

  `code` (the competition's scoring code): ε_max = ⌈ln(N − 1)⌉, bucket k = ⌊ε/0.5⌋,
  H = 2^−k for ε < ε_max, else 0. `kaggle` (its description): 13 bins of width 0.5 from
  0, H = 2/2^n for bin n = 1..13, 2^−12 beyond.
  """
  eps = jnp.asarray(epsilons)
  if variant == "code":
    eps_max = math.ceil(math.log(num_models - 1)) if num_models > 2 else 1
    k = jnp.floor(eps / 0.5)
    h = jnp.where(eps < eps_max, 2.0 ** -jnp.minimum(k, 1000), 0.0)
  elif variant == "kaggle":
    n = jnp.floor(eps / 0.5) + 1
    h = jnp.where(n <= 13, 2.0 / 2.0 ** jnp.minimum(n, 1000), 2.0 ** -12)
  else:
    raise ValueError(f"variant={variant!r} is unknown; allowed: code, kaggle")
  return jnp.mean(h)


def competition_score(epsilons, num_models: int, retain_acc_unlearned, retain_acc_retrained,
                      test_acc_unlearned, test_acc_retrained, variant: str = "code"):
  """F × (RA_U / RA_R) × (TA_U / TA_R), accuracies (any shape, e.g. [N]) averaged over the
  models. Ideal: 1 (retrain against itself scores ≈ 1)."""
  f = forgetting_quality(epsilons, num_models, variant)
  return (f * jnp.mean(jnp.asarray(retain_acc_unlearned)) / jnp.mean(jnp.asarray(retain_acc_retrained))
          * jnp.mean(jnp.asarray(test_acc_unlearned)) / jnp.mean(jnp.asarray(test_acc_retrained)))


def _gauss_logpdf(x, mu, sigma):
  sigma = np.maximum(sigma, 1e-8)
  return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)


def _eps_hat_example(hu, hr, delta):
  mu_u, sd_u, mu_r, sd_r = hu.mean(), hu.std(), hr.mean(), hr.std()
  score = lambda h: _gauss_logpdf(h, mu_u, sd_u) - _gauss_logpdf(h, mu_r, sd_r)
  su, sr = score(hu), score(hr)
  pos, neg = (su, sr) if np.median(su) >= np.median(sr) else (sr, su)
  thresholds = np.unique(np.concatenate([su, sr]))
  pos_s, neg_s = np.sort(pos), np.sort(neg)
  fpr = 1 - np.searchsorted(neg_s, thresholds, "left") / neg.size   # neg predicted pos (≥ t)
  fnr = np.searchsorted(pos_s, thresholds, "left") / pos.size       # pos predicted neg (< t)
  if np.any((fpr == 0) & (fnr == 0)):
    return math.inf
  keep = ~((fpr == 0) ^ (fnr == 0))
  fpr, fnr = fpr[keep], fnr[keep]
  if fpr.size == 0:
    return 0.0
  with np.errstate(invalid="ignore"):
    a = np.log(np.maximum(1 - delta - fpr + 1e-8, 1e-300)) - np.log(fnr + 1e-8)
    b = np.log(np.maximum(1 - delta - fnr + 1e-8, 1e-300)) - np.log(fpr + 1e-8)
  return float(max(0.0, np.max(a), np.max(b)))


@host_metric(lambda u, r, y: ((u[1],), ()))
def eps_hat(unlearned_logits, retrained_logits, labels, delta: float = 0.05):
  """ε̂ of seed 004 ("Forget with Precision"): a Gaussian likelihood-ratio attack per example.

  Statistic: the hinge. Per forget example, fit N(μ, σ) (population std) to the
  unlearned and to the retrained hinges; score all 2N by log N(h; μ_U, σ_U) −
  log N(h; μ_R, σ_R); positive = the population with the larger median score; sweep every
  threshold: ε = ∞ if one separates perfectly, thresholds with exactly one zero rate
  dropped, else ε = max over thresholds of ln(1−δ−FPR+1e-8) − ln(FNR+1e-8) and the
  symmetric term. Inputs: logits [N, S, C], labels [S]. Returns (ε per example [S],
  median ε). Ideal: 0. Host NumPy (float64).
  """
  with jax.enable_x64(True):
    hu = np.asarray(hinge(np.asarray(unlearned_logits, np.float64), np.asarray(labels)))
    hr = np.asarray(hinge(np.asarray(retrained_logits, np.float64), np.asarray(labels)))
  eps = np.asarray([_eps_hat_example(hu[:, s], hr[:, s], delta) for s in range(hu.shape[1])])
  return eps, float(np.median(eps))
