"""Run artifacts: results.csv/json, the mean ± std summary, plots, splits, checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np

from unlearn_jax import parallel

# results.csv columns, in order; the first seven are the results contract.
CSV_COLUMNS = ("method", "seed", "retain_acc", "forget_acc", "test_acc", "mia_loss_lr",
               "seconds", "train_seed", "unlearn_seed", "val_acc", "forget_test_acc", "retain_loss",
               "forget_loss",
               "test_loss", "ain", "relearn_steps", "layer_distance", "peak_memory_mib")
# Summary table: (column in rows, header).
SUMMARY_COLUMNS = (("retain_acc", "RA"), ("forget_acc", "FA"), ("test_acc", "TA"),
                   ("forget_test_acc", "FTA"), ("mia_loss_lr", "MIA (loss LR)"),
                   ("ain", "AIN"), ("layer_distance", "layer dist."),
                   ("seconds", "seconds"), ("peak_memory_mib", "peak MiB"))
# Shown only where some row has them.
OPTIONAL_COLUMNS = ("forget_test_acc", "ain", "layer_distance", "peak_memory_mib")


def csv_rows(rows: list) -> list:
  out = []
  for r in rows:
    r = dict(r)
    r["forget_test_acc"] = r.pop("test_forget_acc", float("nan"))
    r.pop("val_forget_acc", None)
    out.append({c: r.get(c, float("nan")) for c in CSV_COLUMNS})
  return out


def write_csv(path: Path, rows: list) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in csv_rows(rows):
      w.writerow({k: (f"{v:.6f}" if isinstance(v, float) and k != "seconds" else
                      f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def mean_std(values) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
  if v.size == 0:
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(rows: list) -> dict:
  """method -> {column: (mean, std)} plus cost_ratio = seconds / retrain seconds."""
  table = {}
  for r in csv_rows(rows):
    table.setdefault(r["method"], []).append(r)
  out = {}
  retrain_s = mean_std([r["seconds"] for r in table.get("retrain", [])])[0]
  for m, rs in table.items():
    out[m] = {c: mean_std([r[c] for r in rs]) for c, _ in SUMMARY_COLUMNS}
    out[m]["cost_ratio"] = (out[m]["seconds"][0] / retrain_s, 0.0) if retrain_s else (float("nan"), 0.0)
  return out


# The columns of the table a run prints on the terminal (summary.md has every column).
TERMINAL_COLUMNS = ("retain_acc", "forget_acc", "test_acc", "forget_test_acc", "mia_loss_lr")
# Measured once for all seeds when the seeds run together as one program: no ± then.
SHARED_COLUMNS = ("seconds", "peak_memory_mib")


def _fmt(mean: float, std: float, pct: bool, shared: bool = False) -> str:
  if math.isnan(mean):
    return "—"
  if pct:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
  if shared and std == 0:
    return f"{mean:.2f}"
  return f"{mean:.2f} ± {std:.2f}"


def summary_markdown(summary: dict, num_seeds: int, title: str, terminal: bool = False) -> str:
  """The mean ± std table. `terminal`: only the accuracy and attack columns and the cost
  ratio, a table that fits an 100-column terminal (summary.md keeps every column)."""
  present = {c for c in OPTIONAL_COLUMNS
             if any(not math.isnan(v[c][0]) for v in summary.values())}
  has_fta = "forget_test_acc" in present
  cols = [(c, h) for c, h in SUMMARY_COLUMNS if c not in OPTIONAL_COLUMNS or c in present]
  if terminal:
    cols = [(c, h) for c, h in cols if c in TERMINAL_COLUMNS]
  header = ["method"] + [h for _, h in cols] + ["× retrain"]
  together = any(summary[m]["seconds"][1] == 0 for m in summary) and num_seeds > 1
  lines = [f"## {title}", "",
           f"Mean ± std over {num_seeds} seed(s). Accuracies in %. RA/FA/TA: retain, forget, "
           "test accuracy" + (" (test: retain classes; FTA: forgotten classes' test examples)"
                               if has_fta else "") +
           ". The goal is retrain's row, not FA = 0." +
           (" AIN: relearning steps to 95% of the original's FA ÷ retrain's (ideal ≈ 1)."
            if "ain" in present else "") +
           (" layer dist.: mean over layers of ‖θ − θ_retrain‖/‖θ_retrain‖ (same initial "
            "weights; 0 ideal)." if "layer_distance" in present else "") +
           (" peak MiB: XLA's memory analysis of the compiled method (all seeds)."
            if "peak_memory_mib" in present and not terminal else "") +
           (" seconds: per seed; a figure without ± was measured once for seeds run "
            "together as one program." if together and not terminal else "") +
           (" × retrain: seconds ÷ retrain's. Every column: summary.md." if terminal
            else ""), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for m, v in summary.items():
    cells = [m] + [_fmt(*v[c], pct=c.endswith("_acc"), shared=c in SHARED_COLUMNS)
                   for c, _ in cols]
    cells.append(f"{v['cost_ratio'][0]:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def gap_to_retrain(summary: dict) -> dict:
  """Mean absolute gap (points) to retrain over RA, FA, TA, MIA: 'closest to retrain'."""
  ref = summary.get("retrain")
  if not ref:
    return {}
  cols = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr")
  return {m: float(np.mean([100 * abs(v[c][0] - ref[c][0]) for c in cols]))
          for m, v in summary.items() if m not in ("retrain",)}


GAP_COLUMNS = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr")


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student's t interval for the mean of `values` (seeds), the usual
  interval over a handful of independent runs; (mean, nan, nan) for fewer than two."""
  from scipy import stats
  v = np.asarray(values, np.float64)
  mean = float(np.mean(v)) if v.size else float("nan")
  if v.size < 2:
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * np.std(v, ddof=1) / np.sqrt(v.size))
  return mean, mean - half, mean + half


