"""`experiments.pipeline.reference_models.references`, the one way every stage gets its
original and retrained models: they are trained (not their initial weights), in chunks
or at once alike, and `--config.references_dir` restores exactly what was saved, per
population and fingerprint."""

import jax
import numpy as np
import pytest

from experiments.configs import default
from experiments.pipeline import experiment, reference_models
from unlearn_jax import train as train_lib


@pytest.fixture(scope="module")
def small():
  cfg = default.get_config()
  cfg.dataset, cfg.train_subset, cfg.seeds = "digits", 300, 2
  cfg.methods = default.methods_config("finetune")
  cfg.train.epochs = 8
  return cfg, experiment.setup(cfg, lambda s: None)


def _accuracy(st, variables, idx) -> np.ndarray:
  """[models] training accuracy on the examples `idx`."""
  x, y = st.ds.train_x[idx], st.ds.train_y[idx]
  logits = jax.vmap(lambda v: train_lib.predict(st.model, v, x))(variables)
  return np.asarray((np.argmax(logits, -1) == y).mean(-1))


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                  jax.tree_util.tree_leaves(b)))


def test_the_references_are_trained_the_original_on_the_forget_set_too(small):
  """The original fits the forget set it saw; the retrained model only the retain set: a
  function returning the initial weights (chance) or the same model twice fails."""
  cfg, st = small
  refs = reference_models.references(cfg, st, 2, lambda s: None)
  init = reference_models.initial_variables(st, reference_models.seed_keys(cfg.seed, 2))
  forget, retain = st.split.forget, st.split.retain
  assert not refs.reused
  assert (_accuracy(st, init, retain) < 0.3).all()
  assert (_accuracy(st, refs.original.variables, retain) > 0.8).all()
  assert (_accuracy(st, refs.retrain.variables, retain) > 0.8).all()
  assert (_accuracy(st, refs.original.variables, forget) > 0.8).all()
  assert not _equal(refs.original.variables, refs.retrain.variables)


def test_chunks_train_the_models_all_at_once_trains(small):
  cfg, st = small
  whole = reference_models.references(cfg, st, 2, lambda s: None, names=("original",))
  chunked = reference_models.references(cfg, st, 2, lambda s: None, names=("original",),
                                        chunk=1)
  for a, b in zip(jax.tree_util.tree_leaves(whole.original.variables),
                  jax.tree_util.tree_leaves(chunked.original.variables)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_cache_restores_what_it_saved_per_population_and_fingerprint(small, tmp_path):
  cfg, st = small
  cfg = cfg.copy_and_resolve_references()
  cfg.references_dir = str(tmp_path)
  logs = []
  first = reference_models.references(cfg, st, 2, logs.append)
  again = reference_models.references(cfg, st, 2, logs.append, names=("original",))
  assert not first.reused and again.reused and again.retrain is None
  assert _equal(first.original.variables, again.original.variables)
  assert sum("reusing the references" in line for line in logs) == 1
  other_seeds = reference_models.references(cfg, st, 2, logs.append, names=("retrain",),
                                            first_seed=7)
  assert not other_seeds.reused
  assert not _equal(other_seeds.retrain.variables, first.retrain.variables)
  assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
