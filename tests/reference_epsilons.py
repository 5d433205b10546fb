"""An independent float64 NumPy rendering of the per-example ε of the NeurIPS 2023 Machine
Unlearning competition (Triantafillou et al., "Are we making progress in unlearning?
Findings from the first NeurIPS unlearning competition", 2024; the rule as its scoring code
applies it), written from the published definition, not from the library: every attack's
error rates are counted by direct comparison of the N values with the attack's bounds (no
sorting, no searchsorted), one attack family at a time.

The rule, per example s, with U and R the two populations of N_U and N_R values:
1. Positive = the population with the larger median (U on a tie).
2. If the smaller of the two ranges (max - min) is under 1% of the larger: ε_s = 50.
3. Thresholds: t on linspace(min, max of both, ⌈100·(max - min)⌉); the attack says
   "positive" when φ ≥ t.
4. Intervals around A, the population with the smaller range w (U on a tie): 400 right
   edges r on linspace(max A - 2, max A + 2), for each 400 left edges l = r + d,
   d on linspace(-w - 2, -w + 2); the attack says "A" when l ≤ φ ≤ r.
5. Per attack FPR and FNR over the models; any attack with both 0 gives ε = ∞; attacks
   with exactly one 0 are skipped; otherwise ε = max(0, ln(1 - δ - FPR) - ln FNR,
   ln(1 - δ - FNR) - ln FPR), a term whose argument is ≤ 0 dropped.
6. ε_s = max over all attacks, clipped to [0, 50].
"""

import math

import numpy as np

CAP = 50.0
EDGES = 400


def _family_epsilon(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> float:
  fpr, fnr = fpr.ravel(), fnr.ravel()
  if np.any((fpr == 0.0) & (fnr == 0.0)):
    return math.inf
  keep = (fpr > 0.0) & (fnr > 0.0)
  fpr, fnr = fpr[keep], fnr[keep]
  terms = [0.0]
  for a, b in ((fpr, fnr), (fnr, fpr)):       # ln(1 - δ - a) - ln b where 1 - δ - a > 0
    ok = 1.0 - delta - a > 0.0
    if np.any(ok):
      terms.append(float(np.max(np.log(1.0 - delta - a[ok]) - np.log(b[ok]))))
  return max(terms)


def example_epsilon(u: np.ndarray, r: np.ndarray, delta: float = 1e-5) -> float:
  u, r = np.asarray(u, np.float64), np.asarray(r, np.float64)
  range_u, range_r = u.max() - u.min(), r.max() - r.min()
  if min(range_u, range_r) < 0.01 * max(range_u, range_r):
    return CAP
  pos, neg = (u, r) if np.median(u) >= np.median(r) else (r, u)
  lo, hi = min(u.min(), r.min()), max(u.max(), r.max())
  t = np.linspace(lo, hi, int(math.ceil(100 * (hi - lo))))[:, None]       # [T, 1]
  fpr = (neg[None, :] >= t).mean(axis=1)     # negatives called positive
  fnr = (pos[None, :] < t).mean(axis=1)      # positives called negative
  eps = _family_epsilon(fpr, fnr, delta)
  a, b = (u, r) if range_u <= range_r else (r, u)
  w = a.max() - a.min()
  rights = np.linspace(a.max() - 2, a.max() + 2, EDGES)
  offsets = np.linspace(-w - 2, -w + 2, EDGES)
  for right in rights:
    lefts = right + offsets                                               # [400]
    inside_a = (a[None, :] >= lefts[:, None]) & (a[None, :] <= right)       # [400, N]
    inside_b = (b[None, :] >= lefts[:, None]) & (b[None, :] <= right)
    eps = max(eps, _family_epsilon(inside_b.mean(axis=1), 1.0 - inside_a.mean(axis=1), delta))
    if math.isinf(eps):
      break
  return float(min(eps, CAP))


def per_example_epsilons(unlearned, retrained, delta: float = 1e-5) -> np.ndarray:
  """ε_s for statistics [N, S] of the two populations; returns [S]."""
  u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
  assert u.ndim == r.ndim == 2 and u.shape[1] == r.shape[1], (u.shape, r.shape)
  return np.asarray([example_epsilon(u[:, s], r[:, s], delta) for s in range(u.shape[1])])
