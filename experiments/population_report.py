"""A population evaluation's artifacts: evaluation.csv, report.md, evaluation.json,
epsilons.npz and plots/ (per-example ε histograms, U/R distributions, method × metric
chart). The metrics themselves are `unlearn_jax.evaluation`'s."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from unlearn_jax.evaluation import KLOM_SPLITS

CSV_COLUMNS = ("method", "forgetting_quality", "competition_score", "eps_hat_median",
               "ulira_accuracy", "mia_efficacy", "avg_gap", "retain_acc", "forget_acc",
               "test_acc", "seconds", "forgetting_quality_kaggle", "eps_hat_inf_fraction",
               "js_to_retrain", "activation_distance", "zrf", "num_models",
               "klom_forget_p95", "klom_forget_p50", "klom_retain_p95", "klom_retain_p50",
               "klom_test_p95", "klom_test_p50", "klom_average_95", "klom_direction",
               "klom_oracle_unlearned_forget_p95", "klom_oracle_unlearned_average_95",
               "audit_epsilon_lb")


@dataclasses.dataclass
class Evaluation:
  rows: list                  # one dict per method (CSV_COLUMNS)
  epsilons: dict              # method -> per-example ε [S]
  statistics: dict            # method -> logit-scaled confidence on D_f [N, S]
  info: dict


def write_csv(path: Path, rows: list) -> None:
  import csv
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def population_signal(rows: list) -> dict | None:
  """The population table's memorisation signal: the untouched original's F against the
  retrain floor (F of retrained vs retrained), and original FA − retrain FA (points).

  It discriminates when the original is clearly told apart from retraining,
  F_original ≤ F_floor / 2, and FA differs by ≥ `report.MIN_SIGNAL_POINTS`; otherwise a
  method can score near the floor by doing nothing."""
  from .report import MIN_SIGNAL_POINTS
  by = {r["method"]: r for r in rows}
  if "original" not in by or "retrain" not in by:
    return None
  f_o, f_r = by["original"]["forgetting_quality"], by["retrain"]["forgetting_quality"]
  points = 100 * (by["original"]["forget_acc"] - by["retrain"]["forget_acc"])
  return {"original_f": f_o, "floor_f": f_r, "fa_points": points,
          "discriminates": bool(f_o <= f_r / 2 and points >= MIN_SIGNAL_POINTS)}


def signal_markdown(signal: dict) -> str:
  line = (f"Memorisation signal: the untouched original scores F = {signal['original_f']:.3f} "
          f"against the retrain floor F = {signal['floor_f']:.3f}; original FA − retrain FA = "
          f"{signal['fa_points']:.1f} points.")
  if not signal["discriminates"]:
    line += (" **Warning: too small to rank methods** (needs F_original ≤ floor/2 and ≥ 5 "
             "points of FA): doing nothing scores near retraining here. Use a memorising "
             "setup (experiments/configs/cifar10_memorise.py).")
  return line


def report_markdown(ev: Evaluation, title: str) -> str:
  head = ["method", "F", "score", "median ε̂", "U-LiRA acc", "audit ε ≥", "KLOM p95 F / R / T",
          "KLOM avg95", "MIA-eff.",
          "Avg. Gap", "RA", "FA", "TA", "s/model", "× retrain"]
  lines = [f"## {title}", "",
           f"{ev.info['num_models']} unlearned vs {ev.info['num_models']} retrained models per "
           "method. F: forgetting quality (NeurIPS 2023 scoring code; 1 = indistinguishable "
           "from retraining); score = F·RA_U/RA_R·TA_U/TA_R; ε̂: the per-example "
           "Gaussian LR attack of the project \"Forget with Precision\" (0 ideal); "
           "U-LiRA accuracy (0.5 ideal); KLOM: 95th "
           "percentile over the forget / retain / test examples of the binned KL(unlearned ‖ "
           "retrained) of margins, the Easy Data Unlearning Bench's rule (Georgiev et al. "
           "2025; 0 ideal), and avg95 the mean of the three; MIA-efficacy and "
           "Avg. Gap as in SalUn (compare with retrain / 0 ideal). audit ε ≥: an ε lower "
           "bound that holds with 95% confidence (Clopper-Pearson; δ = 1e-5) from the attack "
           "on the forget examples' confidence, threshold chosen on half the scores "
           "(`metrics.audit_epsilon`; 0 ideal). The `retrain` row compares "
           "two disjoint halves of the retrained population: the noise floor of the attacks "
           f"at N/2 = {ev.info['num_models'] // 2}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in ev.rows:
    pct = lambda v: f"{100 * v:.1f}"
    lines.append("| " + " | ".join([
        r["method"], f"{r['forgetting_quality']:.3f}", f"{r['competition_score']:.3f}",
        f"{r['eps_hat_median']:.2f}", f"{r['ulira_accuracy']:.2f}",
        f"{r.get('audit_epsilon_lb', float('nan')):.2f}",
        " / ".join(f"{r[f'klom_{s}_p95']:.2f}" for s in KLOM_SPLITS),
        f"{r['klom_average_95']:.2f}", f"{r['mia_efficacy']:.3f}",
        f"{r['avg_gap']:.1f}", pct(r["retain_acc"]), pct(r["forget_acc"]), pct(r["test_acc"]),
        f"{r['seconds']:.3f}", f"{r['cost_ratio']:.2f}"]) + " |")
  signal = population_signal(ev.rows)
  if signal is not None:
    lines += ["", signal_markdown(signal)]
  ranked = sorted((r for r in ev.rows if r["method"] not in ("retrain",)),
                  key=lambda r: -r["competition_score"])
  by_klom = sorted(ranked, key=lambda r: r["klom_forget_p95"])
  lines += ["", "Ranked by competition score: " +
            ", ".join(f"{r['method']} {r['competition_score']:.3f}" for r in ranked),
            "", "Ranked by KLOM (forget p95, lower is better): " +
            ", ".join(f"{r['method']} {r['klom_forget_p95']:.2f}" for r in by_klom),
            "", f"Wall time {ev.info['wall_seconds']:.0f} s"
            + (" (populations reused from checkpoints)" if ev.info["populations_reused"] else "")
            + "."]
  return "\n".join(lines) + "\n"


def plot_epsilons(path: Path, epsilons: dict) -> None:
  """Histogram of per-example ε for every method (one panel each, shared axes)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(epsilons)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False,
                           sharex=True)
  bins = np.arange(0, 51, 1.0)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, name in zip(axes.ravel(), names):
    ax.axis("on")
    ax.hist(np.minimum(epsilons[name], 50), bins=bins, color="tab:blue")
    ax.set_title(f"{name} (median {np.median(epsilons[name]):.1f})", fontsize=8)
    ax.tick_params(labelsize=6)
  fig.supxlabel("per-example ε (capped at 50)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_distributions(path: Path, stats: dict, methods: list, num_examples: int = 4) -> None:
  """U (method) and R (retrained) distributions of the logit-scaled confidence for the
  forget examples where the first method is most distinguishable, one row per method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  r = stats["retrain"]
  methods = [m for m in methods if m in stats and m != "retrain"]
  if not methods:
    return
  gap = np.abs(np.median(stats[methods[0]], 0) - np.median(r, 0))
  examples = np.argsort(-gap)[:num_examples]
  fig, axes = plt.subplots(len(methods), len(examples), squeeze=False,
                           figsize=(2.6 * len(examples), 1.9 * len(methods)))
  for i, m in enumerate(methods):
    for j, s in enumerate(examples):
      ax = axes[i, j]
      both = np.concatenate([stats[m][:, s], r[:, s]])
      bins = np.linspace(both.min(), both.max() + 1e-9, 20)
      ax.hist(r[:, s], bins=bins, alpha=0.6, label="retrained", color="tab:green")
      ax.hist(stats[m][:, s], bins=bins, alpha=0.6, label=m, color="tab:red")
      ax.set_title(f"{m}, forget example {s}", fontsize=7)
      ax.tick_params(labelsize=6)
      if j == 0:
        ax.legend(fontsize=6)
  fig.supxlabel("logit-scaled confidence φ", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


CHART_METRICS = (("forgetting_quality", "F"), ("competition_score", "score"),
                 ("ulira_accuracy", "U-LiRA acc"), ("mia_efficacy", "MIA-efficacy"),
                 ("retain_acc", "RA"), ("test_acc", "TA"))


def plot_metric_chart(path: Path, rows: list) -> None:
  """method × metric heat map (values in [0, 1]), with the numbers written in."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [r["method"] for r in rows]
  values = np.array([[r[k] for k, _ in CHART_METRICS] for r in rows], np.float64)
  fig, ax = plt.subplots(figsize=(1.3 * len(CHART_METRICS) + 2, 0.32 * len(rows) + 1.2))
  ax.imshow(np.nan_to_num(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
  ax.set_xticks(range(len(CHART_METRICS)), [h for _, h in CHART_METRICS], fontsize=7)
  ax.set_yticks(range(len(names)), names, fontsize=7)
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
              color="white" if values[i, j] < 0.6 else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_evaluation(directory: Path, ev: Evaluation, config: dict, title: str) -> str:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_csv(directory / "evaluation.csv", ev.rows)
  md = report_markdown(ev, title)
  (directory / "report.md").write_text(md)
  np.savez_compressed(directory / "epsilons.npz", **ev.epsilons)
  (directory / "evaluation.json").write_text(json.dumps(
      {"config": config, "info": ev.info, "rows": ev.rows,
       "memorisation_signal": population_signal(ev.rows)}, indent=2, default=float) + "\n")
  plots = directory / "plots"
  plots.mkdir(exist_ok=True)
  plot_epsilons(plots / "epsilons.png", ev.epsilons)
  methods = [r["method"] for r in ev.rows if r["method"] not in ("retrain",)]
  plot_distributions(plots / "distributions.png", ev.statistics, methods[:4])
  plot_metric_chart(plots / "metrics.png", ev.rows)
  return md
