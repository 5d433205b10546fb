"""KLOM against a float64 NumPy rendering of the Easy Data Unlearning Bench's rule, written in
this file from the rule (clip the values, 20 equal-width bins over the pooled range, NumPy's
digitize, counts over the counted total, Q floored at 1e-5 where P > 0, Σ_{P>0} P ln P/Q)."""

import chex
import jax
import numpy as np
import pytest

from unlearn_jax import metrics

TOLERANCE = 2e-4


def reference_klom(p_samples, q_samples, bins=20, floor=1e-5, clip=100.0):
  """One example: KL(P ‖ Q) of the two 1-D samples, float64, a loop over bins."""
  p = np.clip(np.asarray(p_samples, np.float64), -clip, clip)
  q = np.clip(np.asarray(q_samples, np.float64), -clip, clip)
  lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
  if lo >= hi:
    hi = lo + 1.0
  edges = np.linspace(lo, hi, bins + 1)
  pi, qi = np.digitize(p, edges), np.digitize(q, edges)
  pc = np.array([np.sum(pi == c) for c in range(1, bins + 1)], np.float64)
  qc = np.array([np.sum(qi == c) for c in range(1, bins + 1)], np.float64)
  pp = pc / pc.sum() if pc.sum() > 0 else np.zeros(bins)
  qq = qc / qc.sum() if qc.sum() > 0 else np.zeros(bins)
  total = 0.0
  for c in range(bins):
    if pp[c] > 0:
      total += pp[c] * np.log(pp[c] / max(qq[c], floor))
  return total


def _populations():
  """(name, unlearned [N, S], oracle [N, S]) cases: 200 examples each, N = 8, 32, 100 and 2."""
  rng = np.random.default_rng(0)
  cases = []
  for n in (8, 32, 100):
    a = rng.normal(0, 2, (n, 200))
    cases += [
        (f"identical N={n}", a, a.copy()),
        (f"same law N={n}", a, rng.normal(0, 2, (n, 200))),
        (f"shifted N={n}", a, rng.normal(1.5, 2, (n, 200))),
        (f"disjoint N={n}", a, a + 50.0),
        (f"heavy tails N={n}", rng.standard_t(1.5, (n, 200)), rng.standard_t(1.5, (n, 200))),
        (f"ties N={n}", np.round(a), np.round(rng.normal(0.5, 2, (n, 200)))),
        (f"beyond clip N={n}", a * 80.0, rng.normal(20, 90, (n, 200))),
    ]
  # The pooled maximum shared by many values (excluded from every bin), a degenerate
  # all-equal population, both populations all equal, N = 2.
  top = rng.normal(0, 1, (16, 50))
  top[:5] = top.max(axis=0)
  cases += [("values at the pooled max", top, rng.normal(0, 1, (16, 50))),
            ("degenerate one side", np.full((16, 50), 0.3), rng.normal(0, 1, (16, 50))),
            ("degenerate both", np.full((16, 50), 0.3), np.full((16, 50), 0.3)),
            ("N = 2", rng.normal(0, 1, (2, 50)), rng.normal(0.5, 1, (2, 50)))]
  return cases


CASES = _populations()


@pytest.mark.parametrize("name,u,r", CASES, ids=[c[0] for c in CASES])
def test_per_example_klom_is_the_benchmarks_rule(name, u, r):
  want = np.array([reference_klom(u[:, s], r[:, s]) for s in range(u.shape[1])])
  with jax.enable_x64(True):
    got64 = np.asarray(metrics.klom(u, r))
  np.testing.assert_allclose(got64, want, atol=TOLERANCE, rtol=0, err_msg=name)
  got32 = np.asarray(jax.jit(metrics.klom)(u.astype(np.float32), r.astype(np.float32)))
  np.testing.assert_allclose(got32, want, atol=TOLERANCE, rtol=0, err_msg=name)


def test_direction_swaps_the_populations():
  u, r = CASES[2][1], CASES[2][2]
  want = np.array([reference_klom(r[:, s], u[:, s]) for s in range(u.shape[1])])
  np.testing.assert_allclose(metrics.klom(u, r, direction="oracle_unlearned"), want,
                             atol=TOLERANCE)
  assert not np.allclose(metrics.klom(u, r), want, atol=1e-2)
  with pytest.raises(ValueError, match="allowed: unlearned_oracle, oracle_unlearned"):
    metrics.klom(u, r, direction="both")


def test_a_hand_computed_case():
  """Edges 0, 0.5, 1 over the pooled [0, 1]: the value 1 (the maximum) is in no bin.
  P = (2/3, 1/3) from (0, 0, 0.5); Q = (1/2, 1/2) from (0, 0.5) (the two 1s not counted)."""
  u = np.array([0.0, 0.0, 0.5, 1.0])
  r = np.array([0.0, 0.5, 1.0, 1.0])
  want = 2 / 3 * np.log((2 / 3) / 0.5) + 1 / 3 * np.log((1 / 3) / 0.5)
  np.testing.assert_allclose(metrics.klom(u, r, bins=2), want, rtol=1e-6)


def test_disjoint_populations_are_bounded_by_the_floor():
  u = np.random.default_rng(1).normal(size=(32, 4))
  far = np.asarray(metrics.klom(u, u + 1000.0))      # clipped at 100: still disjoint
  assert np.all((far > 8.0) & (far <= np.log(1e5) + 1e-6)), far


def test_report_gives_the_benchmarks_keys():
  rng = np.random.default_rng(2)
  splits = ("retain", "forget", "val")
  unlearned = {s: rng.normal(0, 1, (16, 40)) for s in splits}
  oracle = {s: rng.normal(0.3, 1, (16, 40)) for s in splits}
  report = metrics.klom_report(unlearned, oracle)
  assert set(report) == {f"klom_{k}_{s}" for k in ("p95", "p99", "mean", "std")
                         for s in splits} | {"average_95"}
  for s in splits:
    values = np.array([reference_klom(unlearned[s][:, i], oracle[s][:, i]) for i in range(40)])
    np.testing.assert_allclose(report[f"klom_p95_{s}"], np.percentile(values, 95), atol=TOLERANCE)
    np.testing.assert_allclose(report[f"klom_mean_{s}"], values.mean(), atol=TOLERANCE)
  np.testing.assert_allclose(report["average_95"],
                             np.mean([report[f"klom_p95_{s}"] for s in splits]))
  with pytest.raises(ValueError, match="same splits"):
    metrics.klom_report(unlearned, {"retain": oracle["retain"]})


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
  with pytest.raises(ValueError, match="bins must be static"):
    jax.jit(lambda a, b, n: metrics.klom(a, b, bins=n))(u, r, 20)
