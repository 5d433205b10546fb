"""The recorded behaviour of every method on digits at its defaults, and the command that
regenerates it.

    python tests/expected/behaviour_digits.py        # rewrites behaviour_digits.csv (~5 min)

Two runs of the default experiment (digits MLP, 3 training seeds, every method meant for
the scenario at its defaults; gkt, a student trained from scratch, is in the slow set): the
10% random scenario and the class scenario (class 3). For each method (and the original
and retrained references) and each of RA, FA, TA the table holds the mean over seeds, the
seed spread (sample std) and a band:

    half-width = max(FLOOR, K · std / sqrt(seeds)),   band = value ± half-width, within [0, 1]

i.e. K standard errors of the 3-seed mean, and never narrower than FLOOR (3 points) so that
a benign change of summation order or a JAX upgrade does not fail it. tests/test_behaviour.py
reruns both experiments exactly so (the default lane: XLA optimisations off) and fails when a
method leaves its band in either direction. A change that is meant to move a number
regenerates the table, so the diff shows in review.
"""

import csv
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")    # as the default test lane

TABLE = Path(__file__).resolve().with_name("behaviour_digits.csv")
SCENARIOS = ("random", "class")
METRICS = ("retain_acc", "forget_acc", "test_acc")
FLOOR = 0.03
K = 3.0
SLOW_METHODS = ("gkt",)


def run_scenario(scenario: str) -> dict:
  """method -> {metric: (mean, std)} of the default experiment in `scenario`."""
  from experiments import runner, setup
  from experiments.configs import default
  from experiments import report
  cfg = default.get_config()
  cfg.scenario = scenario
  cfg.forget_classes = "3" if scenario == "class" else ""
  cfg.methods = ",".join(m for m in setup.resolve_methods("", scenario, batch_norm=False)
                         if m not in SLOW_METHODS)
  return report.summarize(runner.run(cfg, {}, log=lambda s: None).rows)


def band(value: float, std: float, seeds: int) -> tuple:
  half = max(FLOOR, K * std / math.sqrt(seeds))
  return max(0.0, value - half), min(1.0, value + half)


def read_table(path: Path = TABLE) -> dict:
  """(scenario, method, metric) -> row dict with floats."""
  with open(path) as f:
    return {(r["scenario"], r["method"], r["metric"]):
            {**r, **{k: float(r[k]) for k in ("value", "std", "low", "high")}}
            for r in csv.DictReader(f)}


def main() -> None:
  from experiments.configs import default
  seeds = int(default.get_config().seeds)
  rows = []
  for scenario in SCENARIOS:
    print(f"running the {scenario} scenario ...", flush=True)
    summary = run_scenario(scenario)
    for method in sorted(summary):
      for metric in METRICS:
        mean, std = summary[method][metric]
        low, high = band(mean, std, seeds)
        rows.append(dict(scenario=scenario, method=method, metric=metric,
                         value=f"{mean:.4f}", std=f"{std:.4f}", low=f"{low:.4f}",
                         high=f"{high:.4f}"))
  with open(TABLE, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"wrote {len(rows)} rows to {TABLE}")


if __name__ == "__main__":
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
  main()
