"""The tuning run behind `python -m experiments.tune`: train originals (and retrains),
search each method's space as K configurations × S seeds, select on the selection parts,
report default vs tuned on the parts selection never saw.

Pure computation plus logging; `write_tuning` writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import experiment, reference_models, settings
from .experiment import setup, take_test
from .settings import resolve_hparams
from .usage import UsageError
from unlearn_jax import driver, methods as methods_lib, parallel, tuning

REPORT_KEYS = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr")


@dataclasses.dataclass
class TuningResult:
  rows: list            # tuning.csv: method, config, seed, searched values, metrics, score
  table: list           # per method: default and tuned metrics on the report parts
  tuned: dict           # tuned.json
  info: dict


def check_options(budget: int, rule: str, fraction: float, loop: str,
                  min_retain: float = 0.9) -> None:
  """One-line flag errors before anything is loaded."""
  if not 0 <= min_retain <= 1:
    raise UsageError(f"--config.tune.min_retain={min_retain} must lie in [0, 1] (a fraction of the "
                     "original's retain accuracy; 0 turns the floor off)")
  if budget < 1:
    raise UsageError(f"--config.tune.budget={budget} must be >= 1")
  if rule not in tuning.SELECTION_RULES:
    raise UsageError(f"--config.tune.select={rule!r} is unknown; allowed: "
                     f"{', '.join(tuning.SELECTION_RULES)}")
  if not 0 < fraction < 1:
    raise UsageError(f"--config.tune.selection_fraction={fraction} must lie strictly between 0 and 1")
  if loop not in settings.LOOP_CHOICES:
    raise UsageError(f"--config.tune.search_loop={loop!r} is unknown; allowed: "
                     f"{', '.join(settings.LOOP_CHOICES)}")


def _config_text(config: dict) -> str:
  """`lr 0.0222, weight_decay 2.55e-05`: a configuration as the log and report.md print it."""
  return ", ".join(f"{k} {v:.3g}" for k, v in config.items())


def _mean_rows(rows: list) -> dict:
  return {k: float(np.nanmean([r[k] for r in rows])) for k in REPORT_KEYS}


@dataclasses.dataclass
class Search:
  """What every method's search reads: the settings, the data (the selection and report
  parts), the originals it starts from and the references it is scored against."""
  cfg: object
  budget: int
  rule: str
  min_retain: float
  hparams: dict
  ctx: object
  seed_keys: object
  forget: tuple
  retain: tuple
  originals: object
  search_loop: str
  evaluate: object
  select_arrays: dict
  report_arrays: dict
  reference: dict
  retrain_s: float
  log: Callable[[str], None]
  search_mesh: object


def _parts(cfg, st, fraction: float) -> tuple:
  """(selection parts, forget, retain, selection arrays, report arrays) of the split:
  selection reads forget_select, retain_select and val; the report the rest and test."""
  ds, split = st.ds, st.split
  try:
    parts = tuning.selection_parts(split, fraction, seed=int(cfg.split_seed))
  except ValueError as e:
    raise UsageError(f"--config.tune.selection_fraction: {e}") from e
  take = lambda idx: (jnp.asarray(ds.train_x[idx]), jnp.asarray(ds.train_y[idx]))
  select_arrays = {"retain": take(parts["retain_select"]), "forget": take(parts["forget_select"]),
                   "test": take_test(ds, split.val)}
  report_arrays = {"retain": take(parts["retain_report"]), "forget": take(parts["forget_report"]),
                   "test": take_test(ds, split.test)}
  if split.test_forget.size:   # class scenarios: the MIA's non-members are the forgotten classes'
    select_arrays["test_forget"] = take_test(ds, split.val_forget)
    report_arrays["test_forget"] = take_test(ds, split.test_forget)
  log_line = (f"dataset {ds.name}; split {cfg.scenario}: forget {split.forget.size} "
              f"(select on {parts['forget_select'].size}, report {parts['forget_report'].size}), "
              f"retain {split.retain.size} (select {parts['retain_select'].size}), val "
              f"{split.val.size} (select), test {split.test.size} (report only)")
  return parts, take(split.forget), take(split.retain), select_arrays, report_arrays, log_line


def _references(cfg, st, retain, select_arrays, report_arrays, log) -> tuple:
  """(original and retrained ModelSets, the metrics program, their metrics on the
  selection and report parts)."""
  seed_keys = reference_models.seed_keys(cfg.seed, cfg.seeds)
  train_set = (jnp.asarray(st.ds.train_x), jnp.asarray(st.ds.train_y))
  refs = reference_models.references(cfg, st, int(cfg.seeds), log, data=(train_set, retain))
  pops = {"original": refs.original, "retrain": refs.retrain}
  evaluate = driver.SeedMetrics(st.model, seed_mode=st.mode, eval_batch=cfg.eval_batch_size)
  reference = {name: {"select": evaluate(ms, select_arrays)[0],
                      "report": evaluate(ms, report_arrays)[0]} for name, ms in pops.items()}
  for name in pops:
    r = _mean_rows(reference[name]["report"])
    log(f"{name} on the report parts: RA {100 * r['retain_acc']:.1f} FA "
        f"{100 * r['forget_acc']:.1f} TA {100 * r['test_acc']:.1f} MIA {r['mia_loss_lr']:.2f}"
        f"; {pops[name].seconds:.1f} s")
  return seed_keys, pops, evaluate, reference


def run(cfg, fixed_hparams: dict, *, budget: int = 16, rule: str = "no_retrain",
        fraction: float = 0.2, loop: str = "auto", min_retain: float = 0.9,
        log: Callable[[str], None] = print) -> TuningResult:
  """Tunes every method of `cfg.methods` that declares a search space; the choice is the
  best score among configurations that keep `min_retain` of the original's retain
  accuracy on retain_select (`tuning.select_configuration`)."""
  check_options(budget, rule, fraction, loop, min_retain)
  t_start = time.perf_counter()
  st = setup(cfg, log, population=budget)
  # The references train in each process (S models, the same in every one); the search's
  # K configurations are the population a mesh splits: across the processes of a
  # multi-process job, or over `--config.mesh_seeds` devices.
  search_mesh = st.mesh if jax.process_count() > 1 or int(cfg.get("mesh_seeds") or 0) > 1 \
      else None
  hparams = resolve_hparams(st.method_names, fixed_hparams, cfg.scenario, log, st.model_name)
  search_loop = st.mode if loop == "auto" else loop
  if jax.process_count() > 1 and search_loop != "vmap":
    raise UsageError(f"--config.tune.search_loop={search_loop} runs the configurations one "
                     f"after another in one process; a {jax.process_count()}-process job "
                     "splits them over the processes: pass --config.tune.search_loop=vmap")
  parts, forget, retain, select_arrays, report_arrays, line = _parts(cfg, st, fraction)
  log(line)
  log(f"model {st.model_name}, {cfg.seeds} seed(s); search: {budget} configurations × "
      f"{cfg.seeds} seeds per method (and per value of a searched integer hyperparameter), "
      + ("one vmapped program; " if search_loop == "vmap"
         else "one compiled program called per configuration and seed; ")
      + f"selection rule {rule}")
  seed_keys, pops, evaluate, reference = _references(cfg, st, retain, select_arrays,
                                                     report_arrays, log)
  ctx = experiment.method_context(st, st.spec.forget_classes if cfg.scenario == "class" else ())
  search = Search(cfg, budget, rule, min_retain, hparams, ctx, seed_keys, forget, retain,
                  pops["original"].variables, search_loop, evaluate, select_arrays,
                  report_arrays, reference, pops["retrain"].seconds, log, search_mesh)
  rows, table, tuned = _search_every_method(st.method_names, search)
  for name in ("original", "retrain"):
    table.insert(0 if name == "original" else 1, {
        "method": name, "default": _mean_rows(reference[name]["report"]),
        "tuned": _mean_rows(reference[name]["report"])})
  info = {"rule": rule, "budget": budget, "selection_fraction": fraction,
          "min_retain": min_retain,
          "search_loop": search_loop, "seeds": int(cfg.seeds), "model": st.model_name,
          "scenario": cfg.scenario, "retrain_seconds": search.retrain_s,
          "selection_sizes": {k: int(v.size) for k, v in parts.items()},
          "selection_sha256": {k: _digest(v) for k, v in parts.items()},
          "wall_seconds": time.perf_counter() - t_start}
  return TuningResult(rows, table, _tuned_json(cfg, st, info, tuned), info)


def _search_every_method(method_names, search: Search) -> tuple:
  """(rows, table, tuned) over the methods with a search space, with the time left."""
  rows, table, tuned = [], [], {}
  searchable = [m for m in method_names if methods_lib.get_method(m).space]
  for m in method_names:
    if m not in searchable:
      search.log(f"{m}: no search space; kept at its defaults")
  t_search = time.perf_counter()      # time left counts the searches only, not training
  for i, m in enumerate(searchable):
    method_rows, entry, choice = _search_method(m, search)
    rows += method_rows
    table.append(entry)
    tuned[m] = choice
    left = (len(searchable) - i - 1) * (time.perf_counter() - t_search) / (i + 1)
    search.log(f"  {m} done ({i + 1}/{len(searchable)}); ~{left:.0f} s left")
  return rows, table, tuned


def _tuned_json(cfg, st, info: dict, tuned: dict) -> dict:
  """tuned.json: the chosen hyperparameters per method, the rule and the data it saw."""
  return {"rule": info["rule"], "min_retain": info["min_retain"], "budget": info["budget"],
          "scenario": cfg.scenario, "dataset": cfg.dataset, "model": st.model_name,
          "selection": {"fraction": info["selection_fraction"],
                        "sizes": info["selection_sizes"], "sha256": info["selection_sha256"],
                        "data": "selected on forget_select, retain_select and val; "
                                "reported on forget_report, retain_report and test"},
          "methods": tuned}


def _grids(m: str, configs, env: Search) -> tuple:
  """(grids, configurations, seconds, compile seconds) of one method's search: one
  `tuning.run_search` program per value of a searched integer hyperparameter."""
  method = methods_lib.get_method(m)
  # An integer hyperparameter the user set (--config.methods.<method>.epochs=20) stays fixed.
  user_set = {k for k in method.space if tuning.is_outer(method, k)
              and env.hparams[m].get(k, method.defaults[k]) != method.defaults[k]}
  keys = jax.vmap(lambda k: driver.method_key(k, m))(env.seed_keys)
  data = methods_lib.select_data(method, env.forget, env.retain, ctx=env.ctx)
  grids, cfg_list, seconds, compile_s = [], [], 0.0, 0.0
  for outer in tuning.outer_configs(method, user_set):
    fixed = {**{k: v for k, v in env.hparams[m].items() if k not in configs}, **outer}
    with parallel.data_parallel(env.search_mesh):
      grid, sec, comp = tuning.run_search(method, env.ctx, configs, fixed, env.originals,
                                          data, keys, env.search_loop)
    if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(grid)):
      env.log(f"  {m} {outer or ''}: some configurations returned non-finite weights; they "
              "score +inf")
    grids.append(grid)
    seconds, compile_s = seconds + sec, compile_s + comp
    cfg_list += [{**outer, **c} for c in tuning.configs_list(configs)]
  return grids, cfg_list, seconds, compile_s, fixed


def _search_method(m: str, env: Search) -> tuple:
  """(rows, table entry, tuned.json entry) of one method: its K configurations × S seeds
  as `tuning.run_search` programs (one per value of a searched integer hyperparameter),
  scored on the selection parts, the choice reported on the report parts."""
  cfg, budget, log = env.cfg, env.budget, env.log
  method = methods_lib.get_method(m)
  configs = tuning.sample_configs(method, budget, driver.method_key(jax.random.PRNGKey(
      int(cfg.seed)), m))
  grids, cfg_list, seconds, compile_s, fixed = _grids(m, configs, env)
  variables_of = lambda k: jax.tree_util.tree_map(lambda a: a[k % budget], grids[k // budget])
  rows, scores, retain_acc = _score_configs(m, cfg_list, variables_of, env)
  mean = scores.mean(axis=1)
  best, eligible = tuning.select_configuration(
      scores, retain_acc, [r["retain_acc"] for r in env.reference["original"]["select"]],
      env.min_retain)
  if not eligible:
    log(f"  {m}: no configuration keeps {100 * env.min_retain:g}% of the original's retain "
        "accuracy on retain_select; chose the one that keeps the most")
  reported = {label: _mean_rows(env.evaluate(driver.ModelSet(m, variables_of(k), 0.0),
                                             env.report_arrays)[0])
              for label, k in (("default", 0), ("tuned", best))}
  total, seeds = len(cfg_list), int(cfg.seeds)
  entry = {"method": m, "default": reported["default"], "tuned": reported["tuned"],
           "default_score": float(mean[0]), "tuned_score": float(mean[best]),
           "search_seconds_per_seed": seconds / seeds,
           "method_seconds": seconds / (total * seeds), "compile_seconds": compile_s,
           "cost_ratio_with_search": (seconds / seeds) / max(env.retrain_s, 1e-9),
           "tuned_config": cfg_list[best], "eligible": eligible}
  choice = {"hparams": {**fixed, **cfg_list[best]}, "searched": cfg_list[best],
            "default": {k: method.defaults[k] for k in cfg_list[0]},
            "score": float(mean[best]), "default_score": float(mean[0]), "config": best,
            "kept_min_retain": eligible}
  _log_choice(log, m, entry, reported, total, seeds, seconds, compile_s, mean, best)
  return rows, entry, choice


def _log_choice(log, m, entry, reported, total, seeds, seconds, compile_s, mean, best):
  log(f"tuning {m}: {total} configurations × {seeds} seeds in {seconds:.1f} s "
      f"({total * seeds / max(seconds, 1e-9):.1f} configurations/s), compile "
      f"{compile_s:.1f} s; score {mean[0]:.1f} at the defaults → {mean[best]:.1f} "
      f"(configuration {best})")
  # The report parts' numbers go to the log as each method finishes, so a search that is
  # stopped before the end still leaves its finished methods' table in the log.
  log("  " + "; ".join(
      f"{label} RA {100 * r['retain_acc']:.1f} FA {100 * r['forget_acc']:.1f} "
      f"TA {100 * r['test_acc']:.1f} MIA {r['mia_loss_lr']:.2f}"
      for label, r in reported.items())
      + f"; tuned {_config_text(entry['tuned_config'])}; "
      f"search × retrain {entry['cost_ratio_with_search']:.2f}")


def _score_configs(m: str, cfg_list: list, variables_of, env) -> tuple:
  """(rows, scores [K, S], retain accuracy [K, S]) of every configuration on the selection
  parts, by the selection rule."""
  cfg = env.cfg
  seeds = int(cfg.seeds)
  scores = np.zeros((len(cfg_list), seeds))
  retain_acc = np.zeros((len(cfg_list), seeds))
  rows = []
  for k, hp in enumerate(cfg_list):
    sel = env.evaluate(driver.ModelSet(m, variables_of(k), 0.0), env.select_arrays)[0]
    for s, r in enumerate(sel):
      if env.rule == "retrain_gap":
        score = tuning.retrain_gap_score(r, env.reference["retrain"]["select"][s])
      else:
        score = tuning.no_retrain_score(r, env.reference["original"]["select"][s],
                                        cfg.scenario)
      score = score if math.isfinite(score) else float("inf")
      scores[k, s] = score
      retain_acc[k, s] = r["retain_acc"]
      rows.append({"method": m, "config": k, "seed": int(cfg.seed) + s, **hp,
                   **{f"select_{key}": r[key] for key in REPORT_KEYS}, "score": score})
  return rows, scores, retain_acc


def _digest(idx) -> str:
  from unlearn_jax.data import splits
  return splits.sha256_indices(np.asarray(idx))


def load_tuned(path: str) -> dict:
  """{method: hyperparameters} from a tuned.json; UsageError naming --hparams."""
  try:
    data = json.loads(Path(path).read_text())
    chosen = {m: dict(v["hparams"]) for m, v in data["methods"].items()}
  except FileNotFoundError:
    raise UsageError(f"--config.tuned_hparams={path}: no such file") from None
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UsageError(f"--config.tuned_hparams={path}: not a tuned.json written by experiments.tune "
                     f"({type(e).__name__}: {e})") from None
  unknown = sorted(set(chosen) - set(methods_lib.list_methods()))
  if unknown:
    raise UsageError(f"--config.tuned_hparams={path}: method {unknown[0]!r} is unknown; allowed: "
                     f"{', '.join(methods_lib.list_methods())}")
  return chosen
