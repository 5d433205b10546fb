"""Mesh helpers on this process's devices, and the 8-device suite in its own process."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import parallel


ROOT = Path(__file__).resolve().parents[1]


def test_shard_batch_is_the_identity_outside_a_mesh():
  x = jnp.arange(12.0).reshape(4, 3)
  assert parallel.shard_batch(x) is x
  assert parallel.active_mesh() is None


def test_mesh_that_the_devices_cannot_form_is_refused():
  n = jax.device_count()
  with pytest.raises(parallel.MeshError, match=f"needs {2 * n} devices; {n} are visible"):
    parallel.make_mesh(data=2 * n)
  with pytest.raises(parallel.MeshError, match=">= 1"):
    parallel.make_mesh(seeds=0)


def test_one_device_mesh_runs_a_step():
  mesh = parallel.make_mesh(data=1)
  assert dict(mesh.shape) == {"seeds": 1, "data": 1}
  with parallel.data_parallel(mesh):
    y = jax.jit(lambda a: parallel.shard_batch(a) * 2)(parallel.replicate(jnp.ones((4, 2))))
  assert float(y.sum()) == 16.0


def test_runner_refuses_impossible_mesh_flags():
  from experiments.configs import default
  from experiments.pipeline import experiment, usage
  cfg = default.get_config()
  cfg.mesh_data = 64 * jax.device_count()
  with pytest.raises(usage.UsageError, match="--config.mesh_seeds=1 --config.mesh_data="):
    experiment.setup(cfg, log=lambda s: None)


def _sharded(*args):
  """tests/sharded in a fresh process (the device count is fixed at JAX's first backend use,
  so it cannot share this one), in one worker (`-n 0`: each would simulate 8 devices)."""
  env = {**os.environ, "UNLEARN_JAX_SHARDED": "1"}
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", *args,
                         "tests/sharded"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=1200)
  tail = (proc.stdout + proc.stderr)[-3000:]
  assert proc.returncode == 0, tail
  assert " passed" in tail and "failed" not in tail, tail


@pytest.mark.optimised
def test_sharded_suite_on_eight_simulated_devices():
  """Training, BatchNorm training, finetune, ssd, scrub, seeds x data, streaming and the
  mesh errors on 8 simulated CPU devices vs one."""
  _sharded()


@pytest.mark.optimised
@pytest.mark.slow
def test_sharded_whole_experiments_on_eight_simulated_devices():
  """The whole runner and the population evaluation on 8 simulated devices vs one
  (`pytest -m slow`; a minute and a half of the default suite's budget otherwise)."""
  _sharded("-m", "slow")


def test_distributed_flag_calls_jax_distributed_initialize(monkeypatch):
  """--distributed hands the cluster settings to jax.distributed.initialize (with none
  given, JAX auto-detects SLURM / Open MPI / TPU pods)."""
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  parallel.initialize_distributed()
  parallel.initialize_distributed("10.0.0.1:1234", 2, 1)
  assert seen == [{}, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                       "process_id": 1}]


def test_local_batch_slice_is_the_whole_batch_on_one_process():
  assert parallel.local_batch_slice(64) == slice(0, 64)


def test_seed_slots_pair_training_and_unlearning_seeds():
  from unlearn_jax import driver
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(3)])
  one = driver.SeedSlots(3, 1)
  chex.assert_trees_all_equal(one.method_keys(keys, "ssd"),
                              jax.vmap(lambda k: driver.method_key(k, "ssd"))(keys))
  two = driver.SeedSlots(3, 2)
  assert two.size == 6 and two.stages(3) == (1, 1) and two.stages(4) == (2, 0)
  k = two.method_keys(keys, "ssd")
  chex.assert_trees_all_equal(k[::2], one.method_keys(keys, "ssd"))
  assert not bool(jnp.all(k[0] == k[1]))
  tiled = two.tile({"w": jnp.arange(3.0)})
  np.testing.assert_array_equal(tiled["w"], [0, 0, 1, 1, 2, 2])
