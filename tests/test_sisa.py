"""SISA (unlearn_jax.sisa): exactness of a deletion, checkpoints, aggregation, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import models, sisa

CONFIG = sisa.SisaConfig(shards=3, slices=3, epochs_per_slice=2, batch_size=32)


@pytest.fixture(scope="module")
def small(digits):
  return models.get_model("mlp:32", 10), (digits.train_x[:300], digits.train_y[:300])


def _shard(tree, s):
  return jax.tree_util.tree_map(lambda a: a[s], tree)


# sequential: the integration lane, for the default lane's 5 minutes (CI runs both lanes)
@pytest.mark.parametrize("loop", [pytest.param("sequential", marks=pytest.mark.integration),
                                  "vmap"])
def test_a_deletion_equals_training_the_shard_from_scratch_without_it(small, loop, tmp_path):
  """Delete two examples of slice 2 of shard 1: shard 1 restarts from its stage-1
  checkpoint; its weights then equal a from-scratch SISA run without the two examples with
  the same keys — bitwise with one compiled single-shard program per shard; with the vmapped
  program to float tolerance (XLA's batched kernels differ in the last bit across widths).
  The other shards are untouched."""
  model, data = small
  state = sisa.train_sisa(model, data, jax.random.PRNGKey(0), CONFIG, shard_loop=loop,
                          checkpoint_dir=tmp_path / "ckpt")
  before = state.variables
  gone = np.flatnonzero((state.shard_of == 1) & (state.slice_of == 1))[:2]
  report = sisa.unlearn_sisa(state, gone)
  assert report["affected_shards"] == [1] and report["restart_stage"] == {1: 2}
  assert 0 < report["examples_retrained"] < report["full_retrain_examples"]
  scratch = sisa.train_sisa(model, data, jax.random.PRNGKey(0), CONFIG, shard_loop=loop,
                            deleted=gone)
  if loop == "sequential":
    chex.assert_trees_all_equal(_shard(state.variables, 1), _shard(scratch.variables, 1))
  else:
    chex.assert_trees_all_close(_shard(state.variables, 1), _shard(scratch.variables, 1),
                                atol=1e-5)
  for s in (0, 2):
    chex.assert_trees_all_equal(_shard(state.variables, s), _shard(before, s))
  # The stage checkpoints on disk follow the deletion.
  restored = sisa.restore_stage(tmp_path / "ckpt", state.stage_states[3], 3)
  chex.assert_trees_all_equal(restored, state.stage_states[3])
  again = sisa.unlearn_sisa(state, gone)
  assert again["deleted"] == 0 and again["already_deleted"] == 2


@pytest.mark.optimised
def test_vmapped_deletions_pad_the_group_and_reuse_programs(small):
  """Groups of 1, 3, 2 and 3 affected shards (S = 4) run as vmapped widths 1, 4, 2, 4: idle
  copies pad a group to a power of two, so the stage program compiles once per width (the
  training's 4, then 1 and 2) and stage length: 3 × 2, where one program per group size
  would be 4 × 2; the padded run stays exact (float
  tolerance, as above) against training from scratch without every deleted example."""
  model, data = small
  config = sisa.SisaConfig(shards=4, slices=2, epochs_per_slice=1, batch_size=32)
  state = sisa.train_sisa(model, data, jax.random.PRNGKey(0), config, shard_loop="vmap")
  first = lambda s, skip=0: int(np.flatnonzero((state.shard_of == s) & (state.slice_of == 0))[skip])
  gone = []
  for group, skip in (([0], 0), ([1, 2, 3], 0), ([0, 1], 1), ([1, 2, 3], 2)):
    batch = [first(s, skip) for s in group]
    gone += batch
    assert sisa.unlearn_sisa(state, batch)["affected_shards"] == group
  assert state.programs["vmap"].executables() == 3 * config.slices
  scratch = sisa.train_sisa(model, data, jax.random.PRNGKey(0), config, shard_loop="vmap",
                            deleted=np.asarray(gone))
  chex.assert_trees_all_close(state.variables, scratch.variables, atol=1e-5)


def test_aggregation_by_vote_and_by_mean_logits():
  logits = jnp.array([[[5.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]])  # [S=3, n=1, C]
  assert int(sisa.aggregate(logits, "vote")[0]) == 1              # two of three vote 1
  assert int(sisa.aggregate(logits, "mean_logits")[0]) == 0       # the mean favours 0
  tie = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
  assert int(sisa.aggregate(tie, "vote")[0]) == 0                  # ties: lowest class
  with pytest.raises(ValueError, match="allowed: vote, mean_logits"):
    sisa.aggregate(logits, "median")


def test_bad_settings_are_named(small):
  model, data = small
  with pytest.raises(ValueError, match="shard_loop='pmap' is unknown"):
    sisa.train_sisa(model, data, jax.random.PRNGKey(0), CONFIG, shard_loop="pmap")
  with pytest.raises(ValueError, match="exceeds the 300 training examples"):
    sisa.train_sisa(model, data, jax.random.PRNGKey(0), sisa.SisaConfig(shards=20, slices=20))
  state = sisa.train_sisa(model, data, jax.random.PRNGKey(0),
                          sisa.SisaConfig(shards=2, slices=1, epochs_per_slice=1))
  with pytest.raises(ValueError, match=r"must lie in \[0, 300\)"):
    sisa.unlearn_sisa(state, [300])
