"""orbax checkpoints round-trip and refuse mismatched trees."""

import chex
import jax
import pytest

from unlearn_jax import checkpoint, models



def test_round_trip_and_mismatch(tmp_path):
  m = models.get_model("cnn", 10)
  v = jax.vmap(lambda k: models.init_variables(m, k, (8, 8, 1)))(
      jax.random.split(jax.random.PRNGKey(0), 2))
  checkpoint.save_variables(tmp_path / "ckpt", v)
  back = checkpoint.restore_variables(tmp_path / "ckpt", v)
  chex.assert_trees_all_equal(v, back)
  other = jax.vmap(lambda k: models.init_variables(models.get_model("mlp", 10), k, (8, 8, 1)))(
      jax.random.split(jax.random.PRNGKey(0), 2))
  with pytest.raises(checkpoint.CheckpointError, match="does not match"):
    checkpoint.restore_variables(tmp_path / "ckpt", other)
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
    checkpoint.restore_variables(tmp_path / "nothing", v)
