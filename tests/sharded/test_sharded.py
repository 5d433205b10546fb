"""Data parallelism on 8 simulated devices matches one device to float tolerance.

Each test runs the same pure function twice, once plainly and once inside
`parallel.data_parallel(mesh)` with the inputs replicated on the mesh, and compares.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.pipeline import experiment, usage
from experiments.pipeline import run as runner
from unlearn_jax import methods, models, parallel, train
from unlearn_jax.data import SplitSpec, load_dataset, make_split
import method_data  # tests/method_data.py: select_data with targets for every method

TOL = dict(rtol=2e-4, atol=2e-5)


def test_eight_devices_are_visible():
  assert jax.device_count() == 8, "tests/sharded/conftest.py must set 8 host devices"


@pytest.fixture(scope="module")
def digits_data():
  ds = load_dataset("digits")
  split = make_split(SplitSpec("random", 0.1, seed=0), ds.train_y, ds.test_y, 10)
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  return ds, (x[split.forget], y[split.forget]), (x[split.retain], y[split.retain])


def _on_mesh(fn, mesh, *args):
  with parallel.data_parallel(mesh):
    return fn(*parallel.replicate(args, mesh))


def test_train_step_is_split_over_the_data_axis(digits_data):
  """The compiled sharded step all-reduces (the batch really is split); the plain one
  does not."""
  ds, _, (x, y) = digits_data
  model = models.get_model("mlp", 10)
  v = models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape)
  cfg = train.TrainConfig(epochs=1, batch_size=64, lr=0.05)
  fit = jax.jit(train.fit, static_argnums=(0, 1))
  mesh = parallel.make_mesh()
  plain = fit.lower(model, cfg, v, x, y, jax.random.PRNGKey(1)).compile().as_text()
  with parallel.data_parallel(mesh):
    args = parallel.replicate((v, x, y), mesh)
    sharded = fit.lower(model, cfg, *args, jax.random.PRNGKey(1)).compile().as_text()
  assert "all-reduce" in sharded and "all-reduce" not in plain


def test_mlp_training_matches_one_device(digits_data):
  ds, _, (x, y) = digits_data
  model = models.get_model("mlp", 10)
  v = models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape)
  cfg = train.TrainConfig(epochs=3, batch_size=64, lr=0.05)
  fit = jax.jit(train.fit, static_argnums=(0, 1))
  key = jax.random.PRNGKey(1)
  want, _ = fit(model, cfg, v, x, y, key)
  got, _ = _on_mesh(lambda v, x, y: fit(model, cfg, v, x, y, key), parallel.make_mesh(), v, x, y)
  chex.assert_trees_all_close(got, want, **TOL)


def test_batch_norm_cnn_training_matches_one_device(digits_data):
  """BatchNorm's batch statistics are reduced across devices: same running stats."""
  ds, _, (x, y) = digits_data
  x, y = x[:512], y[:512]
  model = models.get_model("cnn", 10)
  v = models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape)
  cfg = train.TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=True)
  key = jax.random.PRNGKey(2)
  want, _ = jax.jit(train.fit, static_argnums=(0, 1))(model, cfg, v, x, y, key)
  got, _ = _on_mesh(lambda v, x, y: train.fit(model, cfg, v, x, y, key),
                    parallel.make_mesh(), v, x, y)
  chex.assert_trees_all_close(got, want, **TOL)


