"""Membership attacks: SalUn's MIA-efficacy, LiRA and U-LiRA. Host-side NumPy/scikit-learn,
callable from traced code through `host.host_metric` (a `jax.pure_callback`)."""

from __future__ import annotations


import numpy as np

from unlearn_jax.metrics.host import ROC, SCALAR, host_metric
from unlearn_jax.metrics.population import _gauss_logpdf


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _feature(logits, labels, feature):
  p = _softmax64(logits)
  if feature == "confidence":
    return np.take_along_axis(p, np.asarray(labels)[:, None], axis=-1)
  if feature == "entropy":
    return -np.sum(p * np.log(np.maximum(p, 1e-45)), axis=-1, keepdims=True)
  raise ValueError(f"feature={feature!r} is unknown; allowed: confidence, entropy")


@host_metric(SCALAR)
def mia_efficacy(retain_logits, retain_labels, test_logits, test_labels, forget_logits,
                 forget_labels, feature: str = "confidence") -> float:
  """SalUn's MIA-efficacy: the fraction of the forget set an attacker calls non-member.

  An SVC (RBF kernel, C = 3, γ = 1/d, no feature scaling) is trained on the true-class
  confidence p_y (or the prediction entropy, `feature="entropy"`): label 1 for |test|
  retain examples (members), 0 for the test examples; applied to D_f,
  efficacy = mean(prediction == 0). Inputs: logits [n, C] and labels [n] of retain, test
  and forget. Returns a scalar. Host scikit-learn (under `jit` via `jax.pure_callback`).
  Ideal: the retrained model's value (for class forgetting ≈ 1, for random forgetting
  ≈ 1 − its generalisation-gap signal).
  """
  from sklearn.svm import SVC
  n = min(len(test_labels), len(retain_labels))
  x = np.concatenate([_feature(retain_logits[:n], retain_labels[:n], feature),
                      _feature(test_logits[:n], test_labels[:n], feature)])
  y = np.concatenate([np.ones(n), np.zeros(n)])
  clf = SVC(C=3, kernel="rbf", gamma="auto").fit(x, y)
  return float(np.mean(clf.predict(_feature(forget_logits, forget_labels, feature)) == 0))


@host_metric(ROC)
def roc_summary(scores_pos, scores_neg) -> dict:
  """AUC, best balanced accuracy, and TPR at 0.1% / 1% FPR of 'positive when score ≥ t'.

  Inputs: scores of positives [P] and negatives [Q] (any shape, flattened). Returns a dict
  of scalars. Ideal for an attack on forgotten examples: AUC 0.5, TPRs at their FPR."""
  pos, neg = np.ravel(scores_pos), np.ravel(scores_neg)
  thresholds = np.unique(np.concatenate([pos, neg, [np.inf]]))
  tpr = 1 - np.searchsorted(np.sort(pos), thresholds, "left") / pos.size
  fpr = 1 - np.searchsorted(np.sort(neg), thresholds, "left") / neg.size
  order = np.argsort(fpr)
  auc = float(np.trapezoid(tpr[order], fpr[order])) if hasattr(np, "trapezoid") else \
      float(np.trapz(tpr[order], fpr[order]))
  at = lambda limit: float(np.max(np.where(fpr <= limit, tpr, 0.0)))
  return {"auc": auc, "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
          "tpr_at_0.1%_fpr": at(0.001), "tpr_at_1%_fpr": at(0.01)}


def _fit(stats, mask):
  """Per example: median and std of the statistic over the models where mask is True."""
  s = np.where(mask, stats, np.nan)
  return np.nanmedian(s, axis=0), np.nanstd(s, axis=0)


@host_metric(ROC)
def lira(shadow_stats, shadow_in, target_stats, target_in, online: bool = True) -> dict:
  """LiRA (Carlini et al. 2022), per example over shadow models.

  `shadow_stats` [M, S]: the statistic (logit-scaled confidence) of M shadow models, each
  trained on a random half of the data; `shadow_in` [M, S]: whether model m trained on
  example s. Per example, Gaussians fitted to IN and OUT (median as the mean). Score of
  a target model's φ: online log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out); offline
  −log N(φ; μ_out, σ_out) (how unlikely under OUT only). `target_stats`, `target_in`
  [T, S]. Returns AUC, balanced accuracy and TPR at 0.1% / 1% FPR over all (target,
  example) pairs. Ideal for a forgotten example: chance (AUC 0.5).
  """
  stats, mask = np.asarray(shadow_stats, np.float64), np.asarray(shadow_in, bool)
  mu_out, sd_out = _fit(stats, ~mask)
  score = -_gauss_logpdf(np.asarray(target_stats, np.float64), mu_out, sd_out)
  if online:
    mu_in, sd_in = _fit(stats, mask)
    score = _gauss_logpdf(np.asarray(target_stats, np.float64), mu_in, sd_in) - \
        _gauss_logpdf(np.asarray(target_stats, np.float64), mu_out, sd_out)
  member = np.asarray(target_in, bool)
  return roc_summary.host(score[member], score[~member])


@host_metric(lambda *s: {**ROC(), "accuracy": ()})
def ulira(unlearned_shadow, retrained_shadow, target_stats, target_unlearned) -> dict:
  """U-LiRA (Hayes et al. 2024): can an attacker tell "trained on x, then unlearned" from
  "never trained on x"?

  Per forget example, Gaussians (mean, std) of the statistic over unlearned shadow models
  [M_u, S] and over retrained shadow models [M_r, S]; held-out target models [T, S], half
  unlearned (`target_unlearned` [T] bool), are scored by the log likelihood ratio
  log N(φ; U) − log N(φ; R). Returns `accuracy` (predict unlearned when the ratio > 0,
  over all target × example pairs), and the ROC summary. Ideal: accuracy 0.5.
  """
  u, r = np.asarray(unlearned_shadow, np.float64), np.asarray(retrained_shadow, np.float64)
  t = np.asarray(target_stats, np.float64)
  lr = _gauss_logpdf(t, u.mean(0), u.std(0)) - _gauss_logpdf(t, r.mean(0), r.std(0))
  is_u = np.broadcast_to(np.asarray(target_unlearned, bool)[:, None], lr.shape)
  out = roc_summary.host(lr[is_u], lr[~is_u])
  out["accuracy"] = float(np.mean((lr > 0) == is_u))
  return out
