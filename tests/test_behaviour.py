"""Behaviour on real data (digits, 3 seeds): every method at its defaults held to its
recorded band, and the field's criteria for the methods meant to meet them.

Bands: `tests/expected/behaviour_digits.csv` records RA, FA and TA of every method (and of
the original and retrained references) in the 10% random and the class-3 scenario, with a
band derived from the seed spread (`tests/expected/behaviour_digits.py` gives the rule and
regenerates the table). A method that leaves its band in either direction fails, naming the
method, the metric, the value and the band.

Criteria: class scenario, a method meant for class forgetting brings FA below 5% (retrain:
0%) and keeps RA within 5 points of the original; random scenario, FA moves toward
retrain's (no overshoot beyond 2 points) with RA within 5 points, for every method but the
three that read no retain data and overshoot by design of their update.
"""

import math
import sys
from pathlib import Path

import pytest

from experiments import runner
from experiments.configs import default
from experiments import report
from unlearn_jax import methods

sys.path.insert(0, str(Path(__file__).resolve().parent / "expected"))
import behaviour_digits as recorded  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_log  # noqa: E402

REGENERATE = "python tests/expected/behaviour_digits.py"
TABLE = recorded.read_table()

CLASS_FORGETTERS = ("random_label", "ssd", "assd", "lfssd", "l1_sparse", "salun", "reinit",
                    "scrub", "gisa", "fisher_forgetting", "boundary_shrink", "boundary_expand",
                    "influence", "activation_reset")
RANDOM_OVERSHOOT = ("random_label", "salun", "boundary_shrink")
WITH_DATA = [m for m in methods.list_methods() if methods.get_method(m).reads]
ZERO_SHOT_ON_MLP = ("zs_minmax_noise",)      # gkt (slow) and deepinversion (CNN): below
REFERENCES = ("original", "retrain")
CASES = [(s, m) for s in recorded.SCENARIOS
         for m in REFERENCES + tuple(WITH_DATA) + (ZERO_SHOT_ON_MLP if s == "class" else ())]


COMPILES = {}   # scenario -> the run's compile log (tests/compile_log.py)


def _run(scenario):
  with compile_log.compiles() as counts:
    summary = recorded.run_scenario(scenario)
  COMPILES[scenario] = counts
  return summary


@pytest.fixture(scope="module")
def class_summary():
  return _run("class")


@pytest.fixture(scope="module")
def random_summary():
  return _run("random")


@pytest.mark.parametrize("scenario", recorded.SCENARIOS)
def test_the_run_compiles_each_program_once(request, scenario):
  """The compile-count contract on the same runs (vmapped seeds, every method of the
  scenario): no program is compiled twice, and each method is exactly one program."""
  request.getfixturevalue(f"{scenario}_summary")
  counts = COMPILES[scenario]
  assert not compile_log.compiled_twice(counts), compile_log.compiled_twice(counts)
  per = compile_log.per_program(counts)
  ran = [m for m in methods.list_methods() if f"jit(unlearn_{m})" in per]
  expected = [m for m in WITH_DATA + list(ZERO_SHOT_ON_MLP if scenario == "class" else ())]
  assert sorted(ran) == sorted(expected), "a method compiled no program of its own"
  assert all(per[f"jit(unlearn_{m})"] == 1 for m in ran), {m: per[f"jit(unlearn_{m})"]
                                                           for m in ran}


def outside_band(table: dict, scenario: str, name: str, summary: dict) -> list:
  """One message per metric of `name` outside its recorded band."""
  out = []
  for metric in recorded.METRICS:
    row = table.get((scenario, name, metric))
    if row is None:
      out.append(f"{name} {metric}: no recorded expectation")
      continue
    value = summary[name][metric][0]
    if not row["low"] <= value <= row["high"]:
      out.append(f"{name} {metric} = {value:.4f} is outside its band [{row['low']:.4f}, "
                 f"{row['high']:.4f}] (recorded {row['value']:.4f}, seed std {row['std']:.4f})")
  return out


def test_the_table_records_every_case_and_nothing_else():
  recorded_cases = {(s, m) for s, m, _ in TABLE}
  assert recorded_cases == set(CASES), (
      f"stale or missing rows: {sorted(recorded_cases ^ set(CASES))}; regenerate: {REGENERATE}")
  for (s, m, metric), row in TABLE.items():
    assert row["low"] <= row["value"] <= row["high"], (s, m, metric, row)
    assert row["high"] - row["low"] >= min(2 * recorded.FLOOR, 1.0) - 1e-3 or \
        row["low"] == 0.0 or row["high"] == 1.0, (s, m, metric, row)


