"""Certified unlearning by noisy SGD on a linear head over frozen features (Chien, Wang, Chen
& Li, "Certified Machine Unlearning via Noisy Stochastic Gradient Descent", NeurIPS 2024;
arXiv 2403.17105, "Stochastic Gradient Langevin Unlearning"; reference code
Graph-COM/SGD_unlearning).

The head is a multinomial logistic regression W ∈ R^{C×(d+1)} over features scaled into
the unit ball with a bias column (`certified.scaled_features`). Its objective is

    F(W; D) = (1/n) Σ_i ℓ(W x_i, y_i) + (λ/2) ‖W‖²,   ℓ = softmax cross-entropy,

which is m = λ strongly convex, L = 1/2 + λ smooth (the Hessian of ℓ in the logits is
diag(p) − ppᵀ, whose largest eigenvalue is at most 1/2, and ‖x‖ ≤ 1) and M = √2 Lipschitz
per example (‖∇_W ℓ‖ = ‖x‖ ‖p − e_y‖ ≤ √2). The authors' code uses one-vs-rest sigmoids
with clipped gradients and writes λ n for our λ; the multinomial loss has these constants
exactly, so nothing is clipped. Training and unlearning are the same process, projected
noisy mini-batch SGD with step η = 1/L:

    W ← Π_R( W − η ((1/b) Σ_{i∈B} ∇ℓ_i(W) + λ W) + √(2η) σ ξ ),   ξ ~ N(0, I),

over the n slots of the training set in batches of b, reshuffled every epoch; Π_R projects
onto the ball of radius R, by default √(2 log C / λ), which holds the minimiser of F
(λ/2 ‖W*‖² ≤ F(W*) ≤ F(0) = log C). A deleted example keeps its slot with a zero gradient
(the replacement neighbour the paper's bound is stated for; n stays fixed over a stream of
requests, and retraining without the examples is the same process on those slots).

The bound (the paper's converged, strongly convex case, as its code computes it): with
c = 1 − ηλ, the stationary laws of the process on neighbouring data sets are within
W∞ distance Z_B = 2ηM / (b (1 − c^{n/b})) per replaced example; K epochs of the process on
D' from the law on D reach Rényi divergence of order α at most α A with

    A = Z² (1 − c²) c^{2Kn/b} / (2 η σ² (1 − c^{2Kn/b})),

and (ε, δ) = (min_{1<α≤10⁵} α A + log(1/δ)/(α − 1), δ) (Mironov's conversion). Requests in
sequence: Z_s = Z_{s−1} c^{K_{s−1} n/b} + k_s Z_B for k_s examples, and K_s is the fewest
epochs whose ε meets the target. `sigma_for` solves the bound for σ given K epochs (the
authors search it by bisection; here it is closed form), `epochs_for` for K given σ.

What it assumes: the convex head above (so the theorem applies exactly) on a frozen body, and
a trained head whose law is the process's stationary law on D (the converged case). After T
training epochs from a data-independent start inside the ball, the synchronous coupling
leaves at most W∞ 2R c^{Tn/b} to stationarity (`burn_in_gap`); the bound does not add it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

SMOOTHNESS = 0.5            # λ_max(diag(p) − ppᵀ) ≤ 1/2, with ‖x‖ ≤ 1
LIPSCHITZ = math.sqrt(2.0)  # ‖x‖ ‖p − e_y‖ ≤ √2
MAX_ORDER = 1e5             # the largest Rényi order the conversion searches (the authors' bound)


def _exp(v):
  return math.exp(v) if isinstance(v, float) else jnp.exp(v)


class Process(NamedTuple):
  """The constants of the noisy SGD process on n slots in batches of b."""
  slots: int          # n: the training set's size rounded up to a multiple of b
  batch_size: int     # b
  lam: float          # λ = m, the strong convexity
  step: float         # η = 1 / L
  contraction: float  # c = 1 − η λ, per step

  @property
  def steps_per_epoch(self) -> int:
    return self.slots // self.batch_size

  @property
  def log_contraction(self) -> float:
    return math.log1p(-self.step * self.lam)


def decay_after(epochs, p: Process):
  """c^{K n/b}, the W∞ contraction of K epochs (K a number or traced), as exp of a float64
  constant times K: c is within 1e-3 of 1 for small λ, where c**(K n/b) in float32 would
  be off by 1e-4 of itself."""
  return _exp(float(p.log_contraction * p.steps_per_epoch) * (
      float(epochs) if isinstance(epochs, int) else epochs))


def process(num_examples: int, batch_size: int, lam: float) -> Process:
  """The constants for `num_examples` examples (padded with zero-gradient slots up to a
  multiple of `batch_size`), `batch_size` and λ."""
  if not (isinstance(batch_size, int) and 1 <= batch_size <= num_examples):
    raise ValueError(f"batch_size={batch_size!r} must be an int in [1, {num_examples}] (the "
                     "training set's size)")
  slots = -(-num_examples // batch_size) * batch_size
  step = 1.0 / (SMOOTHNESS + lam)
  return Process(slots, batch_size, float(lam), step, 1.0 - step * lam)


def distance_per_example(p: Process) -> float:
  """Z_B = 2 η M / (b (1 − c^{n/b})): the W∞ distance between the stationary laws on data
  sets that differ in one example."""
  return 2.0 * p.step * LIPSCHITZ / (p.batch_size * (1.0 - decay_after(1, p)))


def renyi_slope(distance, sigma, epochs, p: Process):
  """A with ε_α = α A after `epochs` epochs from W∞ distance `distance` (module docstring).
  Python floats in, a float out; traced values in, traced out."""
  decay = decay_after(epochs, p) ** 2
  return (distance ** 2 * (1.0 - p.contraction ** 2) * decay
          / (2.0 * p.step * sigma ** 2 * (1.0 - decay)))


def epsilon(slope, delta: float):
  """min over 1 < α ≤ 10⁵ of α A + log(1/δ)/(α − 1): at α − 1 = √(log(1/δ)/A), so
  A + 2√(A log(1/δ)) unless that α passes 10⁵."""
  log_inv = math.log(1.0 / delta)
  slope = jnp.asarray(slope, jnp.float32)
  order = jnp.minimum(1.0 + jnp.sqrt(log_inv / jnp.maximum(slope, 1e-30)), MAX_ORDER)
  return order * slope + log_inv / (order - 1.0)


def _slope_allowed(target: float, delta: float) -> float:
  """The largest A whose ε is at most `target` (the unclipped minimum: A + 2√(A L) = ε)."""
  log_inv = math.log(1.0 / delta)
  return (math.sqrt(log_inv + target) - math.sqrt(log_inv)) ** 2


def sigma_for(target: float, delta: float, distance: float, epochs: int, p: Process) -> float:
  """The smallest σ for which `epochs` epochs certify (target, δ) from W∞ distance
  `distance`."""
  unit = renyi_slope(float(distance), 1.0, int(epochs), p)   # A at σ = 1; A ∝ 1/σ²
  # 1e-5 above the exact solution, so that float32 arithmetic keeps ε(K) ≤ target.
  return math.sqrt(unit / _slope_allowed(target, delta)) * (1.0 + 1e-5)


def epochs_for(target: float, delta: float, distance, sigma, p: Process):
  """The fewest whole epochs (≥ 1) after which ε ≤ `target` from W∞ distance `distance`
  (traceable in `distance` and `sigma`): c^{2Kn/b} / (1 − c^{2Kn/b}) ≤ r solved for K."""
  allowed = _slope_allowed(target, delta)
  ratio = allowed * 2.0 * p.step * sigma ** 2 / (
      jnp.maximum(distance, 1e-30) ** 2 * (1.0 - p.contraction ** 2))
  steps = jnp.log(ratio / (1.0 + ratio)) / (2.0 * p.log_contraction)
  epochs = jnp.ceil(steps / p.steps_per_epoch - 1e-4)   # a K met exactly stays K
  return jnp.maximum(epochs, 1).astype(jnp.int32)


def default_radius(num_classes: int, lam: float) -> float:
  """√(2 log C / λ): the ball that holds the minimiser of F."""
  return math.sqrt(2.0 * math.log(num_classes) / lam)


def burn_in_gap(radius: float, train_epochs: int, p: Process) -> float:
  """2R c^{Tn/b}: the W∞ distance left between T training epochs and the stationary law."""
  return 2.0 * radius * decay_after(int(train_epochs), p)


def project(weights, radius: float):
  norm = jnp.linalg.norm(weights)
  return weights * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-30))


def initial(key, num_classes: int, dim: int, sigma: float, radius: float, lam: float):
  """A data-independent start: N(0, 2σ²/λ) per weight (the authors' start), projected."""
  w = jnp.sqrt(2.0 / lam) * sigma * jax.random.normal(key, (num_classes, dim))
  return project(w, radius)


def run(weights, x, labels, valid, epochs, key, sigma, radius: float, p: Process):
  """`epochs` epochs (traceable) of the noisy process from `weights` [C, d+1] over the rows
  of `x` [r, d+1] (r ≤ n; the slots past r are zero-gradient placeholders) where `valid`
  (the rows of deleted examples have a zero gradient). Returns the weights."""
  rows, c = x.shape[0], weights.shape[0]
  b, per_epoch = p.batch_size, p.steps_per_epoch
  onehot = jax.nn.one_hot(labels, c, dtype=x.dtype)
  live = valid.astype(x.dtype)
  noise_scale = math.sqrt(2.0 * p.step) * sigma

  def step(w, inputs):
    xb, yb, gate, noise = inputs
    probs = jax.nn.softmax(xb @ w.T, axis=-1)
    grad = ((probs - yb) * gate[:, None]).T @ xb / b + p.lam * w
    return project(w - p.step * grad + noise, radius), None

  def epoch(e, w):
    # The epoch's batches and noise drawn at once: the loop body is then only the step's
    # arithmetic (a few ops per step, not a gather and a draw; it matters for the
    # 10⁴-step loops of the defaults when XLA's optimisations are off, as in the tests).
    k_perm, k_noise = jax.random.split(jax.random.fold_in(key, e))
    order = jax.random.permutation(k_perm, p.slots).reshape(per_epoch, b)
    present = order < rows
    at = jnp.where(present, order, 0)
    gates = live[at] * present.astype(x.dtype)
    noise = noise_scale * jax.random.normal(k_noise, (per_epoch,) + w.shape, w.dtype)
    return jax.lax.scan(step, w, (x[at], onehot[at], gates, noise))[0]

  return jax.lax.fori_loop(0, epochs, epoch, weights)
