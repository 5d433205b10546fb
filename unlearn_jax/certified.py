"""Certified removal for a linear head on frozen features (Guo, Goldstein, Hannun & van der
Maaten, "Certified Data Removal from Machine Learning Models", ICML 2020).

The head is C one-vs-rest L2-regularised logistic regressions (the paper's theory is for a
binary loss with known smoothness; its reference code handles many classes one-vs-rest).
For class c, with s_i = +1 if y_i = c else −1 and features x_i (scaled so ‖x_i‖ ≤ 1, a
constant feature appended for the bias), the head minimises the perturbed objective

    L_b(w; D) = Σ_i ℓ(s_i wᵀx_i) + (λ n / 2) ‖w‖² + bᵀw,   ℓ(z) = log(1 + e^{−z}),

with b ~ N(0, σ² I). Removing a set R is one Newton step on what is left, D' = D \\ R:

    Δ = H'⁻¹ (Σ_{i∈R} ∇ℓ_i(w) + λ |R| w),   w ← w + Δ,
    H' = Σ_{i∈D'} ℓ''(s_i wᵀx_i) x_i x_iᵀ + λ n' I    (exact Hessian, Cholesky solve),

and the gradient residual ‖∇L_b(w; D')‖ is bounded by the data-dependent γ ‖X'Δ‖ ‖Δ‖ with
γ = 1/4 (ℓ'' is 1/4-bounded); the bounds of successive removals add up. The released head
is (ε, δ)-certified-removal while the sum stays under σ ε / c, c = √(2 log(1.5/δ)); past
that the head is refitted on D' (the sum starts again at 0). The C classifiers are released
together, so each gets ε/C and δ/C (basic composition): the whole head is (ε, δ).

Cost per removal: the Hessian on D' (n' d² per class) and a Cholesky solve (d³ / 3 per
class); d ≤ 1024 and C ≤ 100 are fine on a CPU. The certificate covers the head given the
frozen body and the feature scale; the body itself is not certified.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

GAMMA = 0.25   # sup |ℓ'''|-type constant of the logistic loss used by the paper's bound


class HeadState(NamedTuple):
  """What a certified head carries between removals (leading axis: the C classes)."""
  weights: jax.Array    # [C, d+1]: one-vs-rest weights over the scaled features and a bias
  noise: jax.Array      # [C, d+1]: the objective perturbation b
  bound: jax.Array      # [C]: the gradient-residual bound accumulated since the last fit
  scale: jax.Array      # []: features are divided by this (fixed at the first fit)
  refits: jax.Array     # []: how many times the budget was spent and the head refitted


def check_budget(epsilon: float, delta: float, lam: float, sigma: float) -> None:
  """ValueError naming the argument and what is allowed."""
  if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
    raise ValueError(f"epsilon={epsilon!r} must be a finite number > 0")
  if not (isinstance(delta, (int, float)) and 0 < delta < 1):
    raise ValueError(f"delta={delta!r} must lie in (0, 1)")
  if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
    raise ValueError(f"lam={lam!r} must be a finite number > 0 (the loss must be strongly "
                     "convex for the certificate)")
  if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma={sigma!r} must be a finite number > 0 (the perturbation is what "
                     "makes the removal certifiable)")


def residual_budget(epsilon: float, delta: float, sigma: float, num_classes: int) -> float:
  """σ ε' / c with ε' = ε/C, c = √(2 log(1.5 C/δ)): the largest accumulated bound for which
  every one-vs-rest classifier, and so the head, stays certified."""
  eps, dlt = epsilon / num_classes, delta / num_classes
  return sigma * eps / math.sqrt(2.0 * math.log(1.5 / dlt))


def _with_bias(features: jax.Array, scale, bias: bool = True) -> jax.Array:
  """[n, d] -> [n, d+1]: [features/scale, 1] / √2 (norm ≤ 1 when ‖features‖ ≤ scale);
  without `bias` (a head with no bias to carry the intercept) [n, d]: features/scale."""
  if not bias:
    return features / scale
  return jnp.concatenate([features / scale, jnp.ones((features.shape[0], 1), features.dtype)],
                         axis=1) / jnp.sqrt(2.0)


def scaled_features(features: jax.Array, scale, bias: bool = True) -> jax.Array:
  """[n, d] -> [n, d+1] (or [n, d] without `bias`): `_with_bias`, each row clipped to norm
  1 (the bound's assumption)."""
  x = _with_bias(features, scale, bias)
  norms = jnp.linalg.norm(x, axis=1, keepdims=True)
  return x / jnp.maximum(norms, 1.0)


def feature_scale(features: jax.Array) -> jax.Array:
  """The largest feature norm (so every training row has ‖x/scale‖ ≤ 1), at least 1e-6."""
  return jnp.maximum(jnp.max(jnp.linalg.norm(features, axis=1)), 1e-6)


def _signs(labels, num_classes):
  return jnp.where(labels[None, :] == jnp.arange(num_classes)[:, None], 1.0, -1.0)   # [C, n]


def _grad_hess(w, x, s, lam, noise, mask):
  """Gradient and Hessian of L_b(w) over the rows where `mask` (one class)."""
  z = s * (x @ w)
  g_rows = -s * jax.nn.sigmoid(-z) * mask
  n = jnp.sum(mask)
  grad = x.T @ g_rows + lam * n * w + noise
  curv = jax.nn.sigmoid(z) * jax.nn.sigmoid(-z) * mask
  hess = (x * curv[:, None]).T @ x + lam * n * jnp.eye(x.shape[1], dtype=x.dtype)
  return grad, hess


def _solve(hess, vec):
  chol = jax.scipy.linalg.cho_factor(hess, lower=True)
  return jax.scipy.linalg.cho_solve(chol, vec)


def fit_binary(x, signs, lam: float, noise, mask=None, steps: int = 25):
  """[d+1] minimiser of the binary L_b (labels `signs` ∈ {−1, +1}) over the rows of `x`
  where `mask`, by `steps` Newton iterations from 0 (the objective is strongly convex)."""
  mask = jnp.ones(x.shape[0], x.dtype) if mask is None else mask.astype(x.dtype)

  def newton(w, _):
    grad, hess = _grad_hess(w, x, signs, lam, noise, mask)
    return w - _solve(hess, grad), None

  return jax.lax.scan(newton, jnp.zeros(x.shape[1], x.dtype), None, length=steps)[0]


def remove_binary(w, x, signs, removed, lam: float):
  """`remove` for one binary classifier: (new w [d+1], the step's residual bound)."""
  keep, gone = (~removed).astype(x.dtype), removed.astype(x.dtype)
  z = signs * (x @ w)
  g_removed = x.T @ (-signs * jax.nn.sigmoid(-z) * gone) + lam * jnp.sum(gone) * w
  _, hess = _grad_hess(w, x, signs, lam, jnp.zeros_like(w), keep)
  delta = _solve(hess, g_removed)
  bound = GAMMA * jnp.linalg.norm((x @ delta) * keep) * jnp.linalg.norm(delta)
  return w + delta, bound


def fit(x, labels, num_classes: int, lam: float, noise, mask=None, steps: int = 25):
  """[C, d+1]: `fit_binary` of every one-vs-rest classifier (vmapped over the classes)."""
  return jax.vmap(lambda s, b: fit_binary(x, s, lam, b, mask, steps))(
      _signs(labels, num_classes), noise)


def remove(weights, x, labels, removed, num_classes: int, lam: float):
  """One Newton removal of the rows where `removed` ([n] bool) from a head fitted on the
  rows of `x` ([n, d+1]; rows removed earlier must not be passed). Returns (new weights
  [C, d+1], the step's residual bound [C]): `remove_binary` of every classifier."""
  return jax.vmap(lambda w, s: remove_binary(w, x, s, removed, lam))(
      weights, _signs(labels, num_classes))


def scores(weights, features, scale) -> jax.Array:
  """[n, C] one-vs-rest scores wᵀx of unscaled features (no clipping: prediction only)."""
  return _with_bias(features, scale) @ weights.T


def as_dense(weights, scale, bias: bool = True) -> dict:
  """The head as a Dense layer over the raw features: {"kernel": [d, C], "bias": [C]} with
  features @ kernel + bias == scores(weights, features, scale); without `bias` (weights
  fitted on `scaled_features(..., bias=False)`) {"kernel"} alone."""
  if not bias:
    return {"kernel": (weights / scale).T}
  w = weights / jnp.sqrt(2.0)
  return {"kernel": (w[:, :-1] / scale).T, "bias": w[:, -1]}
