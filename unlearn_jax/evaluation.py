"""Population-scale evaluation: N originals, N retrained models, every method on every
original, and the per-example attacks of `unlearn_jax.metrics` between the populations.

The populations are trained as one vmapped program (in chunks of `chunk` models when
memory asks for it) and checkpointed with a fingerprint of what produced them, so a
second evaluation of other methods reuses them (`populations/` in the run directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import methods as methods_lib
from unlearn_jax import metrics as M
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from unlearn_jax import runner
from unlearn_jax import train as train_lib

CSV_COLUMNS = ("method", "forgetting_quality", "competition_score", "eps_hat_median",
               "ulira_accuracy", "mia_efficacy", "avg_gap", "retain_acc", "forget_acc",
               "test_acc", "seconds", "forgetting_quality_kaggle", "eps_hat_inf_fraction",
               "js_to_retrain", "activation_distance", "zrf", "num_models")


@dataclasses.dataclass
class Evaluation:
  rows: list                  # one dict per method (CSV_COLUMNS)
  epsilons: dict              # method -> per-example ε [S]
  statistics: dict            # method -> logit-scaled confidence on D_f [N, S]
  info: dict


def _chunks(n: int, chunk: int):
  chunk = n if chunk <= 0 else chunk
  return [(i, min(n, i + chunk)) for i in range(0, n, chunk)]


def _stack(parts):
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


def fingerprint(cfg, st: runner.Setup, num_models: int) -> dict:
  """What determines the populations; a checkpoint is reused only when this matches."""
  return {"dataset": cfg.dataset, "train_subset": int(cfg.train_subset),
          "test_subset": int(cfg.test_subset), "model": st.model_name,
          "split_sha256": st.split.digests(), "recipe": dataclasses.asdict(st.recipe),
          "num_models": int(num_models), "seed": int(cfg.seed)}


def _digest(fp: dict) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def train_populations(cfg, st: runner.Setup, num_models: int, chunk: int, log,
                      cache: Path | None):
  """(originals, retrained, reused): ModelSets of `num_models` each. With a `cache` root,
  populations live in `cache/<fingerprint digest>/` and are restored from there when
  present, else trained and saved there."""
  from unlearn_jax import checkpoint
  fp = fingerprint(cfg, st, num_models)
  cache = None if cache is None else Path(cache).expanduser() / _digest(fp)
  if cache is not None and (cache / "fingerprint.json").exists():
    saved = json.loads((cache / "fingerprint.json").read_text())
    if saved.get("digest") == _digest(fp):
      log(f"reusing the populations in {cache} (fingerprint {saved['digest']})")
      like = jax.eval_shape(jax.vmap(lambda k: models_lib.init_variables(
          st.model, k, st.ds.input_shape)), jax.random.split(jax.random.PRNGKey(0), num_models))
      out = []
      for name in ("original", "retrain"):
        try:
          v = checkpoint.restore_variables(cache / name, like)
        except checkpoint.CheckpointError as e:
          raise runner.UsageError(f"{e}; delete {cache} to train the populations anew") from e
        out.append(runner.ModelSet(name, v, saved["seconds"][name]))
      return out[0], out[1], True
    raise runner.UsageError(f"{cache}/fingerprint.json does not match its directory name; "
                            "the population cache is corrupt: delete that directory")
  ds, split = st.ds, st.split
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  retain = (x[split.retain], y[split.retain])
  seed_keys = jnp.stack([jax.random.PRNGKey(int(cfg.seed) + i) for i in range(num_models)])
  sets = {}
  for name, (xx, yy), salt in (("original", (x, y), 1), ("retrain", retain, 2)):
    parts, seconds = [], 0.0
    for a, b in _chunks(num_models, chunk):
      keys = seed_keys[a:b]
      init = jax.jit(jax.vmap(lambda k: models_lib.init_variables(
          st.model, jax.random.fold_in(k, 0), ds.input_shape)))(keys)
      with train_lib.loop_mode(st.mode):
        ms = runner.train_population(st.model, st.recipe, init, xx, yy,
                                     jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys),
                                     st.vmapped, log, f"{name} models {a + 1}-{b}/{num_models}")
      parts.append(ms.variables)
      seconds += ms.seconds * (b - a)
    sets[name] = runner.ModelSet(name, _stack(parts), seconds / num_models)
  if cache is not None:
    log(f"saving the populations to {cache} (a later evaluation with the same settings "
        "reuses them)")
    for name, ms in sets.items():
      checkpoint.save_variables(cache / name, ms.variables)
    (cache / "fingerprint.json").write_text(json.dumps(
        {"digest": _digest(fp), "fingerprint": fp,
         "seconds": {k: v.seconds for k, v in sets.items()}}, indent=2) + "\n")
  return sets["original"], sets["retrain"], False


def population_logits(model, variables, x, chunk: int, eval_batch: int = 1000) -> np.ndarray:
  """[N, n, C] logits of every model on `x` (vmapped in chunks of models)."""
  n = jax.tree_util.tree_leaves(variables)[0].shape[0]
  f = jax.jit(jax.vmap(lambda v, xx: train_lib.predict(model, v, xx, eval_batch),
                       in_axes=(0, None)))
  return np.concatenate([np.asarray(f(jax.tree_util.tree_map(lambda a: a[i:j], variables), x))
                         for i, j in _chunks(n, chunk)])


def _acc(logits, labels):
  return (np.argmax(logits, -1) == np.asarray(labels)).mean(axis=-1)     # per model


def evaluate_population(name, logits: dict, labels: dict, retrained: dict, random_forget,
                        seconds: float, mia_models: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """Every metric of one population against the retrained one. `logits[split]` [N, n, C]."""
  n = logits["forget"].shape[0]
  phi_u = M.logit_scaled_confidence(logits["forget"], labels["forget"][None])
  phi_r = M.logit_scaled_confidence(retrained["forget"], labels["forget"][None])
  if name == "retrain":
    # Retrain against retrain: two disjoint halves, the noise floor of the attack at N/2.
    h = n // 2
    eps = M.per_example_epsilons(phi_r[:h], phi_r[h:2 * h])
    f_n = h
    eh, eh_med = M.eps_hat(retrained["forget"][:h], retrained["forget"][h:2 * h],
                           labels["forget"])
  else:
    eps = M.per_example_epsilons(phi_u, phi_r)
    f_n = n
    eh, eh_med = M.eps_hat(logits["forget"], retrained["forget"], labels["forget"])
  ra, fa, ta = (_acc(logits[s], labels[s]) for s in ("retain", "forget", "test"))
  ra_r, ta_r = _acc(retrained["retain"], labels["retain"]), _acc(retrained["test"], labels["test"])
  # U-LiRA: first halves are the shadow populations, second halves the targets.
  h = n // 2
  if name == "retrain":
    ul = {"accuracy": float("nan")}
  else:
    ul = M.ulira(phi_u[:h], phi_r[:h], np.concatenate([phi_u[h:2 * h], phi_r[h:2 * h]]),
                 np.arange(2 * h) < h)
  mia = np.mean([M.mia_efficacy(logits["retain"][i], labels["retain"], logits["test"][i],
                                labels["test"], logits["forget"][i], labels["forget"])
                 for i in range(min(n, mia_models))])
  row = {"method": name, "num_models": n,
         "forgetting_quality": M.forgetting_quality(eps, f_n),
         "forgetting_quality_kaggle": M.forgetting_quality(eps, f_n, "kaggle"),
         "competition_score": M.competition_score(eps, f_n, ra, ra_r, ta, ta_r),
         "eps_hat_median": eh_med, "eps_hat_inf_fraction": float(np.mean(np.isinf(eh))),
         "ulira_accuracy": ul["accuracy"], "mia_efficacy": float(mia),
         "retain_acc": float(ra.mean()), "forget_acc": float(fa.mean()),
         "test_acc": float(ta.mean()), "seconds": seconds,
         "js_to_retrain": float(np.mean([M.js_to_retrain(logits["forget"][i], retrained["forget"][i])
                                         for i in range(n)])),
         "activation_distance": float(np.mean([M.activation_distance(
             logits["forget"][i], retrained["forget"][i]) for i in range(n)])),
         "zrf": float(np.mean([M.zrf(logits["forget"][i], random_forget[i]) for i in range(n)]))}
  return row, eps, phi_u


MEMORY_FRACTION = 0.4      # of physical memory, for one vmapped chunk of a method


def _physical_memory() -> float:
  import os
  try:
    return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 8.0 * 2 ** 30


def _memory_per_model(spec, ctx, hparams, variables, data, keys) -> float:
  """XLA's estimate (temporaries + outputs) of one model's run of the method."""
  fn = spec(ctx, **hparams)
  one = jax.tree_util.tree_map(lambda v: v[:1], variables)
  try:
    ma = jax.jit(jax.vmap(fn, in_axes=(0, None, 0))).lower(one, data, keys[:1]).compile() \
        .memory_analysis()
    return float(ma.temp_size_in_bytes + ma.output_size_in_bytes)
  except Exception:  # no analysis on this backend: assume it fits
    return 0.0


def _apply_in_chunks(spec, ctx, hparams, variables, data, keys, st, chunk, log):
  """The method on every model, vmapped in chunks; a chunk that runs out of memory is
  halved and retried (e.g. `influence` holds an N×P gradient matrix per model)."""
  n = keys.shape[0]
  size = n if chunk <= 0 else chunk
  if chunk <= 0 and st.vmapped:
    per_model = _memory_per_model(spec, ctx, hparams, variables, data, keys)
    budget = MEMORY_FRACTION * _physical_memory()
    if per_model * n > budget:
      size = max(1, int(budget // per_model))
      log(f"  {spec.name}: ~{per_model / 2 ** 20:,.0f} MiB per model; vmapping chunks of "
          f"{size} to stay within {budget / 2 ** 30:.1f} GiB")
  while True:
    try:
      parts, seconds = [], 0.0
      with train_lib.loop_mode(st.mode):
        for a, b in _chunks(n, size):
          ms = runner.apply_method(spec, ctx, hparams, jax.tree_util.tree_map(
              lambda v: v[a:b], variables), data, keys[a:b], st.vmapped)
          parts.append(ms.variables)
          seconds += ms.seconds * (b - a)
      return _stack(parts), seconds
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e) or size == 1:
        raise
      size = max(1, size // 2)
      log(f"  {spec.name}: out of memory; retrying in chunks of {size} models")


def run(cfg, method_hparams: dict, num_models: int, chunk: int, cache: Path | None,
        log: Callable[[str], None] = print, mia_models: int = 16) -> Evaluation:
  t_start = time.perf_counter()
  if num_models < 4:
    raise runner.UsageError(f"--num_models={num_models} must be at least 4 (the attacks "
                            "split each population in halves)")
  if chunk < 0:
    raise runner.UsageError(f"--chunk={chunk} must be 0 (all at once) or positive")
  st = runner.setup(cfg, log)
  hparams = runner.resolve_hparams(st.method_names, method_hparams, cfg.scenario, log)
  ds, split = st.ds, st.split
  log(f"dataset {ds.name}: forget {split.forget.size}, retain {split.retain.size}, "
      f"test {split.test.size}; model {st.model_name}; {num_models} originals + {num_models} "
      f"retrained ({'vmapped' if st.vmapped else 'in sequence'}"
      f"{f', chunks of {chunk}' if chunk else ''})")
  # Batches of training, methods and predictions split over the mesh's `data` axis
  # (see unlearn_jax.parallel); a no-op on one device.
  with parallel.data_parallel(st.mesh):
    originals, retrained, reused = train_populations(cfg, st, num_models, chunk, log, cache)
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    forget, retain = (x[split.forget], y[split.forget]), (x[split.retain], y[split.retain])
    test = runner.take_test(ds, split.test)
    labels = {"forget": np.asarray(forget[1]), "retain": np.asarray(retain[1]),
              "test": np.asarray(test[1])}
    inputs = {"forget": forget[0], "retain": retain[0], "test": test[0]}
    ctx = methods_lib.MethodContext(st.model, ds.num_classes, ds.input_shape,
                                    st.spec.forget_classes if cfg.scenario == "class" else (),
                                    st.model_name)
    seed_keys = jnp.stack([jax.random.PRNGKey(int(cfg.seed) + i) for i in range(num_models)])

    def logits_of(variables):
      return {s: population_logits(st.model, variables, xx, chunk) for s, xx in inputs.items()}

    log("logits of the retrained and original populations")
    retrained_logits = logits_of(retrained.variables)
    random_vars = jax.jit(jax.vmap(lambda k: models_lib.init_variables(
        st.model, jax.random.fold_in(k, 99), ds.input_shape)))(seed_keys)
    random_forget = population_logits(st.model, random_vars, forget[0], chunk)
    populations = [("original", originals.variables, 0.0), ("retrain", retrained.variables,
                                                             retrained.seconds)]
    rows, epsilons, stats = [], {}, {}
    for name, variables, secs in populations:
      lg = retrained_logits if name == "retrain" else logits_of(variables)
      row, eps, phi = evaluate_population(name, lg, labels, retrained_logits, random_forget, secs,
                                          mia_models)
      rows.append(row); epsilons[name] = eps; stats[name] = phi
    for m in st.method_names:
      spec = methods_lib.get_method(m)
      data = methods_lib.select_data(spec, forget, retain)
      t0 = time.perf_counter()
      unlearned, seconds = _apply_in_chunks(spec, ctx, hparams[m], originals.variables, data,
                                            jax.vmap(lambda k: runner.method_key(k, m))(seed_keys),
                                            st, chunk, log)
      row, eps, phi = evaluate_population(m, logits_of(unlearned), labels, retrained_logits,
                                          random_forget, seconds / num_models, mia_models)
      rows.append(row); epsilons[m] = eps; stats[m] = phi
      log(f"method {m}: {seconds / num_models:.3f}s per model "
          f"({time.perf_counter() - t0:.1f}s for {num_models} with compilation and metrics) | "
          f"F {row['forgetting_quality']:.3f}, score {row['competition_score']:.3f}, "
          f"median ε̂ {row['eps_hat_median']:.2f}, U-LiRA {row['ulira_accuracy']:.2f}")
  retrain_s = retrained.seconds
  for r in rows:
    r["cost_ratio"] = r["seconds"] / retrain_s if retrain_s else float("nan")
  ref = next(r for r in rows if r["method"] == "retrain")
  for r in rows:
    r["avg_gap"] = M.avg_gap(r, ref)
  info = {"model": st.model_name, "num_models": num_models, "chunk": chunk,
          "populations_reused": reused, "loop_mode": st.mode, "backend": jax.default_backend(),
          "mesh": dict(st.mesh.shape) if st.mesh is not None else None,
          "fingerprint": fingerprint(cfg, st, num_models), "hparams": hparams,
          "retrain_seconds_per_model": retrain_s,
          "wall_seconds": time.perf_counter() - t_start}
  return Evaluation(rows, epsilons, stats, info)


# ----------------------------------------------------------------------------- artifacts
def write_csv(path: Path, rows: list) -> None:
  import csv
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def report_markdown(ev: Evaluation, title: str) -> str:
  head = ["method", "F", "score", "median ε̂", "U-LiRA acc", "MIA-eff.", "Avg. Gap", "RA", "FA",
          "TA", "s/model", "× retrain"]
  lines = [f"## {title}", "",
           f"{ev.info['num_models']} unlearned vs {ev.info['num_models']} retrained models per "
           "method. F: forgetting quality (NeurIPS 2023 scoring code; 1 = indistinguishable "
           "from retraining); score = F·RA_U/RA_R·TA_U/TA_R; ε̂: seed 004's per-example "
           "Gaussian LR attack (0 ideal); U-LiRA accuracy (0.5 ideal); MIA-efficacy and "
           "Avg. Gap as in SalUn (compare with retrain / 0 ideal). The `retrain` row compares "
           "two disjoint halves of the retrained population: the noise floor of the attacks "
           f"at N/2 = {ev.info['num_models'] // 2}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in ev.rows:
    pct = lambda v: f"{100 * v:.1f}"
    lines.append("| " + " | ".join([
        r["method"], f"{r['forgetting_quality']:.3f}", f"{r['competition_score']:.3f}",
        f"{r['eps_hat_median']:.2f}", f"{r['ulira_accuracy']:.2f}", f"{r['mia_efficacy']:.3f}",
        f"{r['avg_gap']:.1f}", pct(r["retain_acc"]), pct(r["forget_acc"]), pct(r["test_acc"]),
        f"{r['seconds']:.3f}", f"{r['cost_ratio']:.2f}"]) + " |")
  ranked = sorted((r for r in ev.rows if r["method"] not in ("retrain",)),
                  key=lambda r: -r["competition_score"])
  lines += ["", "Ranked by competition score: " +
            ", ".join(f"{r['method']} {r['competition_score']:.3f}" for r in ranked),
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
      {"config": config, "info": ev.info, "rows": ev.rows}, indent=2, default=float) + "\n")
  plots = directory / "plots"
  plots.mkdir(exist_ok=True)
  plot_epsilons(plots / "epsilons.png", ev.epsilons)
  methods = [r["method"] for r in ev.rows if r["method"] not in ("retrain",)]
  plot_distributions(plots / "distributions.png", ev.statistics, methods[:4])
  plot_metric_chart(plots / "metrics.png", ev.rows)
  return md