# SCRUB's max pass starts at student = teacher, where the KL gradient is zero up to
# rounding; Adam normalises that rounding noise into full-size steps, so its direction is
# set by the reduction order and no two device layouts agree (nor would two BLAS builds).
# The min passes (CE + KL to the teacher) are compared. Adam still turns a near-zero
# gradient whose sign depends on the reduction order into a step of up to ±lr, so single
# weights may differ by a few lr (seen: 17 of 65,536 by up to 9.7e-4 on another machine):
# for SCRUB the test compares what the model computes (logits) and the mean weight gap.
@pytest.mark.parametrize("name,overrides,compare", [
    ("finetune", dict(epochs=2), "weights"),
    ("ssd", dict(), "weights"),
    ("scrub", dict(epochs=2, max_epochs=0), "function"),
])
def test_method_matches_one_device(name, overrides, compare, digits_data):
  ds, forget, retain = digits_data
  model = models.get_model("mlp", 10)
  original, _ = jax.jit(train.fit, static_argnums=(0, 1))(
      model, train.TrainConfig(epochs=5, batch_size=64, lr=0.05),
      models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape), *retain,
      jax.random.PRNGKey(1))
  ctx = methods.MethodContext(model, 10, ds.input_shape, (), "mlp")
  spec = methods.get_method(name)
  data = method_data.select(spec, forget, retain, ctx=ctx)
  key = jax.random.PRNGKey(3)

  def unlearn(v, data):
    return jax.jit(spec(ctx, **overrides))(v, data, key)[0]

  want = unlearn(original, data)
  got = _on_mesh(unlearn, parallel.make_mesh(), original, data)
  if compare == "weights":
    chex.assert_trees_all_close(got, want, **TOL)
    return
  x = retain[0][:512]
  chex.assert_trees_all_close(model.apply(got, x), model.apply(want, x), atol=2e-2)
  gaps = [float(jnp.mean(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(got),
                                                            jax.tree_util.tree_leaves(want))]
  assert max(gaps) < 1e-5, gaps


def test_seeds_and_data_axes_combine(digits_data):
  """2 seeds x 4 data devices: vmapped seeds on the `seeds` axis, batches on `data`."""
  ds, _, (x, y) = digits_data
  model = models.get_model("mlp", 10)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  v = jax.vmap(lambda k: models.init_variables(model, k, ds.input_shape))(keys)
  cfg = train.TrainConfig(epochs=2, batch_size=64, lr=0.05)
  fit = lambda v, k: train.fit(model, cfg, v, x, y, k)[0]
  want = jax.jit(jax.vmap(fit))(v, keys)
  mesh = parallel.make_mesh(seeds=2)
  assert dict(mesh.shape) == {"seeds": 2, "data": 4}
  with parallel.data_parallel(mesh):
    got = jax.jit(parallel.vmap_seeds(fit))(parallel.shard_seeds(v), keys)
  chex.assert_trees_all_close(got, want, **TOL)
  leaf = jax.tree_util.tree_leaves(got)[0]
  assert len(leaf.sharding.device_set) == 8


@pytest.mark.slow
def test_runner_on_eight_devices_matches_one(tmp_path):
  """The whole experiment (train, retrain, finetune, evaluate) with the default mesh over
  all 8 devices gives the numbers of a 1-device mesh."""
  from experiments.configs import default
  results = {}
  for i, data in enumerate((None, 1)):       # None: every device on the data axis
    cfg = default.get_config()
    cfg.methods = default.methods_config("finetune")
    cfg.seeds, cfg.mesh_data = 1, data
    cfg.train.epochs = 5
    out = runner.run(cfg, {}, log=lambda s: None)
    results[i] = out
  assert results[0].info["mesh"] == {"seeds": 1, "data": 8}
  assert results[1].info["mesh"] == {"seeds": 1, "data": 1}
  for a, b in zip(results[0].rows, results[1].rows):
    assert a["method"] == b["method"]
    for k in ("retain_acc", "forget_acc", "test_acc"):
      np.testing.assert_allclose(a[k], b[k], atol=2 / 1000, err_msg=f"{a['method']} {k}")
  for name in ("original", "retrain", "finetune"):
    chex.assert_trees_all_close(results[0].model_sets[name].variables,
                                results[1].model_sets[name].variables, rtol=1e-3, atol=1e-4)


def test_batch_size_the_mesh_cannot_split_is_a_usage_error():
  from experiments.configs import default
  cfg = default.get_config()
  cfg.train.batch_size = 60
  with pytest.raises(usage.UsageError, match="not divisible by the 8 devices"):
    experiment.setup(cfg, log=lambda s: None)


def test_streaming_on_eight_devices_matches_one(digits_data):
  """Host batches assembled into global arrays split over `data`
  (make_array_from_process_local_data) train exactly as on one device."""
  from unlearn_jax.data import streaming
  ds, _, (x, y) = digits_data
  model = models.get_model("mlp", 10)
  v = models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape)
  cfg = train.TrainConfig(epochs=2, batch_size=64, lr=0.05)
  src = streaming.ArraySource(np.asarray(x), np.asarray(y))
  key = jax.random.PRNGKey(1)
  want, _ = streaming.fit_streaming(model, cfg, v, src, key)
  mesh = parallel.make_mesh()
  got, _ = streaming.fit_streaming(model, cfg, v, src, key, mesh=mesh)
  chex.assert_trees_all_close(got, want, **TOL)
  assert len(jax.tree_util.tree_leaves(got)[0].sharding.device_set) == 8


@pytest.mark.slow
def test_population_evaluation_on_eight_devices_matches_one():
  """experiments.evaluate's core (populations, a method, every metric) on the 8-device
  mesh gives one device's accuracies."""
  from experiments.configs import default
  from experiments.pipeline import population
  out = {}
  for i, data in enumerate((None, 1)):       # None: every device on the data axis
    cfg = default.get_config()
    cfg.methods, cfg.mesh_data = default.methods_config("finetune"), data
    cfg.train.epochs = 4
    out[i] = population.run(cfg, {"finetune": {"epochs": 1}}, num_models=4, chunk=0,
                               log=lambda s: None, mia_models=2)
  assert out[0].info["mesh"] == {"seeds": 1, "data": 8}
  assert out[1].info["mesh"] == {"seeds": 1, "data": 1}
  for a, b in zip(out[0].rows, out[1].rows):
    assert a["method"] == b["method"]
    for k in ("retain_acc", "forget_acc", "test_acc"):
      np.testing.assert_allclose(a[k], b[k], atol=2e-3, err_msg=f"{a['method']} {k}")
