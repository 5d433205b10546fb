"""The runner on scenarios the CLI tests do not cover."""

import pytest
import numpy as np
import tensorflow_datasets as tfds

from experiments.configs import default
from experiments import runner, setup
from unlearn_jax.data import load_dataset



def test_subclass_scenario_trains_on_coarse_labels_and_forgets_a_fine_class():
  with tfds.testing.mock_data(num_examples=80):
    ds = load_dataset("cifar100")
    fine = int(ds.train_y[0])
    cfg = default.get_config()
    cfg.update(dict(dataset="cifar100", model="mlp", scenario="subclass",
                    forget_classes=str(fine), methods="finetune", seeds=1))
    cfg.train.epochs = 1
    result = runner.run(cfg, {"finetune": {"epochs": 1}}, log=lambda s: None)
  np.testing.assert_array_equal(result.split.forget, np.flatnonzero(ds.train_y == fine))
  assert result.dataset.num_classes == 20  # the model sees coarse labels
  assert {r["method"] for r in result.rows} == {"original", "retrain", "finetune"}
  assert all(np.isfinite(r["forget_acc"]) for r in result.rows)
