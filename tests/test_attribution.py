"""TRAK, datamodels, DM-Direct and the oracles' targets (`unlearn_jax.attribution`), each
against a reference independent of the code under test: exact leave-one-out retraining of an
L2-regularised logistic model, the TRAK formula written in NumPy, the authors' `traker`
(its scores on fixed data and checkpoints, recorded by `tests/data/make_traker_reference.py`,
and side by side where torch and traker are installed), NumPy's least squares."""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unlearn_jax as uj
from unlearn_jax import attribution

DATA = Path(__file__).resolve().parent / "data"


def _rank(a):
  return np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)


def spearman(a, b) -> float:
  return float(np.corrcoef(_rank(np.ravel(a)), _rank(np.ravel(b)))[0, 1])


def blobs(seed, n, d, classes, sep, n_targets):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, d)) * sep
  y = rng.integers(0, classes, n)
  yt = rng.integers(0, classes, n_targets)
  x = (means[y] + rng.normal(size=(n, d))).astype(np.float32)
  xt = (means[yt] + rng.normal(size=(n_targets, d))).astype(np.float32)
  return (x, y.astype(np.int32)), (xt, yt.astype(np.int32))


@functools.cache
def logistic_problem(seed: int) -> dict:
  """Binary logistic regression with an L2 penalty on Gaussian blobs (150 training
  examples, 8 features, 50 targets), fitted by Newton's method to the optimum for any
  example weights; `effect` [train, target]: the exact change of each target's margin when
  each training example is included (the fit without it, minus the fit with all)."""
  (x, y), (xt, yt) = blobs(seed, 150, 8, 2, 0.5, 50)
  n, lam = x.shape[0], 0.1
  model = nn.Dense(2)
  flat0, unravel = ravel_pytree(model.init(jax.random.PRNGKey(0), x[:1])["params"])

  def loss(f, w):
    z = model.apply({"params": unravel(f)}, x)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0]
    return (w * ce).sum() / n + 0.5 * lam * jnp.sum(f ** 2)

  def fit(w):
    newton = lambda f, _: (f - jnp.linalg.solve(jax.hessian(loss)(f, w), jax.grad(loss)(f, w)),
                           None)
    return jax.lax.scan(newton, jnp.zeros_like(flat0), None, length=30)[0]

  full = jax.jit(fit)(jnp.ones(n))
  assert np.abs(jax.grad(loss)(full, jnp.ones(n))).max() < 1e-4, "the fit is not optimal"
  without = jax.jit(jax.vmap(fit))(1 - jnp.eye(n))
  margins = lambda f: jax.vmap(lambda a, b: attribution.margin(
      model.apply({"params": unravel(f)}, a), b))(xt, yt)
  effect = np.asarray(margins(full)[None] - jax.vmap(margins)(without))
  return dict(x=x, y=y, xt=xt, yt=yt, model=model, unravel=unravel, size=flat0.size,
              fit=fit, margins=margins, full=full, effect=effect)


# The leave-one-out references refit the model 150 times per problem (Newton, vmapped) and
# the datamodels 500 times: the integration lane, for the default lane's time.
@pytest.mark.integration
@pytest.mark.parametrize("seed", [0, 1])
def test_trak_tracks_exact_leave_one_out_on_a_logistic_model(seed):
  """Binary logistic regression with an L2 penalty, refitted without each training
  example in turn (exact, not an approximation): TRAK at full projection dimension
  correlates with the true change of each target's margin, Pearson >= 0.9 over all
  (train, target) pairs; a shuffled attribution does not (the criterion can fail)."""
  p = logistic_problem(seed)
  ensemble = {"params": jax.tree_util.tree_map(lambda a: a[None], p["unravel"](p["full"]))}
  scores = np.asarray(uj.trak_scores(p["model"], ensemble, (p["x"], p["y"]),
                                     (p["xt"], p["yt"]), proj_dim=p["size"],
                                     key=jax.random.PRNGKey(1), damping=1e-3))
  effect = p["effect"]
  assert scores.shape == effect.shape
  r = np.corrcoef(scores.ravel(), effect.ravel())[0, 1]
  assert r >= 0.9, f"TRAK against exact leave-one-out: Pearson {r:.3f} < 0.9"
  shuffled = np.random.default_rng(0).permutation(scores.ravel())
  assert abs(np.corrcoef(shuffled, effect.ravel())[0, 1]) < 0.5


@pytest.mark.integration
def test_datamodels_of_subset_models_track_exact_leave_one_out():
  """The paper's second source on the same logistic model: 500 models fitted on random
  50% subsets (one vmapped program), each target's margin regressed on the inclusion
  masks; the weights correlate with the exact leave-one-out effects (Pearson >= 0.9)."""
  p = logistic_problem(0)
  masks = np.random.default_rng(1).random((500, p["x"].shape[0])) < 0.5
  outputs = jax.vmap(p["margins"])(jax.jit(jax.vmap(p["fit"]))(jnp.asarray(masks, jnp.float32)))
  weights = np.asarray(uj.datamodel_scores(masks, outputs, l2=1e-2))
  r = np.corrcoef(weights.ravel(), p["effect"].ravel())[0, 1]
  assert r >= 0.9, f"datamodels against exact leave-one-out: Pearson {r:.3f} < 0.9"


