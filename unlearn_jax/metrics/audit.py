"""Audits with a guarantee: an ε lower bound, held with a stated confidence, from an attack
that tells "trained on x, then unlearned" from "never trained on x".

An (ε, δ) guarantee bounds every test between two neighbouring outcomes: for any attack,
FPR + e^ε·FNR ≥ 1 − δ and FNR + e^ε·FPR ≥ 1 − δ (Kairouz, Oh & Viswanath, "The
Composition Theorem for Differential Privacy", ICML 2015). An attack's measured error rates
therefore give ε ≥ max(ln((1 − δ − FPR)/FNR), ln((1 − δ − FNR)/FPR)); with Clopper-Pearson
upper bounds on FPR and FNR in place of the measured rates, the bound holds with
probability at least 1 − α (Jagielski, Ullman & Oprea, "Auditing Differentially Private
Machine Learning: How Private is Private SGD?", NeurIPS 2020). The threshold is chosen on
one part of the scores and the bound counted on the other (choosing it on the counted
scores would void the guarantee), as jax-privacy's auditing does with its `Split`
strategy. Host-side NumPy/SciPy: call on concrete arrays.
"""

from __future__ import annotations

import math

import numpy as np


def clopper_pearson_upper(count: int, total: int, alpha: float) -> float:
  """The one-sided (1 − α) Clopper-Pearson upper bound on a binomial rate seen as `count`
  of `total`: the p with P(Binomial(total, p) ≤ count) = α, i.e. the (1 − α) quantile of
  Beta(count + 1, total − count); 1 when count = total."""
  from scipy import stats
  count, total = int(count), int(total)
  if not 0 <= count <= total or total < 1:
    raise ValueError(f"count={count} of total={total}: need 0 ≤ count ≤ total, total ≥ 1")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha={alpha!r} must lie strictly between 0 and 1")
  if count == total:
    return 1.0
  return float(stats.beta.ppf(1 - alpha, count + 1, total - count))


def epsilon_lower_bound(false_positives: int, negatives: int, false_negatives: int,
                        positives: int, delta: float = 0.0, alpha: float = 0.05) -> dict:
  """ε lower bound from an attack's error counts (module docstring).

  `false_positives` of `negatives` (never-trained models called "trained") and
  `false_negatives` of `positives` (unlearned models called "never trained"). The two rates
  are bounded at α/2 each (Bonferroni), so the bound holds with probability ≥ 1 − α.
  Returns {"epsilon_lower_bound", "fpr_upper", "fnr_upper"}; the bound is 0 when the
  attack does no better than chance allows. Ideal for an unlearning method: 0 (no attack
  proves that the forgotten data left a trace)."""
  if not 0 <= delta < 1:
    raise ValueError(f"delta={delta!r} must lie in [0, 1)")
  fpr = clopper_pearson_upper(false_positives, negatives, alpha / 2)
  fnr = clopper_pearson_upper(false_negatives, positives, alpha / 2)
  candidates = [0.0]
  for a, b in ((fpr, fnr), (fnr, fpr)):
    if 1 - delta - a > 0 and b > 0:
      candidates.append(math.log((1 - delta - a) / b))
  return {"epsilon_lower_bound": max(candidates), "fpr_upper": fpr, "fnr_upper": fnr}


def audit_epsilon(scores_unlearned, scores_retrained, delta: float = 0.0, alpha: float = 0.05,
                  threshold_fraction: float = 0.5, seed: int = 0) -> dict:
  """ε lower bound of the attack "unlearned when score ≥ t" (module docstring).

  Scores of the attack statistic (e.g. the forget examples' logit-scaled confidence) on
  unlearned models [any shape] and on retrained ones. A random `threshold_fraction` of
  each (fixed `seed`) chooses t among 201 quantiles of its scores, the one whose bound is
  largest there; the rest is counted, so the bound keeps its guarantee. Returns
  `epsilon_lower_bound`'s dict plus "threshold" and the counts."""
  pos, neg = np.ravel(np.asarray(scores_unlearned, np.float64)), np.ravel(
      np.asarray(scores_retrained, np.float64))
  if pos.size < 4 or neg.size < 4:
    raise ValueError(f"audit_epsilon needs at least 4 scores of each population; got "
                     f"{pos.size} and {neg.size}")
  if not 0 < threshold_fraction < 1:
    raise ValueError(f"threshold_fraction={threshold_fraction!r} must lie strictly between "
                     "0 and 1")
  rng = np.random.default_rng(seed)
  pick = lambda v: rng.permutation(v.size) < round(threshold_fraction * v.size)
  pos_fit, neg_fit = pick(pos), pick(neg)
  fit_p, fit_n = pos[pos_fit], neg[neg_fit]
  # The threshold whose *bound* is largest on the fitting part: an extreme threshold with
  # no false positives there has an infinite empirical ε but no power on fresh scores.
  candidates = np.unique(np.quantile(np.concatenate([fit_p, fit_n]), np.linspace(0, 1, 201)))
  best, threshold = -1.0, float(np.median(np.concatenate([fit_p, fit_n])))
  for t in candidates:
    value = epsilon_lower_bound(int(np.sum(fit_n >= t)), fit_n.size, int(np.sum(fit_p < t)),
                                fit_p.size, delta, alpha)["epsilon_lower_bound"]
    if value > best:
      best, threshold = value, float(t)
  count_p, count_n = pos[~pos_fit], neg[~neg_fit]
  fp, fn = int(np.sum(count_n >= threshold)), int(np.sum(count_p < threshold))
  out = epsilon_lower_bound(fp, count_n.size, fn, count_p.size, delta, alpha)
  return {**out, "threshold": threshold, "false_positives": fp, "negatives": int(count_n.size),
          "false_negatives": fn, "positives": int(count_p.size)}
