"""Training: one real step learns, chunks compose, the step is traced once per population."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import batching, metrics, models, train



def _setup(digits, name="mlp"):
  m = models.get_model(name, 10)
  v = models.init_variables(m, jax.random.PRNGKey(0), digits.input_shape)
  return m, v, jnp.asarray(digits.train_x[:256]), jnp.asarray(digits.train_y[:256])


def test_one_real_step_lowers_the_loss(digits):
  m, v, x, y = _setup(digits)
  cfg = train.TrainConfig(epochs=1, batch_size=256, lr=0.1, schedule="constant")
  tx = train.make_optimizer(cfg, 1)
  step = jax.jit(train.make_supervised_step(m, tx))
  state = train.init_train_state(v, tx)
  state, m1 = step(state, (x, y), jax.random.PRNGKey(1))
  _, m2 = step(state, (x, y), jax.random.PRNGKey(1))
  assert m2["loss"] < m1["loss"]


def test_fit_learns_digits_and_is_deterministic(digits):
  m, v, x, y = _setup(digits)
  cfg = train.TrainConfig(epochs=8, batch_size=64, lr=0.05)
  fit = jax.jit(train.fit, static_argnums=(0, 1))
  v1, hist = fit(m, cfg, v, x, y, jax.random.PRNGKey(3))
  v2, _ = fit(m, cfg, v, x, y, jax.random.PRNGKey(3))
  chex.assert_trees_all_equal(v1, v2)
  acc = metrics.accuracy(train.predict(m, v1, jnp.asarray(digits.test_x)), digits.test_y)
  assert acc > 0.85 and hist["loss"][-1] < hist["loss"][0]


def test_fit_vmaps_over_seeds(digits):
  m, v, x, y = _setup(digits)
  cfg = train.TrainConfig(epochs=2, batch_size=64)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  vs = jax.jit(jax.vmap(lambda k: train.fit(m, cfg, v, x, y, k)[0]))(keys)
  one = jax.jit(lambda k: train.fit(m, cfg, v, x, y, k)[0])(keys[1])
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[1], vs), one, atol=1e-5)


def test_fit_takes_numpy_data_under_jit(digits):
  """NumPy arrays closed over by a jitted fit are indexed by traced batch indices."""
  m, v, *_ = _setup(digits)
  cfg = train.TrainConfig(epochs=1, batch_size=64)
  out, _ = jax.jit(lambda v, k: train.fit(m, cfg, v, digits.train_x, digits.train_y, k))(
      v, jax.random.PRNGKey(0))
  chex.assert_tree_all_finite(out)


def test_epoch_chunks_compose_to_one_fit(digits):
  m, v, x, y = _setup(digits)
  cfg = train.TrainConfig(epochs=4, batch_size=64)
  whole, _ = jax.jit(train.fit, static_argnums=(0, 1))(m, cfg, v, x, y, jax.random.PRNGKey(2))
  tx = train.make_optimizer(cfg, train.steps_per_epoch(x.shape[0], cfg.batch_size))
  state = train.init_train_state(v, tx)
  epoch = jax.jit(lambda s: train.train_epochs(m, cfg, s, x, y, jax.random.PRNGKey(2), 1))
  for _ in range(4):
    state, _ = epoch(state)
  chex.assert_trees_all_close(whole, state.variables, atol=1e-5)


@pytest.mark.optimised
def test_train_step_traces_once(digits):
  m, v, x, y = _setup(digits)
  tx = train.make_optimizer(train.TrainConfig(), 10)
  step = jax.jit(chex.assert_max_traces(train.make_supervised_step(m, tx), n=1))
  state = train.init_train_state(v, tx)
  for i in range(3):
    state, _ = step(state, (x[:32], y[:32]), jax.random.PRNGKey(i))


def test_epoch_indices_cover_every_example():
  idx = batching.epoch_indices(jax.random.PRNGKey(0), 10, 4)
  assert idx.shape == (3, 4)
  assert set(np.asarray(idx).ravel().tolist()) == set(range(10))


def test_augment_keeps_shape_and_flips():
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  out = train.augment_batch(x, jax.random.PRNGKey(0), pad=0)
  assert out.shape == x.shape
  for i in range(2):
    assert jnp.array_equal(out[i], x[i]) or jnp.array_equal(out[i], x[i, :, ::-1])


def test_bad_schedule_and_optimizer_are_named():
  with pytest.raises(ValueError, match="allowed: onecycle"):
    train.make_schedule("linear", 0.1, 10)
  with pytest.raises(ValueError, match="allowed: sgd, adam"):
    train.make_optimizer(train.TrainConfig(optimizer="lamb"), 1)


@pytest.mark.optimised
@pytest.mark.parametrize("seed_mode", ["vmap", "sequential"])
def test_train_step_is_traced_once_per_population(digits, seed_mode, monkeypatch):
  """A 3-epoch, 2-seed CNN population: the epoch function (hence the train step) is traced
  and compiled once, then called for every epoch and seed (`driver.train_population`)."""
  import chex
  from unlearn_jax import driver
  model = models.get_model("cnn", 10, widths=(8, 16), dense=32)
  x, y = jnp.asarray(digits.train_x[:256]), jnp.asarray(digits.train_y[:256])
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  init = jax.vmap(lambda k: models.init_variables(model, k, digits.input_shape))(keys)
  monkeypatch.setattr(train, "make_supervised_step",
                      chex.assert_max_traces(train.make_supervised_step, n=1))
  ms = driver.train_population(model, train.TrainConfig(epochs=3, batch_size=64), init, x, y,
                               keys, seed_mode=seed_mode, log=lambda s: None)
  chex.assert_tree_all_finite(ms.variables)
  assert jax.tree_util.tree_leaves(ms.variables)[0].shape[0] == 2
