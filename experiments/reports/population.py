"""A population evaluation's artifacts: evaluation.csv, report.md, evaluation.json,
epsilons.npz and plots/ (per-example ε histograms, U/R distributions, method × metric
chart). The metrics themselves are `unlearn_jax.evaluation`'s."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from unlearn_jax.evaluation import KLOM_SPLITS, MIN_MODELS_PER_SIDE

CSV_COLUMNS = ("method", "forgetting_quality", "competition_score", "eps_hat_median",
               "ulira_accuracy", "mia_efficacy", "avg_gap", "retain_acc", "forget_acc",
               "test_acc", "seconds", "forgetting_quality_kaggle", "eps_hat_inf_fraction",
               "js_to_retrain", "activation_distance", "zrf", "num_models",
               "klom_forget_p95", "klom_forget_p50", "klom_retain_p95", "klom_retain_p50",
               "klom_test_p95", "klom_test_p50", "klom_average_95", "klom_direction",
               "klom_oracle_unlearned_forget_p95", "klom_oracle_unlearned_average_95",
               "audit_epsilon_lb", "models_per_side", "epsilon_median",
               "klom_average_95_low", "klom_average_95_high", "klom_floor_average_95",
               "klom_distinguishable_from_floor", "klom_distinguishable_from_original",
               "forgetting_quality_low", "forgetting_quality_high", "competition_score_low",
               "competition_score_high", "epsilon_median_low", "epsilon_median_high",
               "rmia_auc", "iam_auc", "probe_forget_acc", "epsilon_resamples")


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
  retrain floor (F of retrain's half A against B), original FA − retrain FA (points), and
  whether KLOM tells doing nothing from the floor (`klom_distinguishable_from_floor` of the
  original row, when the run computed intervals).

  It discriminates when the original is clearly told apart from retraining,
  F_original ≤ F_floor / 2, FA differs by ≥ `report.MIN_SIGNAL_POINTS` and (with
  intervals) KLOM's interval of original − floor excludes 0; otherwise a method can score
  near the floor by doing nothing."""
  from .run import MIN_SIGNAL_POINTS
  by = {r["method"]: r for r in rows}
  if "original" not in by or "retrain" not in by:
    return None
  f_o, f_r = by["original"]["forgetting_quality"], by["retrain"]["forgetting_quality"]
  points = 100 * (by["original"]["forget_acc"] - by["retrain"]["forget_acc"])
  klom_apart = by["original"].get("klom_distinguishable_from_floor")
  return {"original_f": f_o, "floor_f": f_r, "fa_points": points, "klom_apart": klom_apart,
          "discriminates": bool(f_o <= f_r / 2 and points >= MIN_SIGNAL_POINTS
                                and klom_apart is not False)}


def signal_markdown(signal: dict) -> str:
  line = (f"Memorisation signal: the untouched original scores F = {signal['original_f']:.3f} "
          f"against the retrain floor F = {signal['floor_f']:.3f}; original FA − retrain FA = "
          f"{signal['fa_points']:.1f} points.")
  if not signal["discriminates"]:
    line += (" **Warning: too small to rank methods** (needs F_original ≤ floor/2, ≥ 5 "
             "points of FA and KLOM telling the original from the floor): doing nothing "
             "scores near retraining here. Use more models or a memorising setup "
             "(experiments/configs/cifar10_population.py).")
  return line


def with_interval(r, metric, fmt="{:.2f}") -> str:
  low, high = r.get(f"{metric}_low", float("nan")), r.get(f"{metric}_high", float("nan"))
  value = fmt.format(r[metric])
  return value if low != low else f"{value} [{fmt.format(low)}, {fmt.format(high)}]"


def ranked_with_ties(rows: list, metric: str, lower_is_better: bool) -> list:
  """[(rank, row)] by `metric`, every row included (original and retrain too): a row's
  rank is 1 + the number of rows whose 95% interval lies wholly on the better side of its
  own, so rows with overlapping intervals share a rank. Without intervals, by value."""
  def bounds(r):
    low, high = r.get(f"{metric}_low", float("nan")), r.get(f"{metric}_high", float("nan"))
    return (r[metric], r[metric]) if low != low else (low, high)
  out = []
  for r in rows:
    lo, hi = bounds(r)
    better = sum(1 for o in rows if o is not r and
                 (bounds(o)[1] < lo if lower_is_better else bounds(o)[0] > hi))
    out.append((1 + better, r))
  out.sort(key=lambda t: (t[0], t[1][metric] if lower_is_better else -t[1][metric]))
  return out


