"""The per-example ε as the competition's scoring code computes it: a Python loop over
examples in float64 NumPy. The test reference for the vectorised `metrics.per_example_epsilons`
(this file is the project's earlier implementation, kept only to check against)."""

import math

import numpy as np

EPS_CAP = 50.0


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


def per_example_epsilons(unlearned, retrained, delta: float = 1e-5) -> np.ndarray:
  """Per-example ε of the NeurIPS 2023 unlearning competition, from statistics [N, S].

  Positive = the population with the larger median. If the smaller range of the two is
  under 1% of the larger, ε_s = 50. Otherwise two attack families: thresholds t on
  linspace(min, max, ⌈100·range⌉) (positive when φ ≥ t) and intervals [l, r] around the
  narrower population A (400 right edges on [max A − 2, max A + 2], for each 400 left
  edges on [r − w − 2, r − w + 2]). Per attack FPR/FNR over the N models; ε = ∞ if both are
  0, attacks with exactly one 0 skipped, else max(0, ln(1−δ−FPR) − ln FNR,
  ln(1−δ−FNR) − ln FPR); ε_s = max over attacks, clipped to [0, 50].
  Ideal: 0 (the populations are indistinguishable). Returns [S].
  """
  u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
  if u.ndim != 2 or u.shape[1] != r.shape[1]:
    raise ValueError(f"expected [N, S] statistics with the same S; got {u.shape}, {r.shape}")
  return np.asarray([_example_epsilon(u[:, s], r[:, s], delta) for s in range(u.shape[1])])


