"""The matching methods on a user's own Linen model, under `jax.jit(jax.vmap(...))` over a
population of originals: Oracle Matching with real oracles, DM-Direct from TRAK scores, and
DMM to DM-Direct's prediction. Each is held to a criterion doing nothing fails: the
unlearned models' logits end nearer the targets than the originals' were."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax.methods import matching


class UserMLP(nn.Module):
  """A model of the user's: not the library's MLP (own names, own call signature)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(64, name="hidden")(x))
    return nn.Dense(4, name="out")(x)


N, TRAIN, FORGET = 3, 120, 12


@pytest.fixture(scope="module")
def population():
  """Originals (all of train) and oracles (without the forget set), N each, trained
  to fit their data by full-batch Adam; the forget set is TRAIN's first FORGET examples,
  whose labels are noise (they can only be memorised)."""
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 6)) * 2
  y = rng.integers(0, 4, TRAIN).astype(np.int32)
  x = (means[y] + rng.normal(size=(TRAIN, 6))).astype(np.float32)
  y[:FORGET] = rng.integers(0, 4, FORGET)
  adapter = uj.ModelAdapter(UserMLP(), train_kwargs={"train": True},
                            eval_kwargs={"train": False}, head=("out",))
  recipe = uj.TrainConfig(epochs=500, batch_size=TRAIN, lr=0.01, optimizer="adam",
                          weight_decay=0.0, schedule="constant")

  def fit(key, xx, yy):
    init = adapter.init(jax.random.fold_in(key, 0), (6,))
    return uj.fit(adapter, recipe, init, xx, yy, jax.random.fold_in(key, 1))[0]

  keys = jax.random.split(jax.random.PRNGKey(0), 2 * N)
  originals = jax.jit(jax.vmap(fit, (0, None, None)))(keys[:N], x, y)
  oracles = jax.jit(jax.vmap(fit, (0, None, None)))(keys[N:], x[FORGET:], y[FORGET:])
  forget, retain = (x[:FORGET], y[:FORGET]), (x[FORGET:], y[FORGET:])
  logits = jax.vmap(lambda v, xx: uj.predict(adapter, v, xx), (0, None))
  return dict(adapter=adapter, originals=originals, oracles=oracles, forget=forget,
              retain=retain, logits=logits, x=x, y=y)


def _distance(logits, targets):
  return float(jnp.mean((logits - targets) ** 2))


def test_the_originals_memorise_the_forget_set(population):
  p = population
  fa = jnp.mean(p["logits"](p["originals"], p["forget"][0]).argmax(-1) == p["forget"][1])
  oracle_fa = jnp.mean(p["logits"](p["oracles"], p["forget"][0]).argmax(-1) == p["forget"][1])
  assert fa > 0.9 and oracle_fa < 0.6, (fa, oracle_fa)


def _run_matching(method, p, targets, per_model: bool):
  ctx = uj.MethodContext(p["adapter"], 4, (6,))
  first = jax.tree_util.tree_map(lambda a: a[0], targets) if per_model else targets
  data = uj.select_data(method, p["forget"], p["retain"], ctx=ctx, targets=first)
  unlearn = method(ctx, epochs=40, lr=3e-3, batch_size=32)
  if per_model:
    run = jax.jit(jax.vmap(lambda v, t, k: unlearn(v, data._replace(targets=t), k)))
    return run(p["originals"], targets, jax.random.split(jax.random.PRNGKey(2), N))
  run = jax.jit(jax.vmap(unlearn, in_axes=(0, None, 0)))
  return run(p["originals"], data, jax.random.split(jax.random.PRNGKey(2), N))


def test_oracle_matching_moves_the_originals_to_the_oracles_mean(population):
  """The oracles' mean logits as targets, shared by every original: after matching, the
  population's forget logits are nearer them than the originals' (by half at least), and
  forget accuracy falls towards the oracles'."""
  p = population
  targets = tuple(uj.oracle_targets(p["logits"](p["oracles"], s[0]))
                  for s in (p["forget"], p["retain"]))
  out, aux = _run_matching(uj.oracle_matching, p, targets, per_model=False)
  before = _distance(p["logits"](p["originals"], p["forget"][0]), targets[0])
  after = _distance(p["logits"](out, p["forget"][0]), targets[0])
  assert after < 0.5 * before, f"forget logits' MSE to the oracles: {before:.3f} -> {after:.3f}"
  fa = lambda v: float(jnp.mean(p["logits"](v, p["forget"][0]).argmax(-1) == p["forget"][1]))
  assert fa(out) < fa(p["originals"]) - 0.2, (fa(p["originals"]), fa(out))
  assert np.all(np.asarray(aux["nonfinite_weights"]) == 0)


