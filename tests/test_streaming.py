"""Streaming input feeds the same pure step as in-memory training, batch for batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from unlearn_jax import batching, models, train
from unlearn_jax.data import streaming



def test_streaming_training_is_the_in_memory_training(digits):
  model = models.get_model("mlp", 10)
  v = models.init_variables(model, jax.random.PRNGKey(0), digits.input_shape)
  cfg = train.TrainConfig(epochs=3, batch_size=64, lr=0.05)
  key = jax.random.PRNGKey(1)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  want, want_hist = jax.jit(train.fit, static_argnums=(0, 1))(model, cfg, v, x, y, key)
  got, hist = streaming.fit_streaming(model, cfg, v,
                                      streaming.ArraySource(digits.train_x, digits.train_y), key)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(hist, want_hist, rtol=1e-5, atol=1e-6)


def test_epoch_plan_is_the_scan_loops_plan():
  key = jax.random.PRNGKey(4)
  idx, keys = streaming.epoch_plan(key, 2, 100, 32)
  ekey = jax.random.fold_in(key, 2)
  np.testing.assert_array_equal(
      idx, batching.epoch_indices(jax.random.fold_in(ekey, 0), 100, 32))
  assert idx.shape == (4, 32) and keys.shape[0] == 4


def test_reader_errors_reach_the_training_loop():
  class Broken(streaming.ArraySource):
    def __getitem__(self, i):
      raise OSError("disk gone")
  src = Broken(np.zeros((8, 2, 2, 1), np.float32), np.zeros(8, np.int32))
  idx, _ = streaming.epoch_plan(jax.random.PRNGKey(0), 0, 8, 4)
  with pytest.raises(OSError, match="disk gone"):
    list(streaming.host_batches(src, idx, streaming.image_transform(1.0)))


def test_tfds_data_source_streams_without_loading_the_dataset():
  """A tfds source (mocked: offline) read record by record, normalised per batch."""
  with tfds.testing.mock_data(num_examples=96):
    src = streaming.tfds_source("mnist", "train")
    mean, std = streaming.channel_statistics(src, sample=50)
    assert mean.shape == (1,) and np.all(std > 0)
    model = models.get_model("mlp", 10)
    v = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
    cfg = train.TrainConfig(epochs=2, batch_size=32, lr=0.01)
    got, hist = streaming.fit_streaming(model, cfg, v, src, jax.random.PRNGKey(1),
                                        streaming.image_transform(255.0, mean, std))
  assert hist["loss"].shape == (2,) and bool(jnp.all(jnp.isfinite(hist["loss"])))
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), got["params"], v["params"])
  assert all(jax.tree_util.tree_leaves(changed))


@pytest.mark.integration
def test_runner_stream_flag_trains_the_same_models():
  """--stream (host-memory batches) and the in-memory loop give the same original
  and retrained weights."""
  from experiments.configs import default
  from experiments.pipeline import run as runner
  out = {}
  for stream in (False, True):
    cfg = default.get_config()
    cfg.methods = default.methods_config("finetune")
    cfg.seeds, cfg.seed_loop, cfg.stream = 1, "sequential", stream
    cfg.train.epochs = 3
    out[stream] = runner.run(cfg, {}, log=lambda s: None)
  for name in ("original", "retrain"):
    chex.assert_trees_all_close(out[True].model_sets[name].variables,
                                out[False].model_sets[name].variables, rtol=1e-5, atol=1e-6)