def trak_in_numpy(kernels, biases, x, y, xt, yt, damping, output, projections=None):
  """TRAK for a linear softmax model z = x W + b, written from the paper's formula with
  the gradients by hand: margin gradient ∂(z_y − logsumexp_{c≠y} z_c) = x ⊗ (e_y − s),
  s the softmax over the other classes; a logit's gradient x ⊗ e_c. `projections`: one
  matrix per model (parameters flattened as ravel_pytree does: bias, then kernel), or
  None for none (the identity)."""
  def grads_margin(W, b, xs, ys):
    z = xs @ W + b
    others = np.where(np.eye(W.shape[1])[ys] > 0, -np.inf, z)
    s = np.exp(others - others.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    coef = np.eye(W.shape[1])[ys] - s                        # [n, C]
    return np.concatenate([coef, np.einsum("nd,nc->ndc", xs, coef).reshape(len(xs), -1)], 1)

  total, q_total = 0.0, 0.0
  for m, (W, b) in enumerate(zip(kernels, biases)):
    proj = np.eye(W.size + b.size) if projections is None else projections[m]
    phi = grads_margin(W, b, x, y) @ proj
    z = x @ W + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = 1 - p[np.arange(len(y)), y]
    inv = np.linalg.inv(phi.T @ phi + damping * np.eye(phi.shape[1]))
    if output == "margin":
      target = grads_margin(W, b, xt, yt) @ proj             # [t, k]
      total = total + phi @ inv @ target.T
    else:
      C = W.shape[1]
      eye = np.eye(C)
      target = np.concatenate([np.broadcast_to(eye, (len(xt), C, C)),
                               np.einsum("td,ce->tcde", xt, eye).reshape(len(xt), C, -1)],
                              2) @ proj                                  # [t, C, k]
      total = total + np.einsum("ip,tcp->itc", phi @ inv, target)
    q_total = q_total + q
  m = len(kernels)
  return total / m * (q_total / m).reshape((-1,) + (1,) * (np.ndim(total) - 1))


# The logits output (a Jacobian per target, the summed-rows path) compiles for ~10 s: the
# integration lane; the margin runs in the default one.
@pytest.mark.parametrize("output", ["margin", pytest.param("logits", marks=pytest.mark.integration)])
def test_trak_equals_its_formula_in_numpy(output):
  """Three checkpoints of a 3-class linear model: the scores equal the NumPy formula with
  the same projection matrices (`projection_matrix`: the library's draw, the formula
  NumPy's), at a smaller and at the full dimension, for both output functions and both
  projections. For the margin at full dimension the projection drops out, so there the
  formula without any projection is the reference too."""
  (x, y), (xt, yt) = blobs(2, 80, 5, 3, 1.0, 20)
  model = nn.Dense(3)
  rng = np.random.default_rng(3)
  kernels = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
  biases = [rng.normal(size=3).astype(np.float32) * 0.1 for _ in range(3)]
  ensemble = {"params": {"kernel": jnp.stack(kernels), "bias": jnp.stack(biases)}}
  args = ([k.astype(np.float64) for k in kernels], [b.astype(np.float64) for b in biases],
          x.astype(np.float64), y, xt.astype(np.float64), yt, 1e-2, output)
  key = jax.random.PRNGKey(4)
  for projection, dim in (("rademacher", 10), ("normal", 18)):
    got = np.asarray(jax.jit(functools.partial(
        uj.trak_scores, model, proj_dim=dim, output=output, projection=projection,
        damping=1e-2, chunk=7, block=4))(ensemble, (x, y), (xt, yt), key=key))
    mats = [np.asarray(attribution.projection_matrix(
        jax.random.fold_in(key, m), 18, dim, projection=projection, block=4), np.float64)
        for m in range(3)]
    want = trak_in_numpy(*args, projections=mats)
    assert got.shape == want.shape
    r = np.corrcoef(got.ravel(), want.ravel())[0, 1]
    assert r > 0.9999, f"{projection}, {output}, k={dim}: Pearson {r:.5f} with the formula"
    # float32 against float64 on a damped, nearly singular kernel: a loose elementwise bound
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=5e-3 * np.abs(want).max())
    if output == "margin" and dim == 18:
      plain = trak_in_numpy(*args)
      assert np.corrcoef(got.ravel(), plain.ravel())[0, 1] > 0.999
  if output == "margin":
    return
  rows = np.array([3, 0, 41])        # the forget-rows options, on the logits output
  part = uj.trak_scores(model, ensemble, (x, y), (xt, yt), proj_dim=18, output=output,
                        damping=1e-3, key=jax.random.PRNGKey(4), train_rows=rows)
  full = uj.trak_scores(model, ensemble, (x, y), (xt, yt), proj_dim=18, output=output,
                        damping=1e-3, key=jax.random.PRNGKey(4))
  np.testing.assert_allclose(part, np.asarray(full)[rows], rtol=1e-4, atol=1e-6)
  summed = uj.trak_scores(model, ensemble, (x, y), (xt, yt), proj_dim=18, output=output,
                          damping=1e-3, key=jax.random.PRNGKey(4), train_rows=rows,
                          sum_rows=True)
  np.testing.assert_allclose(summed, np.asarray(full)[rows].sum(0), rtol=1e-4, atol=1e-6)


