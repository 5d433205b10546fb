"""Behaviour on real data (digits, 3 seeds): the numbers the README table quotes.

Class scenario: a method meant for class forgetting brings FA below 5% (retrain: 0%)
and keeps RA within 5 points of the original. Random scenario: FA moves toward
retrain's without overshooting by more than 2 points, RA within 5 points. A method that
misses a criterion with its defaults says so, with the number, under "Limits" in its
docstring (and in the README).
"""

import pytest

from experiments.configs import default
from unlearn_jax import methods, report, runner

CLASS_FORGETTERS = ("random_label", "ssd", "l1_sparse", "salun", "reinit", "scrub", "gisa",
                    "boundary_shrink", "boundary_expand")
RANDOM_OVERSHOOT = ("random_label", "salun", "boundary_shrink")


def _run(scenario):
  cfg = default.get_config()
  cfg.scenario = scenario
  cfg.forget_classes = "3" if scenario == "class" else ""
  return report.summarize(runner.run(cfg, {}, log=lambda s: None).rows)


@pytest.fixture(scope="module")
def class_summary():
  return _run("class")


@pytest.fixture(scope="module")
def random_summary():
  return _run("random")


@pytest.mark.parametrize("name", methods.list_methods())
def test_class_scenario(class_summary, name):
  s, orig = class_summary[name], class_summary["original"]
  assert class_summary["retrain"]["forget_acc"][0] == 0.0
  meets = s["forget_acc"][0] < 0.05 and s["retain_acc"][0] >= orig["retain_acc"][0] - 0.05
  if name in CLASS_FORGETTERS:
    assert meets, (name, s)
  else:
    assert "Limits" in methods.get_method(name).factory.__doc__, name


@pytest.mark.parametrize("name", methods.list_methods())
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
