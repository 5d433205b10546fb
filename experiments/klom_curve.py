r"""How many models KLOM needs: the do-nothing and oracle-vs-oracle KLOM per split, by N.

    python -m experiments.klom_curve --config=experiments/configs/cifar10_population.py
    python -m experiments.klom_curve --config.evaluate.sizes=4,8,16           # digits (the default config)

KLOM (the Easy Data Unlearning Bench's rule, `unlearn_jax.metrics.klom`) compares an
example's margins over N unlearned models with its margins over N oracles (retrained
without D_f). With few models the histograms are noisy: even a perfect method, a second
independent set of oracles, scores a KLOM above 0 (the floor). KLOM can rank methods only
at an N where the floor's forget p95 lies below that of doing nothing (the untouched
originals against the oracles).

For the largest N of `evaluate.sizes` this trains (or restores from `references_dir`,
the cache every stage fills) the originals and the oracles, and a second oracle
population with the seeds after them. For each N: KLOM p95
per split (forget, retain, test) of the first N originals against the first N oracles, and
of the first N second oracles against the same N oracles, in both directions; and
average_95 of both with its 95% bootstrap interval, and whether the two are told apart
(how the interval narrows with N). Writes into --workdir: curve.csv, curve.json,
report.md, plots/curve.png and plots/intervals.png.
"""

import csv
import json
import time
from pathlib import Path

from absl import flags

import jax
import jax.numpy as jnp
import numpy as np

from . import cli
from .pipeline import experiment, reference_models, rundir, settings, usage
from .evaluate import chunk_of
from .reports.population import intervals_markdown
from unlearn_jax import metrics as M
from unlearn_jax.evaluation import MIN_MODELS_PER_SIDE, PopulationLogits, klom_replicates
from unlearn_jax.metrics.population import KLOM_DIRECTIONS


SPLITS = ("forget", "retain", "test")
DIRECTIONS = KLOM_DIRECTIONS


def parse_sizes(text: str) -> list:
  try:
    sizes = [int(s) for s in str(text).split(",") if s.strip()]
  except ValueError:
    raise usage.UsageError(f"--config.evaluate.sizes={text!r} must be a comma list of integers, e.g. 8,16,32"
                           ) from None
  if not sizes or any(n < 2 for n in sizes) or sizes != sorted(set(sizes)):
    raise usage.UsageError(f"--config.evaluate.sizes={text!r} must be increasing integers >= 2")
  return sizes


def margins_by_split(st, variables, predict: PopulationLogits) -> dict:
  """{split: margins [N, n]} of a population (`predict`: one per run, compiled once)."""
  ds, split = st.ds, st.split
  x, y = ds.train_x, ds.train_y
  parts = {"forget": (x[split.forget], y[split.forget]),
           "retain": (x[split.retain], y[split.retain]),
           "test": (ds.test_x[split.test], ds.test_y[split.test])}
  out = {}
  for s, (xx, yy) in parts.items():
    logits = predict(variables, jnp.asarray(xx))
    out[s] = np.asarray(M.logit_scaled_confidence(logits, np.asarray(yy)[None]))
  return out


def curve(originals: dict, oracles: dict, second: dict, sizes: list) -> list:
  """Rows (N, split, direction, do_nothing_p95, floor_p95) of the first N models."""
  rows = []
  for n in sizes:
    for s in SPLITS:
      for d in DIRECTIONS:
        p95 = lambda u: float(np.percentile(np.asarray(M.klom(u[s][:n], oracles[s][:n],
                                                               direction=d)), 95))
        rows.append(dict(num_models=n, split=s, direction=d, do_nothing_p95=p95(originals),
                         floor_p95=p95(second)))
  return rows


def interval_curve(originals: dict, oracles: dict, second: dict, sizes: list,
                   resamples: int = 200, seed: int = 0) -> list:
  """How the 95% interval narrows with N: per N, the average_95 (the mean of the splits'
  p95) of doing nothing and of the floor against the first N oracles, each with its
  normal bootstrap interval (`metrics.bootstrap`; the redraws of the oracles shared by
  both, those of the originals and the second oracles paired by index), and whether the
  interval of their difference excludes 0 (`separable`: KLOM tells doing nothing from a
  perfect method at this N). No interval below `evaluation.MIN_MODELS_PER_SIDE`."""
  rows = []
  for n in sizes:
    take = lambda pop: {s: np.asarray(pop[s][:n]) for s in SPLITS}
    nothing, floor = (float(M.klom_average_95(take(p), take(oracles))["average_95"])
                      for p in (originals, second))
    row = dict(num_models=n, do_nothing_average_95=nothing, floor_average_95=floor,
               do_nothing_low=float("nan"), do_nothing_high=float("nan"),
               floor_low=float("nan"), floor_high=float("nan"), separable=None)
    if n >= MIN_MODELS_PER_SIDE:
      k_side, k_oracle = jax.random.split(jax.random.PRNGKey(seed + n))
      idx = (M.resample_indices(k_side, n, resamples), M.resample_indices(k_oracle, n, resamples))
      reps = {name: np.asarray(klom_replicates(take(p), take(oracles), *idx))
              for name, p in (("nothing", originals), ("floor", second))}
      row["do_nothing_low"], row["do_nothing_high"] = map(
          float, M.normal_interval(nothing, reps["nothing"]))
      row["floor_low"], row["floor_high"] = map(float, M.normal_interval(floor, reps["floor"]))
      low, high = M.normal_interval(nothing - floor, reps["nothing"] - reps["floor"])
      row["separable"] = bool(float(low) > 0)
    rows.append(row)
  return rows