def ranking(rows: list, signal: dict | None) -> dict:
  """Methods ranked by their gap to retrain, with the 95% interval of each gap and ties.

  A method's gap on a seed is the mean over RA, FA, TA and MIA of |m − retrain| (points),
  paired with the retrained model of the same training seed; its interval is `t_interval`
  over those gaps. `original` (doing nothing) is ranked with the methods and `retrain` is
  the target (gap 0). Ranks tie where intervals overlap: a method's rank is 1 + the number
  of methods whose interval lies wholly below its own. No ranking (`reason` says why) when
  the memorisation signal's interval includes 0: doing nothing is then indistinguishable
  from retraining on this data, so no gap can be read as forgetting."""
  if signal is None:
    return {"rows": [], "reason": "no original and retrain rows to rank against"}
  low, high = signal["interval"]
  if math.isnan(low):
    return {"rows": [], "reason": "No ranking: one seed gives no interval (run --seeds=3 or "
            "more)."}
  if not low > 0:
    return {"rows": [], "reason": f"No ranking: the memorisation signal's 95% interval "
            f"[{low:.1f}, {high:.1f}] points includes 0, so doing nothing cannot be told "
            "from retraining on this data."}
  table = csv_rows(rows)
  def seed_of(r):    # the training seed pairs a method with its retrained reference
    t = r.get("train_seed")
    return r["seed"] if t is None or (isinstance(t, float) and math.isnan(t)) else t
  retrain = {seed_of(r): r for r in table if r["method"] == "retrain"}
  gaps = {}
  for r in table:
    if r["method"] != "retrain" and seed_of(r) in retrain:
      ref = retrain[seed_of(r)]
      gaps.setdefault(r["method"], []).append(
          float(np.mean([100 * abs(r[c] - ref[c]) for c in GAP_COLUMNS])))
  stats_ = {m: t_interval(g) for m, g in gaps.items()}
  out = []
  for m, (mean, low, high) in stats_.items():
    below = sum(1 for k, (_, _, h) in stats_.items() if k != m and h < low)
    out.append({"method": m, "gap": mean, "low": low, "high": high, "rank": 1 + below})
  out.sort(key=lambda d: (d["rank"], d["gap"]))
  return {"rows": out, "reason": None}


