"""Output-distribution metrics of the bad-teacher paper (Chundawat et al. 2023) and Avg. Gap."""

from __future__ import annotations

import numpy as np

from unlearn_jax.metrics.attacks import _softmax64


def _js_rows(p, q):
  """Textbook Jensen–Shannon divergence per row (natural log): ½KL(p‖m) + ½KL(q‖m)."""
  m = (p + q) / 2
  kl = lambda a, b: np.sum(np.where(a > 0, a * (np.log(np.maximum(a, 1e-300)) -
                                                np.log(np.maximum(b, 1e-300))), 0.0), -1)
  return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def zrf(model_logits, random_logits, compat: bool = False) -> float:
  """Zero Retrain Forgetting: 1 − mean_x JS(P_model(x), P_random(x)) over D_f.

  P_random: a randomly initialised net of the same architecture. Textbook JS by
  default; `compat=True` reproduces the reference code, ½·mean(m·(ln m − ln p)) +
  ½·mean(m·(ln m − ln q)) with the mean over all n·C elements (KL(m‖·) order, divided by C).
  Ideal: the retrained model's value (close to 1 = as uninformative as a random net).
  """
  p, q = _softmax64(model_logits), _softmax64(random_logits)
  if compat:
    m = (p + q) / 2
    term = lambda a: np.mean(m * (np.log(m) - np.log(np.maximum(a, 1e-300))))
    return float(1 - (0.5 * term(p) + 0.5 * term(q)))
  return float(1 - np.mean(_js_rows(p, q)))


def js_to_retrain(unlearned_logits, retrained_logits) -> float:
  """mean_x JS(P_unlearned(x), P_retrained(x)) over D_f. Ideal: 0."""
  return float(np.mean(_js_rows(_softmax64(unlearned_logits), _softmax64(retrained_logits))))


def activation_distance(logits_a, logits_b) -> float:
  """mean_x ‖softmax(M_a(x)) − softmax(M_b(x))‖₂ over D_f (M_b = retrained). Ideal: 0."""
  return float(np.mean(np.linalg.norm(_softmax64(logits_a) - _softmax64(logits_b), axis=-1)))


GAP_KEYS = ("unlearn_acc", "retain_acc", "test_acc", "mia_efficacy")


def avg_gap(unlearned: dict, retrained: dict) -> float:
  """Avg. Gap (SalUn): mean over {UA = 1 − FA, RA, TA, MIA-efficacy} of |m − m_retrain|, in
  percentage points. Dicts may give `forget_acc` instead of `unlearn_acc`. Ideal: 0."""
  def get(d, k):
    if k == "unlearn_acc" and k not in d:
      return 1.0 - d["forget_acc"]
    return d[k]
  return float(np.mean([100 * abs(get(unlearned, k) - get(retrained, k)) for k in GAP_KEYS]))
