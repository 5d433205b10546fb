"""Output-distribution metrics of the bad-teacher paper (Chundawat et al. 2023) and Avg. Gap.

`jax.numpy` functions of logits [n, C]: they run under `jit` and `vmap` (float32, or float64
with x64 enabled: tests check float32 against float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _probs(logits):
  return jax.nn.softmax(jnp.asarray(logits), axis=-1)


def _kl_rows(a, b):
  """Σ_c a_c (ln a_c − ln b_c) per row, with 0·ln 0 = 0."""
  tiny = jnp.finfo(a.dtype).tiny
  return jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.maximum(a, tiny)) -
                                       jnp.log(jnp.maximum(b, tiny))), 0.0), axis=-1)


def _js_rows(p, q):
  """Textbook Jensen–Shannon divergence per row (natural log): ½KL(p‖m) + ½KL(q‖m)."""
  m = (p + q) / 2
  return 0.5 * _kl_rows(p, m) + 0.5 * _kl_rows(q, m)


def zrf(model_logits, random_logits, compat: bool = False):
  """Zero Retrain Forgetting: 1 − mean_x JS(P_model(x), P_random(x)) over D_f.

  Inputs: logits [n, C] of the model and of a randomly initialised net of the same
  architecture on D_f. Textbook JS by default; `compat=True` reproduces the reference code,
  ½·mean(m·(ln m − ln p)) + ½·mean(m·(ln m − ln q)) with the mean over all n·C elements
  (KL(m‖·) order, divided by C). Returns a scalar. Ideal: the retrained model's value
  (close to 1 = as uninformative as a random net).
  """
  p, q = _probs(model_logits), _probs(random_logits)
  if compat:
    m = (p + q) / 2
    tiny = jnp.finfo(p.dtype).tiny
    term = lambda a: jnp.mean(m * (jnp.log(m) - jnp.log(jnp.maximum(a, tiny))))
    return 1 - (0.5 * term(p) + 0.5 * term(q))
  return 1 - jnp.mean(_js_rows(p, q))


def js_to_retrain(unlearned_logits, retrained_logits):
  """mean_x JS(P_unlearned(x), P_retrained(x)) over D_f; logits [n, C]. Ideal: 0."""
  return jnp.mean(_js_rows(_probs(unlearned_logits), _probs(retrained_logits)))


def activation_distance(logits_a, logits_b):
  """mean_x ‖softmax(M_a(x)) − softmax(M_b(x))‖₂ over D_f (M_b = retrained); logits
  [n, C]. Ideal: 0."""
  return jnp.mean(jnp.linalg.norm(_probs(logits_a) - _probs(logits_b), axis=-1))


GAP_KEYS = ("unlearn_acc", "retain_acc", "test_acc", "mia_efficacy")


def avg_gap(unlearned: dict, retrained: dict):
  """Avg. Gap (SalUn): mean over {UA = 1 − FA, RA, TA, MIA-efficacy} of |m − m_retrain|, in
  percentage points. Dicts of scalars (fractions in [0, 1]) may give `forget_acc` instead
  of `unlearn_acc`. Ideal: 0."""
  def get(d, k):
    if k == "unlearn_acc" and k not in d:
      return 1.0 - jnp.asarray(d["forget_acc"])
    return jnp.asarray(d[k])
  return jnp.mean(jnp.stack([100 * jnp.abs(get(unlearned, k) - get(retrained, k))
                             for k in GAP_KEYS]))