def ranking_markdown(rows: list, info: dict) -> list:
  """The two rankings (KLOM average_95, lower is better; competition score, higher), each
  with intervals and shared ranks; none (one line says why) when KLOM cannot tell doing
  nothing from the floor at this N, or the memorisation signal is too small to rank."""
  by = {r["method"]: r for r in rows}
  original = by.get("original", {})
  h = info.get("models_per_side", info["num_models"] // 2)
  signal = population_signal(rows)
  if signal is not None and not signal["discriminates"] and signal["klom_apart"] is not False:
    return ["", "**No ranking:** the memorisation signal above is too small: doing nothing "
            "sits near retraining on this data, so no method's distance to the floor can "
            "be read as forgetting."]
  if original.get("klom_distinguishable_from_floor") is False:
    return ["", f"**No ranking:** at {h} models per side KLOM does not tell doing nothing "
            f"(original, {with_interval(original, 'klom_average_95')}) from the floor (two "
            f"halves of the retrained models, {by['retrain']['klom_average_95']:.2f}): the "
            "interval of their difference includes 0. More models narrow the intervals "
            "(the population guide's \"How many models\")."]
  lines = []
  for metric, label, lower in (("klom_average_95", "KLOM average_95, lower is better", True),
                               ("competition_score", "competition score, higher is better",
                                False)):
    fmt = "{:.2f}" if lower else "{:.3f}"
    cells = [f"{rank}. {r['method']} {with_interval(r, metric, fmt)}"
             for rank, r in ranked_with_ties(rows, metric, lower)]
    lines += ["", f"Ranked by {label} (95% intervals; overlapping intervals share a rank; "
              "retrain is the floor, original is doing nothing): " + ", ".join(cells)]
  return lines


def _verdict(value) -> str:
  return "–" if value is None else ("yes" if value else "no")


def _row_cells(r: dict) -> list:
  """One row of the evaluation table."""
  pct = lambda v: f"{100 * v:.1f}"
  return [
      r["method"], with_interval(r, "klom_average_95"),
      _verdict(r.get("klom_distinguishable_from_floor")),
      _verdict(r.get("klom_distinguishable_from_original")),
      " / ".join(f"{r[f'klom_{s}_p95']:.2f}" for s in KLOM_SPLITS),
      with_interval(r, "forgetting_quality", "{:.3f}"),
      with_interval(r, "competition_score", "{:.3f}"),
      with_interval(r, "epsilon_median") if "epsilon_median" in r else "–",
      f"{r['eps_hat_median']:.2f}", f"{r['ulira_accuracy']:.2f}",
      f"{r.get('rmia_auc', float('nan')):.2f}", f"{r.get('iam_auc', float('nan')):.2f}",
      f"{r.get('audit_epsilon_lb', float('nan')):.2f}",
      f"{100 * r.get('probe_forget_acc', float('nan')):.1f}", f"{r['mia_efficacy']:.3f}",
      f"{r['avg_gap']:.1f}", pct(r["retain_acc"]), pct(r["forget_acc"]), pct(r["test_acc"]),
      f"{r['seconds']:.3f}", f"{r['cost_ratio']:.2f}"]


def report_markdown(ev: Evaluation, title: str) -> str:
  head = ["method", "KLOM avg95 [95%]", "≠ floor", "≠ nothing", "KLOM p95 F / R / T",
          "F [95%]", "score [95%]", "median ε [95%]", "median ε̂", "U-LiRA acc", "RMIA AUC",
          "IAM AUC", "audit ε ≥", "probe FA", "MIA-eff.", "Avg. Gap", "RA", "FA", "TA",
          "s/model", "× retrain"]
  n = ev.info["num_models"]
  h = ev.info.get("models_per_side", n // 2)
  resamples = ev.info.get("bootstrap_resamples", 0)
  lines = [f"## {title}", "",
           f"{n} unlearned and {n} retrained models per method. Every row scores the first "
           f"h = {h} of its models against the same {h} oracles (the second half of the "
           "retrained models); the `retrain` row scores the first half of the retrained "
           "models against them: **the floor**, what a perfect method (an independent "
           "retrain) shows with the same number of models. Read every value against it.", "",
           "KLOM: 95th percentile over the forget / retain / test examples of the binned "
           "KL(unlearned ‖ retrained) of margins, the Easy Data Unlearning Bench's rule "
           "(Georgiev et al. 2025), avg95 the mean of the three (0 ideal, the floor in "
           "practice); ≠ floor / ≠ nothing: whether the 95% interval of the row's avg95 "
           "minus the floor's / the original's excludes 0. F: forgetting quality (NeurIPS "
           "2023 scoring code; 1 = indistinguishable from retraining); score = "
           "F·RA_U/RA_R·TA_U/TA_R; ε: the competition's per-example ε; ε̂: the per-example "
           "Gaussian LR attack of the project \"Forget with Precision\" (0 ideal); U-LiRA "
           "accuracy (0.5 ideal); RMIA and IAM AUC: the AUC of those attacks (Zarifzadeh et "
           "al. 2024; Wang et al. 2025) telling the row's models from independent retrains, "
           "the oracles as references (0.5 ideal); probe FA: a ridge probe on the frozen "
           "features, fitted on held-out examples, read on the forget set (%, compare with "
           "retrain); audit ε ≥: an ε lower bound that holds with 95% "
           "confidence (Clopper-Pearson; δ = 1e-5; `metrics.audit_epsilon`); MIA-efficacy "
           "and Avg. Gap as in SalUn.",
           f"\n**{ev.info['no_intervals'].capitalize()}.**" if ev.info.get("no_intervals")
           else "" if not resamples else
           f"\n[low, high]: the 95% normal bootstrap interval over models ({resamples} "
           f"redraws for KLOM, {ev.info.get('bootstrap_epsilon_resamples', 0)} for ε, F and "
           "the score; `metrics.bootstrap`; none for ε, F and the score on a row whose margins "
           "span too many units for the competition's grid to be redrawn, "
           "`evaluation.EPSILON_BOOTSTRAP_MAX_THRESHOLDS`).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in ev.rows:
    lines.append("| " + " | ".join(_row_cells(r)) + " |")
  signal = population_signal(ev.rows)
  if signal is not None:
    lines += ["", signal_markdown(signal)]
  lines += ranking_markdown(ev.rows, ev.info)
  lines += ["", f"Wall time {ev.info['wall_seconds']:.0f} s"
            + (" (populations reused from checkpoints)" if ev.info["populations_reused"] else "")
            + "."]
  return "\n".join(lines) + "\n"


def intervals_markdown(info: dict) -> list:
  """The KLOM curve's table of average_95 with intervals by N (`klom_curve.interval_curve`)."""
  cell = lambda r, k: (f"{r[f'{k}_average_95']:.2f}" if r[f"{k}_low"] != r[f"{k}_low"] else
                       f"{r[f'{k}_average_95']:.2f} [{r[f'{k}_low']:.2f}, {r[f'{k}_high']:.2f}]")
  lines = ["", "KLOM average_95 with its 95% bootstrap interval (none below "
           f"{MIN_MODELS_PER_SIDE} models per side) and whether KLOM tells doing nothing from "
           "the floor (the interval of their difference excludes 0):", "",
           "| N | do nothing | floor | separable |", "|---|---|---|---|"]
  for r in info["intervals"]:
    verdict = "–" if r["separable"] is None else ("yes" if r["separable"] else "no")
    lines.append(f"| {r['num_models']} | {cell(r, 'do_nothing')} | {cell(r, 'floor')} | "
                 f"{verdict} |")
  first = info.get("first_separable_n")
  lines += ["", (f"With intervals, doing nothing is first told from the floor at N = {first}: "
                 f"a population evaluation needs at least that many models per side "
                 f"(`experiments.evaluate --config.evaluate.num_models={2 * first}`)."
                 if first else "At no N measured do the intervals tell doing nothing from "
                 "the floor: raise N.")]
  return lines


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