def ranking_markdown(ranked: dict) -> str:
  if ranked["reason"]:
    return f"\n{ranked['reason']}\n"
  if not ranked["rows"]:
    return ""
  cells = [f"{d['rank']}. {d['method']} {d['gap']:.1f} [{d['low']:.1f}, {d['high']:.1f}]"
           for d in ranked["rows"]]
  return ("\nClosest to retrain (mean |gap| over RA, FA, TA, MIA, points, with its 95% "
          "interval over seeds; overlapping intervals share a rank; retrain is 0): " +
          ", ".join(cells) + "\n")


# The smallest memorisation signal (points of forget accuracy) a table can rank methods by:
# gaps between methods are a few points, and seed noise on FA is ~1 point.
MIN_SIGNAL_POINTS = 5.0


def memorisation_signal(rows: list) -> dict | None:
  """How much there is to forget: original FA − retrain FA (points), per seed.

  Returns {"points": (mean, std) over seeds, "interval": its 95% t interval (low, high),
  "original_fa", "retrain_fa", "discriminates"} or None without both rows. A table
  discriminates when the signal is at least `MIN_SIGNAL_POINTS` and three times its own
  seed std: below that, "doing nothing" (the
  original) sits near retrain and any ranking by gap to retrain is noise."""
  by = {}
  for r in csv_rows(rows):
    if r["method"] in ("original", "retrain"):
      by.setdefault(r["method"], {})[r["seed"]] = r["forget_acc"]
  if set(by) != {"original", "retrain"}:
    return None
  seeds = sorted(set(by["original"]) & set(by["retrain"]))
  diffs = [100 * (by["original"][s] - by["retrain"][s]) for s in seeds]
  mean, std = mean_std(diffs)
  _, low, high = t_interval(diffs)
  return {"points": (mean, std), "interval": (low, high),
          "original_fa": 100 * mean_std([by["original"][s] for s in seeds])[0],
          "retrain_fa": 100 * mean_std([by["retrain"][s] for s in seeds])[0],
          "discriminates": bool(mean >= MIN_SIGNAL_POINTS and mean >= 3 * std)}


def signal_markdown(signal: dict | None) -> str:
  """The summary's memorisation line, with a warning when it is too small to rank."""
  if signal is None:
    return ""
  mean, std = signal["points"]
  low, high = signal.get("interval", (float("nan"),) * 2)
  line = (f"\nMemorisation signal: original FA {signal['original_fa']:.1f} − retrain FA "
          f"{signal['retrain_fa']:.1f} = {mean:.1f} ± {std:.1f} points"
          + (f" (95% interval [{low:.1f}, {high:.1f}])." if not math.isnan(low) else "."))
  if not signal["discriminates"]:
    line += (f" **Warning: too small to rank methods** (needs ≥ {MIN_SIGNAL_POINTS:g} points "
             "and ≥ 3× its seed std): the original barely memorises D_f, so doing nothing "
             "scores near retrain. Use a memorising setup: the default job "
             "(--config.dataset=mnist1d, where a small MLP memorises its 1,000 examples) or the "
             "class scenario (--config.scenario=class).")
  return line + "\n"


