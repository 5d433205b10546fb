r"""Renders docs/results/population/README.md from a population evaluation and a KLOM curve run.

    python -m experiments.reports.population_docs --evaluation=runs/population_cifar64 \
        --curve=runs/klom_curve_cifar64 --out=docs/results/population

Copies the runs' CSV/JSON and the curve plot next to the page and writes the tables from
them (nothing typed by hand), stamped with the commands given, the commit, the date, the
JAX version and the machine.
"""

import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from .population import intervals_markdown, ranked_with_ties, with_interval

flags.DEFINE_string("evaluation", None, "run directory of experiments.evaluate")
flags.DEFINE_string("curve", None, "run directory of experiments.klom_curve")
flags.DEFINE_string("out", "docs/results/population", "output directory")
flags.DEFINE_string("evaluation_command", "", "the command that produced --evaluation")
flags.DEFINE_string("curve_command", "", "the command that produced --curve")
flags.DEFINE_float("evaluation_seconds", 0.0, "its wall time in seconds (0: from the run)")
F = flags.FLAGS


def _number(text):
  try:
    return float(text)
  except (TypeError, ValueError):
    return text


def stamp() -> str:
  import jax
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  cpuinfo = Path("/proc/cpuinfo")
  names = [line.split(":", 1)[1].strip() for line in
           (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
           if line.startswith("model name")]
  cpu = names[0] if names else (platform.processor() or platform.machine())
  import os
  return (f"commit {commit}, {time.strftime('%Y-%m-%d')}, JAX {jax.__version__}, "
          f"{jax.default_backend()} ({os.cpu_count()} cores, {cpu})")


def _method_rows(rows: list) -> list:
  """The methods table's rows, ranked with ties by KLOM average_95."""
  f2 = lambda r, k: f"{float(r[k]):.2f}"
  pct = lambda r, k: f"{100 * float(r[k]):.1f}"
  lines = []
  numeric = [{k: _number(v) for k, v in r.items()} for r in rows]
  verdict = lambda v: {"True": "yes", "False": "no"}.get(v, "–")
  for rank, r in ranked_with_ties(numeric, "klom_average_95", lower_is_better=True):
    raw = next(x for x in rows if x["method"] == r["method"])
    lines.append("| " + " | ".join([
        str(rank), r["method"], with_interval(r, "klom_average_95"),
        verdict(raw["klom_distinguishable_from_floor"]),
        verdict(raw["klom_distinguishable_from_original"]),
        f2(raw, "klom_forget_p95"), f2(raw, "klom_retain_p95"), f2(raw, "klom_test_p95"),
        f2(raw, "klom_oracle_unlearned_average_95"),
        with_interval(r, "forgetting_quality", "{:.3f}"), f2(raw, "ulira_accuracy"),
        pct(raw, "retain_acc"), pct(raw, "forget_acc"), pct(raw, "test_acc")]) + " |")
  return lines


def _curve_lines(curve: dict, out: Path) -> list:
  """The how-many-models section from experiments.klom_curve's curve.json."""
  lines = []
  ci = curve["info"]
  lines += ["", "## How many models KLOM needs", "",
            f"Command: `{F.curve_command}`" if F.curve_command else "",
            "", "![KLOM p95 by N](klom_curve.png)", "",
            "| N | direction | forget: nothing / floor | retain: nothing / floor | test: nothing / floor |",
            "|---|---|---|---|---|"]
  for n in ci["sizes"]:
    for d in ("unlearned_oracle", "oracle_unlearned"):
      cell = lambda s: next(f"{r['do_nothing_p95']:.2f} / {r['floor_p95']:.2f}"
                            for r in curve["rows"] if r["num_models"] == n and r["split"] == s
                            and r["direction"] == d)
      lines.append(f"| {n} | {d} | {cell('forget')} | {cell('retain')} | {cell('test')} |")
  if "intervals" in ci:
    lines += intervals_markdown(ci)
    if (out / "klom_intervals.png").exists():
      lines += ["", "![KLOM average_95 with its interval by N](klom_intervals.png)"]
  first = ci.get("first_ranking_n")
  lines += ["", ("The floor (a second set of oracles against the oracles: what a perfect "
                 f"method scores) first falls below doing nothing on the forget split at N = "
                 f"{first}." if first else "At no N measured does the floor fall below doing "
                 "nothing on the forget split."), ""]
  return lines


def main(argv):
  del argv
  if not F.evaluation or not F.curve:
    print("error: --evaluation and --curve are required", file=sys.stderr)
    sys.exit(2)
  ev, cu, out = Path(F.evaluation), Path(F.curve), Path(F.out)
  for p, what in ((ev / "evaluation.csv", "--evaluation"), (cu / "curve.json", "--curve")):
    if not p.exists():
      print(f"error: {what}: {p} does not exist", file=sys.stderr)
      sys.exit(2)
  out.mkdir(parents=True, exist_ok=True)
  for src in (ev / "evaluation.csv", ev / "evaluation.json", cu / "curve.csv",
              cu / "curve.json"):
    shutil.copy(src, out / src.name)
  shutil.copy(cu / "plots" / "curve.png", out / "klom_curve.png")
  if (cu / "plots" / "intervals.png").exists():
    shutil.copy(cu / "plots" / "intervals.png", out / "klom_intervals.png")
  rows = list(csv.DictReader(open(ev / "evaluation.csv")))
  info = json.loads((ev / "evaluation.json").read_text()).get("info", {})
  curve = json.loads((cu / "curve.json").read_text())
  lines = [
      "# A population benchmark where KLOM can rank methods", "",
      f"Generated by `experiments/reports/population_docs.py` from the runs below; {stamp()}.",
      "", "## Methods at N = " + rows[0]["num_models"], "",
      f"Command: `{F.evaluation_command}`" if F.evaluation_command else "",
      (f"Wall time {F.evaluation_seconds or info.get('wall_seconds', float('nan')):.0f} s."),
      "",
      f"Every row scores h = {rows[0]['models_per_side']} of its models against the same h "
      "oracles (the second half of the retrained models); the `retrain` row scores the "
      "first half of the retrained models against them: the floor, what a perfect method "
      "shows with the same number of models; `original` is doing nothing. KLOM p95 (nats, "
      "the Easy Data Unlearning Bench's rule) over the forget / retain / test (held-out) "
      "examples, `average_95` the mean of the three with its 95% bootstrap interval over "
      "models, in the benchmark's direction KL(unlearned ‖ oracle) and, in its own column, "
      "KL(oracle ‖ unlearned); ≠ floor / ≠ nothing: whether the interval of the row's "
      "average_95 minus the floor's / doing nothing's excludes 0; rank: 1 + the rows whose "
      "interval lies wholly below (overlapping intervals share a rank). F: forgetting "
      "quality (NeurIPS 2023 scoring, 1 ideal) with its interval; U-LiRA attack accuracy "
      "(0.5 ideal).", "",
      "| rank | method | average_95 [95%] | ≠ floor | ≠ nothing | KLOM forget | KLOM retain "
      "| KLOM test | average_95 (oracle ‖ unlearned) | F [95%] | U-LiRA | RA | FA | TA |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += _method_rows(rows)
  lines += _curve_lines(curve, out)
  (out / "README.md").write_text("\n".join(l for l in lines if l is not None) + "\n")
  print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
  app.run(main)
