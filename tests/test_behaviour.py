"""Behaviour on real data (digits, 3 seeds): the numbers the README table quotes.

Class scenario: a method meant for class forgetting brings FA below 5% (retrain: 0%)
and keeps RA within 5 points of the original. Random scenario: FA moves toward
retrain's without overshooting by more than 2 points, RA within 5 points. A method that
misses a criterion with its defaults says so, with the number, under "Limits" in its
docstring (and in the README).
"""

import pytest

from experiments.configs import default
from experiments import runner, setup
from unlearn_jax import methods, report


CLASS_FORGETTERS = ("random_label", "ssd", "assd", "lfssd", "l1_sparse", "salun", "reinit", "scrub", "gisa",
                    "fisher_forgetting",
                    "boundary_shrink", "boundary_expand", "influence", "activation_reset")
RANDOM_OVERSHOOT = ("random_label", "salun", "boundary_shrink")


def _run(scenario):
  cfg = default.get_config()
  cfg.scenario = scenario
  cfg.forget_classes = "3" if scenario == "class" else ""
  # gkt trains a student from scratch for 3,300 steps: its digits check is in the slow set.
  cfg.methods = ",".join(m for m in setup.resolve_methods("", scenario, batch_norm=False)
                         if m != "gkt")
  return report.summarize(runner.run(cfg, {}, log=lambda s: None).rows)


@pytest.fixture(scope="module")
def class_summary():
  return _run("class")


@pytest.fixture(scope="module")
def random_summary():
  return _run("random")


WITH_DATA = [m for m in methods.list_methods() if methods.get_method(m).reads]
ZERO_SHOT_ON_MLP = ("zs_minmax_noise",)      # gkt (slow) and deepinversion (CNN): below


@pytest.mark.parametrize("name", WITH_DATA)
def test_class_scenario(class_summary, name):
  s, orig = class_summary[name], class_summary["original"]
  assert class_summary["retrain"]["forget_acc"][0] == 0.0
  meets = s["forget_acc"][0] < 0.05 and s["retain_acc"][0] >= orig["retain_acc"][0] - 0.05
  if name in CLASS_FORGETTERS:
    assert meets, (name, s)
  else:
    assert "Limits" in methods.get_method(name).factory.__doc__, name


@pytest.mark.parametrize("name", WITH_DATA)
def test_random_scenario(random_summary, name):
  s, orig, ret = random_summary[name], random_summary["original"], random_summary["retrain"]
  toward = abs(s["forget_acc"][0] - ret["forget_acc"][0]) <= \
      abs(orig["forget_acc"][0] - ret["forget_acc"][0]) + 0.02
  keeps = s["retain_acc"][0] >= orig["retain_acc"][0] - 0.05
  if name in RANDOM_OVERSHOOT:
    assert "Limits" in methods.get_method(name).factory.__doc__
    assert not (toward and keeps), f"{name} now meets the random criterion: update its docs"
  else:
    assert toward and keeps, (name, s, ret)


def zero_shot_meets(summary, name):
  """Issue 4's criterion: FA below 10%, RA at least 80% of the original's."""
  s, orig = summary[name], summary["original"]
  return s["forget_acc"][0] < 0.10 and s["retain_acc"][0] >= 0.8 * orig["retain_acc"][0]


@pytest.mark.parametrize("name", ZERO_SHOT_ON_MLP)
def test_zero_shot_class_scenario(class_summary, name):
  """The default class run (MLP) includes the zero-shot methods that need no BatchNorm."""
  assert "deepinversion" not in class_summary and "gkt" not in class_summary
  if not zero_shot_meets(class_summary, name):
    assert "Limits" in methods.get_method(name).factory.__doc__, (name, class_summary[name])


def test_ain_is_reported_in_the_class_scenario(class_summary):
  import math
  assert class_summary["retrain"]["ain"][0] == 1.0
  assert class_summary["original"]["ain"][0] == 0.0      # it never forgot: no steps needed
  assert all(not math.isnan(v["ain"][0]) for v in class_summary.values())


@pytest.mark.slow
def test_gkt_on_the_mlp():
  cfg = default.get_config()
  cfg.scenario, cfg.forget_classes, cfg.methods = "class", "3", "gkt"
  summary = report.summarize(runner.run(cfg, {}, log=lambda s: None).rows)
  assert zero_shot_meets(summary, "gkt"), summary["gkt"]


@pytest.mark.slow
def test_zero_shot_on_the_cnn():
  """All three zero-shot methods on digits with the BatchNorm CNN, 3 seeds (slow: a
  generator-driven student and image synthesis, minutes on 2 cores)."""
  cfg = default.get_config()
  cfg.scenario, cfg.forget_classes, cfg.model = "class", "3", "cnn"
  cfg.methods = "zs_minmax_noise,gkt,deepinversion"
  summary = report.summarize(runner.run(cfg, {"gkt": {"cycles": 60}}, log=lambda s: None).rows)
  for name in ("zs_minmax_noise", "gkt", "deepinversion"):
    if not zero_shot_meets(summary, name):
      assert "Limits" in methods.get_method(name).factory.__doc__, (name, summary[name])
