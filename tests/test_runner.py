"""The runner on scenarios the CLI tests do not cover."""

import pytest
import numpy as np
import tensorflow_datasets as tfds

from experiments.configs import default
from experiments.pipeline import run as runner
from unlearn_jax.data import load_dataset



def test_subclass_scenario_trains_on_coarse_labels_and_forgets_a_fine_class():
  with tfds.testing.mock_data(num_examples=80):
    ds = load_dataset("cifar100")
    fine = int(ds.train_y[0])
    cfg = default.get_config()
    cfg.update(dict(dataset="cifar100", model="mlp", scenario="subclass",
                    forget_classes=str(fine), seeds=1, train_subset=None))
    cfg.methods = default.methods_config("finetune")
    cfg.train.epochs = 1
    result = runner.run(cfg, {"finetune": {"epochs": 1}}, log=lambda s: None)
  np.testing.assert_array_equal(result.split.forget, np.flatnonzero(ds.train_y == fine))
  assert result.dataset.num_classes == 20  # the model sees coarse labels
  assert {r["method"] for r in result.rows} == {"original", "retrain", "finetune"}
  assert all(np.isfinite(r["forget_acc"]) for r in result.rows)


@pytest.mark.integration
def test_seeds_per_stage_run_every_trained_model_with_every_unlearning_seed():
  """--train_seeds 2 × --unlearn_seeds 2: four unlearned models per method in one program;
  unlearning seed 0 is the single-stage run (same keys; float tolerance, the vmapped
  program is twice as wide); the summary splits the spread."""
  from experiments.reports import run as report

  def run(unlearn_seeds):
    cfg = default.get_config()
    cfg.update(dict(seeds=2, unlearn_seeds=unlearn_seeds))
    cfg.methods = default.methods_config("finetune")
    cfg.train.epochs = 1
    return runner.run(cfg, {"finetune": {"epochs": 1}}, log=lambda s: None)

  two, one = run(2), run(1)
  ft = [r for r in two.rows if r["method"] == "finetune"]
  assert [(r["train_seed"], r["unlearn_seed"]) for r in ft] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert [r["unlearn_seed"] for r in two.rows if r["method"] == "retrain"] == [0, 0]
  single = {r["train_seed"]: r for r in one.rows if r["method"] == "finetune"}
  for r in ft:
    if r["unlearn_seed"] == 0:
      assert r["forget_acc"] == single[r["train_seed"]]["forget_acc"]
      np.testing.assert_allclose(r["retain_loss"], single[r["train_seed"]]["retain_loss"],
                                 rtol=1e-5)
  assert ft[0]["retain_loss"] != ft[1]["retain_loss"]      # another unlearning key
  spread = report.stage_spread(two.rows)
  assert set(spread) == {"finetune"} and set(spread["finetune"]["forget_acc"]) == {
      "train", "unlearn"}
  assert report.stage_spread(one.rows) == {}