def test_dm_direct_and_dmm_per_model_under_jit_vmap(population):
  """DM-Direct from TRAK scores of the forget rows (the originals as TRAK's ensemble),
  jitted and vmapped over the originals, changes no weights: it moves each original's
  forget logits toward the oracles (the prediction is nearer them than the original
  logits are). DMM then matches each model's own prediction (targets vmapped with the
  models) and ends nearer it than the original was."""
  p = population
  both = tuple(jnp.concatenate([p["forget"][i], p["retain"][i]]) for i in (0, 1))
  scores = jax.jit(functools.partial(
      uj.trak_scores, p["adapter"], proj_dim=64, output="logits", damping=1e-3,
      train_rows=jnp.arange(FORGET), sum_rows=True))(
      p["originals"], (p["x"], p["y"]), both, key=jax.random.PRNGKey(0))
  original = p["logits"](p["originals"], both[0])
  oracle_mean = uj.oracle_targets(p["logits"](p["oracles"], both[0]))
  # one multiplier for TRAK's unit: the least-squares fit of the correction to the gap
  gap = (original.mean(0) - oracle_mean)[:FORGET]
  multiplier = float(jnp.sum(gap * scores[:FORGET]) / jnp.sum(scores[:FORGET] ** 2))
  assert multiplier > 0, "TRAK's correction points away from the oracles"
  predict = jax.jit(jax.vmap(lambda lg: uj.dm_direct(lg, scores[None], jnp.zeros(1, int),
                                                     multiplier=multiplier)))
  predicted = predict(original)
  assert _distance(predicted[:, :FORGET], oracle_mean[:FORGET]) < \
      _distance(original[:, :FORGET], oracle_mean[:FORGET])
  targets = (predicted[:, :FORGET], predicted[:, FORGET:])
  out, _ = _run_matching(uj.dmm, p, targets, per_model=True)
  after = p["logits"](out, p["forget"][0])
  assert _distance(after, targets[0]) < 0.5 * _distance(original[:, :FORGET], targets[0])


def test_the_retain_draw_is_the_authors():
  """3·|F| retain examples by NumPy's default_rng(42), as the authors' code draws them."""
  want = np.sort(np.random.default_rng(42).choice(100, 30, replace=False))
  np.testing.assert_array_equal(matching.retain_draw(100, 10, 3), want)
  assert matching.retain_draw(20, 10, 3).tolist() == list(range(20))    # capped at |R|


def test_targets_are_checked_by_name(population):
  p = population
  ctx = uj.MethodContext(p["adapter"], 4, (6,))
  with pytest.raises(ValueError, match="oracle_matching reads targets: pass targets="):
    uj.select_data(uj.oracle_matching, p["forget"], p["retain"], ctx=ctx)
  bad = (jnp.zeros((FORGET, 3)), jnp.zeros((TRAIN - FORGET, 4)))
  with pytest.raises(ValueError, match=r"targets' forget logits have shape \(12, 3\); "
                                       r"expected \(12, 4\)"):
    uj.select_data(uj.dmm, p["forget"], p["retain"], ctx=ctx, targets=bad)
  with pytest.raises(ValueError, match="reads targets: data.targets must be a pair"):
    uj.oracle_matching(ctx)(jax.tree_util.tree_map(lambda a: a[0], p["originals"]),
                            uj.UnlearnData(p["forget"], p["retain"]), jax.random.PRNGKey(0))


def test_the_fitted_multiplier_is_the_least_squares_scale():
  """`--config.matching.fit_multiplier`: the one number that best maps TRAK's correction
  onto the originals' gap to the oracles (NumPy's lstsq on the stacked examples)."""
  from experiments.pipeline.matching import fitted_multiplier
  rng = np.random.default_rng(0)
  corr = {s: rng.normal(size=(n, 4)) for s, n in (("forget", 5), ("retain", 9))}
  oracle = {s: rng.normal(size=c.shape) for s, c in corr.items()}
  original = {s: (oracle[s] + 2.5 * corr[s] + 0.1 * rng.normal(size=corr[s].shape))[None]
              + 0.01 * rng.normal(size=(3,) + corr[s].shape) for s in corr}
  got = fitted_multiplier(original, oracle, corr)
  a = np.concatenate([corr[s].ravel() for s in corr])[:, None]
  b = np.concatenate([(original[s].mean(0) - oracle[s]).ravel() for s in corr])
  assert got == pytest.approx(np.linalg.lstsq(a, b, rcond=None)[0][0], rel=1e-9)
  assert got == pytest.approx(2.5, abs=0.1)