@pytest.mark.parametrize("scenario,name", CASES)
def test_every_method_stays_in_its_recorded_band(request, scenario, name):
  summary = request.getfixturevalue(f"{scenario}_summary")
  assert name in summary, f"{name} did not run in the {scenario} scenario"
  problems = outside_band(TABLE, scenario, name, summary)
  assert not problems, (f"{scenario} scenario: " + "; ".join(problems) +
                        f". If the change is meant to move it, regenerate: {REGENERATE}")


def test_the_band_check_names_the_method_metric_and_band():
  """The check itself: a value one point past the band fails with every detail named."""
  row = TABLE[("class", "ssd", "forget_acc")]
  summary = {"ssd": {m: (TABLE[("class", "ssd", m)]["value"], 0.0) for m in recorded.METRICS}}
  assert outside_band(TABLE, "class", "ssd", summary) == []
  summary["ssd"]["forget_acc"] = (row["high"] + 0.01, 0.0)
  (message,) = outside_band(TABLE, "class", "ssd", summary)
  assert message.startswith(f"ssd forget_acc = {row['high'] + 0.01:.4f} is outside its band "
                            f"[{row['low']:.4f}, {row['high']:.4f}]"), message


@pytest.mark.parametrize("name", CLASS_FORGETTERS)
def test_class_forgetters_meet_the_class_criterion(class_summary, name):
  s, orig = class_summary[name], class_summary["original"]
  assert class_summary["retrain"]["forget_acc"][0] == 0.0
  assert s["forget_acc"][0] < 0.05, (name, s["forget_acc"])
  assert s["retain_acc"][0] >= orig["retain_acc"][0] - 0.05, (name, s["retain_acc"])


@pytest.mark.parametrize("name", [m for m in WITH_DATA if m not in RANDOM_OVERSHOOT])
def test_random_scenario_moves_toward_retrain_and_keeps_retain(random_summary, name):
  s, orig, ret = random_summary[name], random_summary["original"], random_summary["retrain"]
  toward = abs(s["forget_acc"][0] - ret["forget_acc"][0]) <= \
      abs(orig["forget_acc"][0] - ret["forget_acc"][0]) + 0.02
  assert toward, (name, s["forget_acc"], ret["forget_acc"])
  assert s["retain_acc"][0] >= orig["retain_acc"][0] - 0.05, (name, s["retain_acc"])


def zero_shot_meets(summary, name):
  """The zero-shot criterion: FA below 10%, RA at least 80% of the original's."""
  s, orig = summary[name], summary["original"]
  return s["forget_acc"][0] < 0.10 and s["retain_acc"][0] >= 0.8 * orig["retain_acc"][0]


def test_ain_is_reported_in_the_class_scenario(class_summary):
  assert "deepinversion" not in class_summary and "gkt" not in class_summary
  assert class_summary["retrain"]["ain"][0] == 1.0
  assert class_summary["original"]["ain"][0] == 0.0      # it never forgot: no steps needed
  assert all(not math.isnan(v["ain"][0]) for v in class_summary.values())


@pytest.mark.slow
def test_gkt_on_the_mlp():
  cfg = default.get_config()
  cfg.scenario, cfg.forget_classes, cfg.methods = "class", "3", "gkt"
  summary = report.summarize(runner.run(cfg, {}, log=lambda s: None).rows)
  assert zero_shot_meets(summary, "gkt"), summary["gkt"]


@pytest.fixture(scope="module")
def zero_shot_cnn_summary():
  """All three zero-shot methods on digits with the BatchNorm CNN, 3 seeds, one run (slow: a
  generator-driven student and image synthesis, ~25 min on 2 cores)."""
  cfg = default.get_config()
  cfg.scenario, cfg.forget_classes, cfg.model = "class", "3", "cnn"
  cfg.methods = "zs_minmax_noise,gkt,deepinversion"
  return report.summarize(runner.run(cfg, {"gkt": {"cycles": 60}}, log=lambda s: None).rows)


GKT_ON_THE_CNN = pytest.mark.xfail(
    strict=True, reason="gkt at 60 cycles on the digits CNN erases the class but keeps too "
    "little retain accuracy (measured 2026-12-01, 3 seeds: FA 0.0%, RA 69.7% < 80% of the "
    "original's); the paper runs thousands of cycles. Strict: meeting it fails this mark")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zs_minmax_noise", "deepinversion",
                                  pytest.param("gkt", marks=GKT_ON_THE_CNN)])
def test_zero_shot_on_the_cnn(zero_shot_cnn_summary, name):
  s = zero_shot_cnn_summary[name]
  assert zero_shot_meets(zero_shot_cnn_summary, name), \
      f"{name}: FA {s['forget_acc'][0]:.3f}, RA {s['retain_acc'][0]:.3f}"
