"""The requests run's report: requests.csv, requests.md (the gap to retraining after each
request, every method's forget accuracy, the certified methods' certificates, SISA's work)
and the per-request plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..pipeline.requests import METRICS

def _mean(rows, m, k, c):
  """Mean over seeds; NaN when every seed's value is NaN (the loss MIA of a forget set
  too small to fit, e.g. one-example requests), without a warning."""
  return _finite_mean([r[c] for r in rows if r["method"] == m and r["request"] == k])


def _finite_mean(values) -> float:
  values = np.asarray(values, float)
  return float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan


def _gap_lines(rows: list, names: list, ks: list) -> list:
  """The gap-to-retrain table (when retrain ran): final and worst gap per method."""
  lines = []
  if "retrain" in names:
    head = ["method", "final RA", "FA", "TA", "MIA", "final gap", "worst gap (request)",
            "seconds"]
    lines += ["Gap to retrain: mean |difference| over RA, FA, TA, MIA (points) after a "
              "request; final = after the last, worst = the largest over all requests.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in names:
      # Over the metrics that exist after the request (the MIA needs ≥ 10 forget examples).
      gaps = [_finite_mean([100 * abs(_mean(rows, m, k, c) - _mean(rows, "retrain", k, c))
                            for c, _ in METRICS]) for k in ks]
      worst = (int(np.nanargmax(gaps)) if m != "retrain" and np.isfinite(gaps).any()
               else 0)
      last = ks[-1]
      lines.append("| " + " | ".join([
          m, f"{100 * _mean(rows, m, last, 'retain_acc'):.1f}",
          f"{100 * _mean(rows, m, last, 'forget_acc'):.1f}",
          f"{100 * _mean(rows, m, last, 'test_acc'):.1f}",
          f"{_mean(rows, m, last, 'mia_loss_lr'):.2f}", f"{gaps[-1]:.1f}",
          f"{gaps[worst]:.1f} ({ks[worst]})",
          f"{_mean(rows, m, last, 'cumulative_seconds'):.1f}"]) + " |")
  return lines


def _certificate_lines(rows: list, names: list, ks: list) -> list:
  """The certified methods' certificates after each request."""
  lines = []
  for m in names:
    mine = [r for r in rows if r["method"] == m and "certified_residual_bound" in r]
    if mine:
      lines += ["", f"{m}'s certificate after each request (mean over seeds): the residual "
                "bound accumulated since the last refit / the budget it may reach; † marks a "
                "request after which the head was refitted.", "",
                "| | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
      refits = {k: _mean(rows, m, k, "certified_refits") for k in ks}
      cells = [f"{_mean(rows, m, k, 'certified_residual_bound'):.3g} / "
               f"{_mean(rows, m, k, 'certified_residual_budget'):.3g}"
               + (" †" if refits[k] > refits.get(k - 1, 0.0) else "") for k in ks]
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
  for m in names:
    mine = [r for r in rows if r["method"] == m and "certified_epsilon_bound" in r]
    if mine:
      refits = {k: _mean(rows, m, k, "certified_refits") for k in ks}
      lines += ["", f"{m}'s certificate after each request (mean over seeds): the ε its bound "
                "certifies, the epochs of noisy SGD the request took, and the W∞ bound it "
                "started from; † marks a request served by retraining the head.", "",
                "| | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
      for label, col, fmt in (("ε", "certified_epsilon_bound", ".3g"),
                              ("epochs", "certified_unlearn_epochs", ".0f"),
                              ("W∞ bound", "certified_distance_bound", ".3g")):
        lines.append(f"| {label} | " + " | ".join(
            f"{_mean(rows, m, k, col):{fmt}}"
            + (" †" if refits[k] > refits.get(k - 1, 0.0) else "") for k in ks) + " |")
  return lines


def report_markdown(result: dict, title: str) -> str:
  rows, info = result["rows"], result["info"]
  names = list(dict.fromkeys(r["method"] for r in rows))
  ks = sorted({r["request"] for r in rows})
  lines = [f"## {title}", "", f"{len(ks)} requests, mean over {info['seeds']} seed(s); "
           "accuracies in %; FA on the cumulative forget set; seconds: cumulative cost of "
           "the requests (SISA: its deletions; retrain: every retraining).", ""]
  lines += _gap_lines(rows, names, ks)
  lines += ["", "FA after each request (%):", "",
            "| method | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
  for m in names:
    lines.append(f"| {m} | " + " | ".join(f"{100 * _mean(rows, m, k, 'forget_acc'):.1f}"
                                          for k in ks) + " |")
  lines += _certificate_lines(rows, names, ks)
  work = (info.get("sisa") or {}).get("per_request") or []
  if work:
    lines += ["", f"SISA ({info['sisa']['shards']} shards × {info['sisa']['slices']} slices): "
              f"a request retrained {np.mean([w['affected_shards'] for w in work]):.1f} shards "
              f"and {100 * np.mean([w['fraction_of_full'] for w in work]):.1f}% of the "
              "example-passes of retraining every shard from scratch, on average."]
  lines += ["", f"Wall time {info['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def plot_requests(directory: Path, rows: list) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(dict.fromkeys(r["method"] for r in rows))
  ks = sorted({r["request"] for r in rows})
  for c, label in METRICS:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for m in names:
      style = dict(color="black", linestyle="--", linewidth=2) if m == "retrain" else {}
      ax.plot(ks, [_mean(rows, m, k, c) for k in ks], marker="o", markersize=3, label=m,
              **style)
    ax.set_xlabel("request")
    ax.set_ylabel(label)
    ax.set_title(f"{label} after each request (retrain dashed)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(directory / f"requests_{c}.png", dpi=110)
    plt.close(fig)


def write_requests(directory: Path, result: dict, config: dict, title: str,
                   plots: bool = True) -> str:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  fields = ["method", "seed", "request", "forget_size", "retain_acc", "forget_acc",
            "test_acc", "mia_loss_lr", "cumulative_seconds"]
  fields += sorted({k for r in result["rows"] for k in r if k.startswith("certified_")})
  with open(directory / "requests.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
  md = report_markdown(result, title)
  (directory / "requests.md").write_text(md)
  (directory / "requests.json").write_text(json.dumps(
      {"config": config, "info": result["info"]}, indent=1, default=str) + "\n")
  if plots:
    (directory / "plots").mkdir(exist_ok=True)
    plot_requests(directory / "plots", result["rows"])
  return md