def test_trak_matches_the_authors_traker_on_recorded_checkpoints():
  """`traker` 0.3.2's scores (the authors' package, run by
  `tests/data/make_traker_reference.py`) on the same data, checkpoints and damping:
  rank correlation >= 0.9 at full projection dimension."""
  ref = np.load(DATA / "traker_reference.npz")
  ensemble = {"params": {"kernel": jnp.asarray(ref["kernels"]), "bias": jnp.asarray(ref["biases"])}}
  scores = uj.trak_scores(nn.Dense(int(ref["kernels"].shape[-1])), ensemble,
                          (ref["x"], ref["y"]), (ref["xt"], ref["yt"]),
                          proj_dim=int(ref["proj_dim"]), damping=float(ref["damping"]),
                          key=jax.random.PRNGKey(0))
  rho = spearman(scores, ref["scores"])
  assert rho >= 0.9, f"rank correlation with traker's scores {rho:.4f} < 0.9"


def test_trak_side_by_side_with_traker(tmp_path):
  """Where torch and traker are installed: traker run now on the recorded problem gives
  the recorded scores (the fixture is what traker computes)."""
  pytest.importorskip("torch")
  pytest.importorskip("trak")
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_ref", DATA / "make_traker_reference.py")
  make_ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(make_ref)
  ref = np.load(DATA / "traker_reference.npz")
  now = make_ref.traker_scores(ref, tmp_path)
  assert spearman(now, ref["scores"]) > 0.999


def test_datamodel_scores_recover_linear_effects():
  """Outputs that are linear in the inclusion masks plus noise: the regression recovers
  the weights (Pearson > 0.95) and equals NumPy's least squares on the centred, augmented
  system (the ridge written independently)."""
  rng = np.random.default_rng(0)
  m, n, t = 400, 30, 6
  masks = rng.random((m, n)) < 0.5
  w = rng.normal(size=(n, t, 2))
  out = 0.3 + np.einsum("mn,ntc->mtc", masks, w) + 0.1 * rng.normal(size=(m, t, 2))
  got = np.asarray(uj.datamodel_scores(masks, out, l2=1e-3))
  assert got.shape == (n, t, 2)
  assert np.corrcoef(got.ravel(), w.ravel())[0, 1] > 0.95
  xc = masks - masks.mean(0)
  yc = (out - out.mean(0)).reshape(m, -1)
  aug_x = np.concatenate([xc, np.sqrt(1e-3 * m) * np.eye(n)])
  aug_y = np.concatenate([yc, np.zeros((n, yc.shape[1]))])
  want = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0].reshape(n, t, 2)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_dm_direct_and_oracle_targets_are_their_formulas():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 7, 4)).astype(np.float32)       # two models
  scores = rng.normal(size=(9, 7, 4)).astype(np.float32)
  forget = np.array([1, 4, 8])
  want = logits - 0.5 * scores[forget].sum(0)
  np.testing.assert_allclose(uj.dm_direct(logits, scores, forget, multiplier=0.5), want,
                             rtol=1e-5, atol=1e-5)
  mask = np.zeros(9, bool)
  mask[forget] = True
  np.testing.assert_allclose(uj.dm_direct(logits, scores, mask, multiplier=0.5), want,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(uj.oracle_targets(logits), logits.mean(0), rtol=1e-6)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  got = np.asarray(uj.oracle_targets(logits, kind="probs"))
  np.testing.assert_allclose(np.exp(got), probs.mean(0), rtol=1e-5)


@pytest.mark.parametrize("kwargs, words", [
    (dict(output="loss"), "output='loss' is unknown; allowed: margin, logits"),
    (dict(projection="sparse"), "projection='sparse' is unknown"),
    (dict(proj_dim=0), "proj_dim=0 must be a positive integer"),
    (dict(damping=-1.0), "damping=-1.0 must be >= 0"),
    (dict(train_rows=np.ones((2, 2), np.int32)), "train_rows must be a 1-D array"),
])
def test_trak_refuses_bad_arguments_by_name(kwargs, words):
  (x, y), (xt, yt) = blobs(0, 10, 3, 2, 1.0, 4)
  model = nn.Dense(2)
  v = jax.vmap(lambda k: model.init(k, x[:1]))(jax.random.split(jax.random.PRNGKey(0), 2))
  args = dict(proj_dim=4, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
    uj.trak_scores(model, v, (x, y), (xt, yt), **{**args, **kwargs})