def first_ranking_n(rows: list, direction: str = "unlearned_oracle"):
  """The smallest N whose floor forget p95 lies below the do-nothing forget p95."""
  for r in rows:
    if r["split"] == "forget" and r["direction"] == direction and \
        r["floor_p95"] < r["do_nothing_p95"]:
      return r["num_models"]
  return None


def plot(rows: list, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(SPLITS), figsize=(11, 3.3), sharex=True)
  for ax, s in zip(axes, SPLITS):
    for d, style in zip(DIRECTIONS, ("-", "--")):
      sel = [r for r in rows if r["split"] == s and r["direction"] == d]
      n = [r["num_models"] for r in sel]
      ax.plot(n, [r["do_nothing_p95"] for r in sel], style, color="#6B7280", marker="o",
              label=f"do nothing ({d})")
      ax.plot(n, [r["floor_p95"] for r in sel], style, color="#DC2626", marker="o",
              label=f"oracle vs oracle ({d})")
    ax.set_xscale("log", base=2)
    ax.set_title(s)
    ax.set_xlabel("models per population (N)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("KLOM p95 (nats)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def report(rows: list, info: dict) -> str:
  lines = ["## How many models KLOM needs", "",
           f"{info['dataset']}, model {info['model']}, {info['scenario']} scenario; "
           f"N up to {info['max_models']} originals, oracles and second oracles. KLOM p95 "
           "(nats) per split: doing nothing (originals vs oracles) and the floor (a second "
           "set of oracles vs the oracles).", "",
           "| N | direction | forget: nothing / floor | retain: nothing / floor | "
           "test: nothing / floor |", "|---|---|---|---|---|"]
  for n in sorted({r["num_models"] for r in rows}):
    for d in DIRECTIONS:
      cell = lambda s: next(f"{r['do_nothing_p95']:.2f} / {r['floor_p95']:.2f}" for r in rows
                            if r["num_models"] == n and r["split"] == s and r["direction"] == d)
      lines.append(f"| {n} | {d} | {cell('forget')} | {cell('retain')} | {cell('test')} |")
  first = info["first_ranking_n"]
  lines += ["", (f"The floor's forget p95 first drops below doing nothing's at N = {first} "
                 "(KL(unlearned ‖ oracle)): from there KLOM can rank methods."
                 if first else "At no N measured is the floor's forget p95 below doing "
                 "nothing's: KLOM cannot rank methods here; raise N."),
            *intervals_markdown(info), "", f"Wall time {info['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def job(cfg) -> str:
  usage.one_process_only("experiments.klom_curve", "its nested populations are not split "
                         "over processes")
  t0 = time.perf_counter()
  sizes = parse_sizes(cfg.evaluate.sizes)
  chunk = chunk_of(cfg)
  settings.validate(cfg)
  workdir = cli.workdir(cfg, "klom_curve_")
  rundir.prepare_workdir(workdir, flags.FLAGS.overwrite)
  st = experiment.setup(cfg, print)
  n = sizes[-1]
  with rundir.staged_workdir(workdir, flags.FLAGS.overwrite) as (final, staging):
    originals, oracles, _ = reference_models.references(cfg, st, n, print, chunk=chunk)
    _, second, _ = reference_models.references(cfg, st, n, print, chunk=chunk,
                                               names=("retrain",), first_seed=int(cfg.seed) + n)
    print("margins of the three populations")
    predict = PopulationLogits(st.model, chunk)
    phi = {k: margins_by_split(st, ms.variables, predict)
           for k, ms in (("original", originals), ("oracle", oracles), ("second", second))}
    rows = curve(phi["original"], phi["oracle"], phi["second"], sizes)
    intervals = interval_curve(phi["original"], phi["oracle"], phi["second"], sizes,
                               seed=int(cfg.seed))
    separable = [r["num_models"] for r in intervals if r["separable"]]
    info = {"intervals": intervals, "first_separable_n": separable[0] if separable else None,
            "dataset": st.ds.name, "model": st.model_name, "scenario": cfg.scenario,
            "max_models": n, "sizes": sizes, "first_ranking_n": first_ranking_n(rows),
            "first_ranking_n_oracle_unlearned": first_ranking_n(rows, "oracle_unlearned"),
            "wall_seconds": time.perf_counter() - t0}
    write_curve(staging, rows, info)
  return f"\n{report(rows, info)}\nrun directory: {final}"


def write_curve(directory: Path, rows: list, info: dict) -> None:
  """curve.csv, curve.json, report.md and plots/curve.png."""
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / "curve.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  (directory / "curve.json").write_text(json.dumps({"rows": rows, "info": info}, indent=1))
  (directory / "report.md").write_text(report(rows, info))
  plot(rows, directory / "plots" / "curve.png")
  plot_intervals(info["intervals"], directory / "plots" / "intervals.png")


def plot_intervals(intervals: list, path: Path) -> None:
  """average_95 of doing nothing and of the floor by N, with their 95% intervals."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  n = np.asarray([r["num_models"] for r in intervals], np.float64)
  for key, label, color, dx in (("do_nothing", "do nothing (originals vs oracles)", "#6B7280",
                                 0.97), ("floor", "floor (second oracles vs oracles)",
                                         "#DC2626", 1.03)):
    mid = np.asarray([r[f"{key}_average_95"] for r in intervals])
    low = np.asarray([r[f"{key}_low"] for r in intervals])
    high = np.asarray([r[f"{key}_high"] for r in intervals])
    err = np.where(np.isnan(low), 0.0, np.stack([mid - low, high - mid]))
    ax.errorbar(n * dx, mid, yerr=err, color=color, marker="o", capsize=3, label=label)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("models per side (N)")
  ax.set_ylabel("KLOM average_95 (nats)")
  ax.set_title("KLOM with its 95% interval by N", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)




if __name__ == "__main__":
  cli.run(job, fields=("evaluate.sizes", "evaluate.chunk", "references_dir"))
