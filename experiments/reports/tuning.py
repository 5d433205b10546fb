"""The tuning run's report: tuning.csv, tuned.json, report.md (default vs tuned on the
parts selection never saw), tuning.json and the per-method score plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unlearn_jax import methods as methods_lib, tuning
from ..pipeline.tuning import REPORT_KEYS, TuningResult, _config_text

def report_markdown(result: TuningResult, title: str) -> str:
  info = result.info
  retrain = next(r for r in result.table if r["method"] == "retrain")["default"]
  head = ["method", "RA", "FA", "TA", "MIA", "Avg. Gap", "→ tuned RA", "FA", "TA", "MIA",
          "Avg. Gap", "score", "tuned hyperparameters", "search × retrain"]
  lines = [f"## {title}", "",
           f"Selection rule `{info['rule']}` among the configurations that keep "
           f"{100 * info.get('min_retain', 0):g}% of the original's retain accuracy on the "
           f"selection part, {info['budget']} configurations × {info['seeds']} "
           f"seeds per method and per value of a searched integer hyperparameter (epochs) "
           f"({info['search_loop']}). Selected on "
           f"{info['selection_sizes']['forget_select']} forget and "
           f"{info['selection_sizes']['retain_select']} retain examples and the val split; "
           "every number below is on the examples selection never saw (the rest of D_f and "
           "D_r, and the test split), mean over seeds, accuracies in %. Avg. Gap: mean "
           "|gap| to retrain over RA, FA, TA, MIA (points). score: the selection score at "
           "the defaults → tuned (lower is better). search × retrain: the whole search's "
           "seconds per seed over retrain's.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  pct = lambda v: f"{100 * v:.1f}"
  for r in result.table:
    d, t = r["default"], r["tuned"]
    cells = [r["method"], pct(d["retain_acc"]), pct(d["forget_acc"]), pct(d["test_acc"]),
             f"{d['mia_loss_lr']:.2f}", f"{tuning.retrain_gap_score(d, retrain):.1f}"]
    if r["method"] in ("original", "retrain"):
      cells += ["", "", "", "", "", "", "", ""]
    else:
      hp = _config_text(r["tuned_config"])
      if not r.get("eligible", True):
        hp += " (†)"
      cells += [pct(t["retain_acc"]), pct(t["forget_acc"]), pct(t["test_acc"]),
                f"{t['mia_loss_lr']:.2f}", f"{tuning.retrain_gap_score(t, retrain):.1f}",
                f"{r['default_score']:.1f} → {r['tuned_score']:.1f}", hp,
                f"{r['cost_ratio_with_search']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  ranked = sorted((tuning.retrain_gap_score(r["tuned"], retrain), r["method"])
                  for r in result.table
                  if r["method"] not in ("original", "retrain"))
  if ranked:
    lines += ["", "Tuned, ranked by Avg. Gap: " + ", ".join(f"{m} {g:.1f}" for g, m in ranked)]
  if any(not r.get("eligible", True) for r in result.table):
    lines += ["", f"(†) no configuration kept {100 * info.get('min_retain', 0):g}% of the "
              "original's retain accuracy on the selection part: the one that kept the most."]
  lines += ["", f"Wall time {info['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def plot_scores(path: Path, rows: list, method: str, space: dict) -> None:
  """Selection score (mean over seeds) against each searched hyperparameter."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  mine = [r for r in rows if r["method"] == method]
  configs = sorted({r["config"] for r in mine})
  score = np.array([np.mean([r["score"] for r in mine if r["config"] == c]) for c in configs])
  names = sorted(space)
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    x = np.array([next(r[name] for r in mine if r["config"] == c) for c in configs])
    ax.scatter(x, score, s=14, color="tab:blue")
    ax.scatter(x[:1], score[:1], s=40, color="tab:orange", label="default")
    best = int(np.argmin(score))
    ax.scatter(x[best:best + 1], score[best:best + 1], s=40, marker="*", color="tab:red",
               label="chosen")
    if space[name][0] == "log":
      ax.set_xscale("log")
    ax.set_xlabel(name, fontsize=8)
    ax.tick_params(labelsize=6)
  axes[0][0].set_ylabel("selection score (lower is better)", fontsize=7)
  axes[0][0].legend(fontsize=6)
  fig.suptitle(method, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_tuning(directory: Path, result: TuningResult, config: dict, title: str,
                 plots: bool = True) -> str:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  searched = sorted({k for r in result.rows for k in r} - {"method", "config", "seed", "score"}
                    - {f"select_{k}" for k in REPORT_KEYS})
  fields = ["method", "config", "seed"] + searched + [f"select_{k}" for k in REPORT_KEYS] + ["score"]
  with open(directory / "tuning.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in result.rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
  (directory / "tuned.json").write_text(json.dumps(result.tuned, indent=2) + "\n")
  md = report_markdown(result, title)
  (directory / "report.md").write_text(md)
  (directory / "tuning.json").write_text(json.dumps(
      {"config": config, "info": result.info, "table": result.table}, indent=2, default=float) + "\n")
  if plots:
    (directory / "plots").mkdir(exist_ok=True)
    for m in result.tuned["methods"]:
      plot_scores(directory / "plots" / f"tuning_{m}.png", result.rows, m,
                  methods_lib.get_method(m).space)
  return md