def method_warnings(model_sets: dict) -> list:
  """One line per method whose aux reports a problem on any seed (`steps.COMMON_AUX`, the
  certified methods' `certificate_useful`): non-finite inputs or weights, labels out of
  range, dropped steps, a certificate on a useless head."""
  lines = []
  for name, ms in model_sets.items():
    aux = getattr(ms, "aux", None) or {}
    per_seed = lambda k: np.ravel(np.asarray(aux[k], dtype=float)) if k in aux else np.zeros(0)
    said = []
    for key, what in (("nonfinite_inputs", "non-finite input values"),
                      ("invalid_labels", "labels out of range"),
                      ("nonfinite_weights", "non-finite weights in its result (unusable)"),
                      ("nonfinite_steps", "steps dropped as non-finite")):
      v = per_seed(key)
      if v.size and np.any(v > 0):
        said.append(f"{what}: {int(np.max(v))} (most on one seed)")
    useful = per_seed("certificate_useful")
    if useful.size and np.any(useful == 0):
      said.append(f"its certificate holds but the head lost more than half its retain "
                  f"accuracy above chance on {int(np.sum(useful == 0))} of {useful.size} "
                  "seed(s) (certificate_useful = 0)")
    if said:
      lines.append(f"{name}: " + "; ".join(said))
  return lines


def warnings_markdown(lines: list) -> str:
  if not lines:
    return ""
  return "\n**Warnings** (from the methods' aux):\n\n" + "".join(f"- {w}\n" for w in lines)


STAGE_COLUMNS = (("retain_acc", "RA"), ("forget_acc", "FA"), ("test_acc", "TA"),
                 ("mia_loss_lr", "MIA"))


def stage_spread(rows: list) -> dict:
  """Seeds per stage: for each method run with several unlearning seeds, how much of the
  spread comes from training and how much from unlearning, per metric:

      train   = std over training seeds t of mean_u m(t, u)
      unlearn = mean over training seeds t of std over unlearning seeds u of m(t, u)

  (sample std, ddof 1). {method: {column: {"train": …, "unlearn": …}}}; methods with one
  unlearning seed are left out."""
  by = {}
  for r in csv_rows(rows):
    u = r.get("unlearn_seed")
    if u is None or (isinstance(u, float) and math.isnan(u)):
      continue
    by.setdefault(r["method"], {}).setdefault(r["train_seed"], []).append(r)
  out = {}
  for m, per_train in by.items():
    if max(len(v) for v in per_train.values()) < 2:
      continue
    out[m] = {}
    for c, _ in STAGE_COLUMNS:
      means = [mean_std([r[c] for r in v])[0] for v in per_train.values()]
      within = [mean_std([r[c] for r in v])[1] for v in per_train.values()]
      out[m][c] = {"train": mean_std(means)[1], "unlearn": float(np.mean(within))}
  return out


