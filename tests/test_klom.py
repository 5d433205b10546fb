"""KLOM (metrics.klom): the binned KL of margins between unlearned and oracle models."""

import chex
import jax
import numpy as np
import pytest

from unlearn_jax import metrics


def test_a_hand_computed_case():
  """Two bins over [0, 1]: p = (1/2, 1/2), q = (1/4, 3/4)."""
  u = np.array([0.0, 0.0, 1.0, 1.0])
  r = np.array([0.0, 1.0, 1.0, 1.0])
  want = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
  np.testing.assert_allclose(metrics.klom(u, r, bins=2, smoothing=0.0), want, rtol=1e-6)


def test_known_kl_between_gaussians():
  """KL(N(0,1) ‖ N(μ,1)) = μ²/2; with 20,000 models a side the binned estimate is close."""
  rng = np.random.default_rng(0)
  n = 20_000
  u = rng.normal(0.0, 1.0, (n, 3))
  r = rng.normal(0.0, 1.0, (n, 3)) + np.array([0.0, 1.0, 2.0])
  # 20 bins over the pooled range: the wider the range, the coarser the bins (−6% at μ=2).
  np.testing.assert_allclose(metrics.klom(u, r), [0.0, 0.5, 2.0], rtol=0.07, atol=0.01)
  assert float(metrics.klom(u, u)[0]) == 0.0
  far = metrics.klom(u, u + 1000.0)      # disjoint: ln(1/ε) − H(p), whatever N
  assert np.all((far > 8.0) & (far <= np.log(1e5)))


def test_runs_under_jit_and_vmap_and_names_bad_shapes():
  rng = np.random.default_rng(1)
  u, r = rng.normal(size=(16, 5)), rng.normal(size=(16, 5))
  chex.assert_trees_all_close(jax.jit(metrics.klom)(u, r), metrics.klom(u, r), rtol=1e-6)
  per_column = jax.vmap(metrics.klom, in_axes=(1, 1))(u, r)
  chex.assert_trees_all_close(per_column, metrics.klom(u, r), rtol=1e-6)
  pct = metrics.klom_percentiles(metrics.klom(u, r))
  assert set(pct) == {"p50", "p95"} and float(pct["p50"]) <= float(pct["p95"])
  with pytest.raises(ValueError, match=r"margins \[N, S\]"):
    metrics.klom(u, r[:, :3])
