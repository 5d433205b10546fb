"""Cheap population attacks on unlearning: RMIA and IAM, per (model, example) scores.

Both score a *target* model's output on an audited example against *reference* models
that never trained on it (for unlearning: retrained models), so the same function scores
unlearned targets and retrained targets; an attacker who cannot tell the two score
distributions apart (AUC 0.5, `roc_summary`) learns nothing from the unlearned model.
`jax.numpy`: both run under `jit` and `vmap`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy import special as jspecial

EULER_GAMMA = 0.5772    # the constant as the IAM reference code writes it


def true_class_probability(logits, labels):
  """p_y = softmax(z)_y per example; logits [..., C], labels broadcast against [...]."""
  z = jnp.asarray(logits)
  onehot = jnp.asarray(labels)[..., None] == jnp.arange(z.shape[-1])
  return jnp.exp(jnp.sum(jnp.where(onehot, z, 0.0), -1) - jspecial.logsumexp(z, axis=-1))


def rmia(target_probs, reference_probs, target_population_probs, reference_population_probs,
         offline_a: float = 0.3, gamma: float = 1.0):
  """RMIA, offline (Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024; privacytrustlab/ml_privacy_meter, `modules/mia/attacks/rmia.py`).

  For an audited example x and a population sample z (data no model trained on), with
  Pr(x | θ) the true-class probability:
    Pr(x) = ½(1 + a) · mean_r Pr(x | θ_r) + ½(1 − a)    (reference models θ_r, all OUT,
                                                         a: `offline_a`)
    LR(x) = Pr(x | θ) / Pr(x),     LR(z) likewise,
    Score(x; θ) = mean_z 1[LR(x) / LR(z) > γ].
  A high score says "θ trained on x". Inputs: `target_probs` [T, S] (T target models, S
  audited examples), `reference_probs` [R, S], `target_population_probs` [T, Z],
  `reference_population_probs` [R, Z]. Returns [T, S] in [0, 1]. Ideal for a forgotten
  example: scores distributed as on retrained targets.
  """
  tx, rx = jnp.asarray(target_probs), jnp.asarray(reference_probs)
  tz, rz = jnp.asarray(target_population_probs), jnp.asarray(reference_population_probs)
  if tx.ndim != 2 or rx.ndim != 2 or tz.ndim != 2 or rz.ndim != 2 or \
      tx.shape[0] != tz.shape[0] or rx.shape[0] != rz.shape[0] or \
      tx.shape[1] != rx.shape[1] or tz.shape[1] != rz.shape[1]:
    raise ValueError(f"rmia takes target [T, S], reference [R, S], target population [T, Z] "
                     f"and reference population [R, Z] probabilities; got {tx.shape}, "
                     f"{rx.shape}, {tz.shape}, {rz.shape}")
  prior = lambda ref: (1 + offline_a) / 2 * jnp.mean(ref, axis=0) + (1 - offline_a) / 2
  lr_x = tx / prior(rx)                                     # [T, S]
  lr_z = tz / prior(rz)                                     # [T, Z]
  return jnp.mean(lr_x[:, :, None] / lr_z[:, None, :] > gamma, axis=-1)


def bounded_gumbel_signal(probs, eps1: float = 1e-2, eps2: float = 1e-5):
  """IAM's signal: −ln(ε₁ − ln(ε₂ + p)), rescaled so that p = 0 maps to 0 and p = 1 to 1."""
  g = lambda p: -jnp.log(eps1 - jnp.log(eps2 + p))
  lo, hi = g(0.0), g(1.0)
  return (g(jnp.asarray(probs)) - lo) / (hi - lo)


def iam(target_probs, shadow_probs, fitted_probs, interpolations: int = 100,
        eps1: float = 1e-2, eps2: float = 1e-5):
  """IAM, offline with Gumbel fits (Wang, Li, Xiang, Cao & Wang, "Towards Lifecycle
  Unlearning Commitment Management: Measuring Sample-level Unlearning Completeness", USENIX
  Security 2025; Happy2Git/Unlearning_Inference_IAM, `interpolate_appro`): a per-example
  unlearning-completeness score from OUT shadow models (one is enough).

  With s(p) = `bounded_gumbel_signal`: the shadows' signals s_m(x) (never trained on x)
  and the fitted level f = mean of s over `fitted_probs` (the shadows' true-class
  probabilities on examples they trained on: how a trained-on example looks) are
  interpolated, I_k = s_m + α_k (f − s_m) for α_k = linspace(0, 1, K), K = `interpolations`.
  For k < K − 1 a Gumbel is fitted by moments (mean over shadows per example; one std over
  shadows and examples: β = √6·std/π, μ = mean − 0.5772·β), and
    completeness(x; θ) = 1 − Σ_{k<K−1} α_{k+1} · GumbelCDF(s_θ(x); μ_k, β_k) / Σ_{k≥1} α_k.
  1: x looks never trained on; 0: x looks fitted. Inputs: `target_probs` [T, S],
  `shadow_probs` [M, S], `fitted_probs` (any shape). Returns [T, S] in [0, 1]. Ideal for a
  forgotten example: as on retrained targets.
  """
  tp, sp = jnp.asarray(target_probs), jnp.asarray(shadow_probs)
  if tp.ndim != 2 or sp.ndim != 2 or tp.shape[1] != sp.shape[1]:
    raise ValueError(f"iam takes target [T, S] and shadow [M, S] probabilities; got "
                     f"{tp.shape} and {sp.shape}")
  if int(interpolations) < 2:
    raise ValueError(f"interpolations={interpolations!r} must be >= 2")
  signal = lambda p: bounded_gumbel_signal(p, eps1, eps2)
  target, shadows = signal(tp), signal(sp)                         # [T, S], [M, S]
  fitted = jnp.mean(signal(jnp.asarray(fitted_probs)))
  alphas = jnp.linspace(0.0, 1.0, int(interpolations))
  inter = shadows[None] + alphas[:, None, None] * (fitted - shadows[None])   # [K, M, S]
  mean = jnp.mean(inter, axis=1)[:-1]                                        # [K-1, S]
  std = jnp.std(inter, axis=(1, 2))[:-1]                                     # [K-1]
  beta = math.sqrt(6) * std / math.pi
  mu = mean - beta[:, None] * EULER_GAMMA
  beta = jnp.maximum(beta, jnp.finfo(mean.dtype).tiny)[:, None, None]
  cdf = jnp.exp(-jnp.exp(-(target[None] - mu[:, None, :]) / beta))          # [K-1, T, S]
  weights = alphas[1:]
  return 1 - jnp.tensordot(weights, cdf, axes=1) / jnp.sum(weights)