def stage_markdown(spread: dict) -> str:
  if not spread:
    return ""
  head = ["method"] + [f"{h} {stage}" for _, h in STAGE_COLUMNS for stage in ("train", "unlearn")]
  lines = ["", "Spread by stage (std, points; MIA ×100): *train* = across trained models of "
           "the mean over unlearning seeds, *unlearn* = across unlearning seeds of one trained "
           "model, averaged.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m, cols in spread.items():
    cells = [m] + [f"{100 * cols[c][stage]:.1f}" for c, _ in STAGE_COLUMNS
                   for stage in ("train", "unlearn")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots
LOSS_FLOOR = 1e-8   # losses below it (0 in float32 for a memorised example) share one bin


def plot_loss_histograms(path: Path, name: str, losses: dict) -> None:
  """Histogram of forget, test and retain losses of one model (the figure of the "Machine
  Unlearning" CIFAR-10 project): outlines in three colours that do not blend; the leftmost
  bin holds every loss at or below `LOSS_FLOOR` and is labelled so."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  splits = ("retain", "forget", "test")
  everything = np.concatenate([np.asarray(losses[s], np.float64) for s in splits])
  lo = max(float(np.min(everything)), LOSS_FLOOR)
  hi = max(float(np.max(everything)), lo * 10)
  bins = np.logspace(np.log10(lo), np.log10(hi), 40)
  floored = 0
  for split, color in (("retain", "tab:green"), ("forget", "tab:red"), ("test", "tab:blue")):
    v = np.asarray(losses[split], np.float64)
    floored += int(np.sum(v <= LOSS_FLOOR))
    v = np.clip(v, lo, hi)
    # Fractions (not densities): on a log axis densities inflate the tiny-loss bins.
    ax.hist(v, bins=bins, weights=np.full(v.size, 1.0 / max(v.size, 1)), histtype="step",
            linewidth=1.6, label=f"{split} (n={v.size})", color=color)
  if floored:
    ax.annotate(f"≤ {LOSS_FLOOR:g}\n(loss 0 in float32)", (bins[0], 0), xytext=(4, 24),
                textcoords="offset points", fontsize=7, color="0.3",
                arrowprops=dict(arrowstyle="->", color="0.5", lw=0.8))
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, numticks=6))
  ax.set_xlabel("per-example cross-entropy loss (log scale)")
  ax.set_ylabel("fraction of examples")
  ax.set_title(f"{name}: losses, seed 0")
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_metric_bars(path: Path, summary: dict) -> None:
  """RA, FA, TA and MIA per method, one panel each (methods down the side, ± std error
  bars), retrain's value a dotted line in every panel: readable at its saved size for any
  number of methods."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = list(summary)
  cols = (("retain_acc", "retain accuracy"), ("forget_acc", "forget accuracy"),
          ("test_acc", "test accuracy"), ("mia_loss_lr", "MIA (loss LR)"))
  ys = np.arange(len(methods))
  fig, axes = plt.subplots(1, len(cols), figsize=(11, 1.2 + 0.27 * len(methods)),
                           sharey=True, squeeze=False)
  colors = ["0.3" if m in ("original", "retrain") else "tab:blue" for m in methods]
  for ax, (c, label) in zip(axes[0], cols):
    means = np.asarray([summary[m][c][0] for m in methods])
    stds = np.asarray([summary[m][c][1] for m in methods])
    ax.barh(ys, 100 * means, xerr=100 * stds, color=colors, height=0.7,
            error_kw=dict(lw=0.8, capsize=2))
    if "retrain" in summary:
      ax.axvline(100 * summary["retrain"][c][0], color="k", ls=":", lw=1)
    ax.set_xlim(0, 105)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("%" if c.endswith("_acc") else "attack accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", lw=0.3, alpha=0.5)
  axes[0, 0].set_yticks(ys, methods)
  axes[0, 0].invert_yaxis()
  fig.suptitle("Mean ± std over seeds; dotted: retrain (the target)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_layer_distance(path: Path, layers: dict) -> None:
  """Heatmap: methods × layers, ‖θ − θ_retrain‖/‖θ_retrain‖ (mean over seeds)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = [m for m in layers if m != "retrain"]
  names = list(next(iter(layers.values())))
  grid = np.array([[np.mean(layers[m][n]) for n in names] for m in methods])
  fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.28 * len(methods)))
  im = ax.imshow(grid, aspect="auto", cmap="viridis")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
  ax.set_yticks(range(len(methods)), methods, fontsize=7)
  fig.colorbar(im, ax=ax, label="‖θ − θ_retrain‖ / ‖θ_retrain‖")
  ax.set_title("Distance to retrain, layer by layer", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def along_curves(along: dict) -> dict:
  """{metric: (values, phase boundaries, phase names)} of one method's `ModelSet.along`
  ({"phase/metric": [seeds, evaluations]}): the mean over seeds of every evaluation, phases
  in the method's order, the NaNs between evaluations dropped."""
  out = {}
  order = lambda key: (int(key.partition(":")[0]), key)   # "<phase index>:<phase>/<metric>"
  for key in sorted(along, key=order):
    values = along[key]
    phase, _, metric = key.partition(":")[2].partition("/")
    mean = np.nanmean(np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1]), axis=0) \
        if np.isfinite(values).any() else np.asarray([])
    mean = mean[np.isfinite(mean)]
    vals, bounds, names = out.setdefault(metric, ([], [], []))
    vals.extend(mean.tolist())
    bounds.append(len(vals))
    names.append(phase)
  return out


def plot_along(path: Path, model_sets: dict) -> None:
  """One panel per method: forget and retain accuracy (mean over seeds) at each evaluation
  along its steps, phase boundaries dotted."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves = {m: along_curves(ms.along) for m, ms in model_sets.items() if ms.along}
  curves = {m: c for m, c in curves.items() if any(v[0] for v in c.values())}
  if not curves:
    return
  cols = min(6, len(curves))
  rows = -(-len(curves) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.9 * rows), squeeze=False,
                           sharey=True)
  for ax, (m, c) in zip(axes.ravel(), curves.items()):
    one_step = max(len(v[0]) for v in c.values()) == 1
    for metric, (vals, _bounds, _names) in sorted(c.items()):
      label = metric.replace("_acc", "")
      if one_step:   # a one-shot edit: its result, drawn as a level, not a lone dot
        ax.axhline(100 * vals[0], lw=2, color="tab:blue" if label == "forget" else "tab:orange",
                   label=label)
      else:
        ax.plot(range(1, len(vals) + 1), 100 * np.asarray(vals), marker=".", ms=3,
                label=label)
    if one_step:
      ax.set_xticks([])
      ax.set_xlabel("one step: its result", fontsize=6)
      ax.text(0.5, 0.06, ", ".join(f"{k.replace('_acc', '')} {100 * v[0][0]:.0f}%"
                                   for k, v in sorted(c.items())),
              fontsize=6, ha="center", transform=ax.transAxes)
    else:
      for b in next(iter(c.values()))[1][:-1]:
        ax.axvline(b + 0.5, color="grey", ls=":", lw=0.8)
      ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=5))
      ax.set_xlabel("evaluation (epoch)", fontsize=6)
    ax.set_ylim(0, 105)
    ax.set_title(m, fontsize=8)
    ax.tick_params(labelsize=6)
  for ax in axes.ravel()[len(curves):]:
    ax.axis("off")
  axes[0, 0].set_ylabel("accuracy (%)", fontsize=7)
  axes[0, 0].legend(fontsize=6)
  fig.suptitle("Forget and retain accuracy along each method's steps (evaluations; phases "
               "dotted)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_image_grid(path: Path, name: str, images: np.ndarray, labels: np.ndarray,
                    forget_classes=()) -> None:
  """One row per class of the synthetic inputs a zero-shot method made (seed 0); each
  image min-max scaled on its own. Rows of forgotten classes are marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  classes = sorted(int(c) for c in np.unique(labels) if c >= 0)
  if not classes:
    return
  per_row = max(int(np.sum(labels == c)) for c in classes)
  fig, axes = plt.subplots(len(classes), per_row, figsize=(per_row * 0.9, len(classes) * 0.9),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for r, c in enumerate(classes):
    for j, img in enumerate(images[labels == c]):
      img = (img - img.min()) / (img.max() - img.min() + 1e-8)
      axes[r, j].imshow(img[..., 0] if img.shape[-1] == 1 else img,
                        cmap="gray" if img.shape[-1] == 1 else None)
    axes[r, 0].set_title(f"{c}{' (forget)' if c in forget_classes else ''}", fontsize=6,
                         loc="left")
  fig.suptitle(f"{name}: synthetic inputs by class", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- the run dir
def on_host(result):
  """`result` with every model set's variables as host arrays where they are spread over
  several processes (`parallel.to_host`; a collective every process calls), so that one
  process can write them; unchanged in a one-process job."""
  if jax.process_count() == 1:
    return result
  sets = {name: dataclasses.replace(ms, variables=parallel.to_host(ms.variables))
          for name, ms in result.model_sets.items()}
  return dataclasses.replace(result, model_sets=sets)


def write_plots(plots: Path, result, summary: dict) -> None:
  """The run's figures under `plots/`: loss histograms, the metric bars, accuracy along
  the methods' steps, the layer distance and a zero-shot method's synthetic images."""
  plots.mkdir(exist_ok=True)
  for name, per_seed in result.losses.items():
    plot_loss_histograms(plots / f"losses_{name}.png", name, per_seed[0])
  plot_metric_bars(plots / "metrics.png", summary)
  plot_along(plots / "along_steps.png", result.model_sets)
  if result.info.get("layer_distance"):
    plot_layer_distance(plots / "layer_distance.png",
                        result.info["layer_distance"])
  for name, ms in result.model_sets.items():
    if "synthetic_images" in getattr(ms, "artifacts", {}):
      plot_image_grid(plots / f"synthetic_{name}.png", name,
                      ms.artifacts["synthetic_images"][0], ms.artifacts["synthetic_labels"][0],
                      result.split.spec.forget_classes)


def write_run(directory: Path, result, config_dict: dict, save_checkpoints: bool = True,
              plots: bool = True) -> str:
  """Writes every artifact of a run into `directory`; returns the summary Markdown for
  the terminal (summary.md's, with the table's main columns only)."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_csv(directory / "results.csv", result.rows)
  summary = summarize(result.rows)
  seeds = len({r["seed"] for r in result.rows})
  unlearn_seeds = len({r.get("unlearn_seed", 0) for r in result.rows})
  title = (f"{result.dataset.name} · {result.info['model']} · {result.split.spec.scenario}"
           + (f" (classes {','.join(map(str, result.split.spec.forget_classes))})"
              if result.split.spec.forget_classes else
              f" ({100 * result.split.spec.forget_fraction:g}% forget)"))
  tables = [summary_markdown(summary, seeds, title, terminal=t) for t in (False, True)]
  if unlearn_seeds > 1:
    tables = [t.replace(f"over {seeds} seed(s).", f"over {seeds} training seed(s) × "
                        f"{unlearn_seeds} unlearning seeds (original and retrain: the training "
                        "seeds).", 1) for t in tables]
  md = ""
  spread = stage_spread(result.rows)
  md += stage_markdown(spread)
  gaps = gap_to_retrain(summary)
  signal = memorisation_signal(result.rows)
  ranked = ranking(result.rows, signal)
  md += signal_markdown(signal)
  md += ranking_markdown(ranked)
  md += warnings_markdown(method_warnings(result.model_sets))
  (directory / "summary.md").write_text(tables[0] + md)
  result.split.save(directory)
  # Per-example CE losses of every model and seed, for attacks computed later.
  np.savez_compressed(directory / "losses.npz", **{
      f"{name}/{split}": np.stack([seed_losses[split] for seed_losses in per_seed])
      for name, per_seed in result.losses.items() for split in per_seed[0]})
  payload = {
      "config": config_dict,
      "recipe": dataclasses.asdict(result.recipe),
      "hparams": result.hparams,
      "split": {"spec": dataclasses.asdict(result.split.spec), "sha256": result.split.digests()},
      "info": result.info,
      "summary": {m: {c: {"mean": v[0], "std": v[1]} for c, v in cols.items()}
                  for m, cols in summary.items()},
      "gap_to_retrain": gaps,
      "ranking": ranked,
      "memorisation_signal": signal,
      "stage_spread": spread,
      "along": {m: {metric: {"values": v, "phase_ends": b, "phases": n}
                    for metric, (v, b, n) in along_curves(ms.along).items()}
                for m, ms in result.model_sets.items() if getattr(ms, "along", None)},
      "rows": csv_rows(result.rows),
  }
  (directory / "results.json").write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
  if plots:
    write_plots(directory / "plots", result, summary)
  if save_checkpoints:
    from unlearn_jax import checkpoint
    for name, ms in result.model_sets.items():
      checkpoint.save_variables(directory / "checkpoints" / name, ms.variables)
  return tables[1] + md


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)
