r"""Deletion requests over time: K requests applied in order by each method, SISA and
retraining, every metric re-measured after every request.

    python -m experiments.requests --config=digits                   # 10 requests of 1%
    python -m experiments.requests --config.requests.count=5 --config.requests.kind=class \
        --config.forget_classes=3
    python -m experiments.requests --methods=sisa,finetune --config.requests.sisa_shards=8 --seeds=3

Requests: `--config.requests.kind=random` draws K disjoint sets of `--config.requests.size` examples
(a fraction of train when < 1, a count otherwise); `class` splits the `--config.forget_classes`
examples into K near-equal requests. After request k the forget set is the union of
requests 1..k (cumulative) and the retain set everything else.

* `retrain`: a model trained from scratch on the retain set after every request (the
  reference curve);
* an approximate method: applied to the previous request's model with D_f = request k and
  D_r = the current retain set (so errors compound, as in deployment);
* `sisa`: `unlearn_jax.sisa` (`requests.sisa_shards` × `requests.sisa_slices`), trained once, each
  request deleted exactly; predictions by the shard models' mean logits.

After every request: RA (current retain set), FA (cumulative forget set), TA, the loss MIA
(cumulative forget set vs test) and the seconds so far. Writes requests.csv (method, seed,
request, metrics, seconds, cumulative seconds), requests.md (per-request means and the
final and worst gaps to retrain per method) and plots/requests_<metric>.png (each metric
against the request index, retrain's curve as reference). Every other flag is
experiments.unlearn's (dataset, model, seeds, recipe, `--config.methods.<method>.<hparam>`).
"""

import csv
import math
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from . import setup
from . import cli   # the shared flags, their parsing, the one main
from unlearn_jax import driver, methods as methods_lib, metrics as metrics_lib, parallel, sisa
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import model_variables

REQUEST_KINDS = ("random", "class")
METRICS = (("retain_acc", "RA"), ("forget_acc", "FA"), ("test_acc", "TA"),
           ("mia_loss_lr", "MIA"))


def make_requests(train_y, kind: str, k: int, size: float, classes, seed: int) -> list:
  """K disjoint index arrays (see the module docstring); UsageError for what cannot be."""
  n = len(train_y)
  if k < 1:
    raise setup.UsageError(f"--config.requests.count={k} must be >= 1")
  if kind not in REQUEST_KINDS:
    raise setup.UsageError(f"--config.requests.kind={kind!r} is unknown; allowed: "
                           f"{', '.join(REQUEST_KINDS)}")
  rng = np.random.default_rng(seed)
  if kind == "class":
    if not classes:
      raise setup.UsageError("--config.requests.kind=class needs --config.forget_classes (e.g. 3)")
    pool = rng.permutation(np.flatnonzero(np.isin(train_y, classes)))
    if pool.size < k:
      raise setup.UsageError(f"--config.forget_classes={','.join(map(str, classes))} has {pool.size} "
                             f"examples, fewer than --config.requests.count={k}")
    return [np.sort(p) for p in np.array_split(pool, k)]
  m = int(round(size * n)) if size < 1 else int(size)
  if m < 1 or k * m >= n:
    raise setup.UsageError(f"--config.requests.size={size:g} × --config.requests.count={k} "
                           "must select at least "
                           f"one example per request and leave a retain set ({n} examples)")
  pool = rng.permutation(n)[:k * m]
  return [np.sort(p) for p in pool.reshape(k, m)]


def _scores(logits_fn, arrays, seed: int) -> dict:
  """RA, FA, TA and the loss MIA from `logits_fn(x)`; arrays = {split: (x, y)}."""
  out, losses = {}, {}
  for split, (x, y) in arrays.items():
    logits = logits_fn(x)
    out[f"{split}_acc"] = float(metrics_lib.accuracy(logits, y))
    losses[split] = np.asarray(metrics_lib.per_example_loss(logits, y))
  try:
    out["mia_loss_lr"] = metrics_lib.mia_loss_lr(losses["forget"], losses["test"], seed=seed)
  except ValueError:          # fewer than 10 forget examples after the first requests
    out["mia_loss_lr"] = float("nan")
  return out


def _train_sisa(cfg, st, names, sisa_config, seed_keys, init_vars, log) -> tuple:
  """(SISA's trained states per seed, the mesh its shards use): a multi-process job
  spreads the shards over every process (the other methods' few seeds run in every
  process, the same in each)."""
  sisa_mesh = (setup.make_mesh(cfg, sisa_config.batch_size, st.mode,
                               population=sisa_config.shards)
               if jax.process_count() > 1 and "sisa" in names else None)
  states = []
  if "sisa" in names:
    for i in range(int(cfg.seeds)):
      with parallel.data_parallel(sisa_mesh):
        states.append(sisa.train_sisa(
            st.model, (st.ds.train_x, st.ds.train_y), seed_keys[i], sisa_config,
            init_variables=jax.tree_util.tree_map(lambda a: a[i], init_vars),
            shard_loop=st.mode))
    log(f"sisa: {sisa_config.shards} shards × {sisa_config.slices} slices trained in "
        f"{np.mean([s.log[0]['seconds'] for s in states]):.1f} s per seed")
  return states, sisa_mesh


def _request_rows(k: int, request, deleted, names, env, spent: dict, test) -> list:
  """Every method's rows after request k (its deletion added to `deleted`)."""
  deleted[request] = True
  forget_idx, retain_idx = np.flatnonzero(deleted), np.flatnonzero(~deleted)
  x, y = env.x, env.y
  arrays = {"retain": (x[retain_idx], y[retain_idx]), "forget": (x[forget_idx], y[forget_idx]),
            "test": test}
  rows = []
  for m in names:
    logits_of, seconds, aux = _after_request(m, k, request, arrays, env)
    spent[m] += seconds
    for i in range(int(env.cfg.seeds)):
      r = _scores(lambda xx: logits_of(xx, i), arrays, seed=i)
      rows.append({"method": m, "seed": int(env.cfg.seed) + i, "request": k,
                   "forget_size": int(forget_idx.size), **r,
                   "cumulative_seconds": spent[m], **_certificate(aux, i)})
  return rows


def run(cfg, hparams: dict, names: list, *, num_requests: int, request_size: float,
        kind: str, sisa_config: sisa.SisaConfig, log=print) -> dict:
  """Every method over the K requests; returns {"rows", "info"}. `sisa_config` with
  `epochs_per_slice=0` takes the recipe's epochs / R (at least 1)."""
  st = setup.setup(cfg, log, population=0)    # SISA builds its own mesh below
  ds, model = st.ds, st.model
  methods_run = [m for m in names if m not in ("sisa", "retrain")]
  hparams = {**hparams, **setup.resolve_hparams(methods_run, hparams, kind, log, st.model_name)}
  if sisa_config.epochs_per_slice == 0:
    sisa_config = dataclasses.replace(
        sisa_config, epochs_per_slice=max(1, st.recipe.epochs // sisa_config.slices))
  requests = make_requests(ds.train_y, kind, num_requests, request_size,
                           setup.parse_classes(cfg.forget_classes), int(cfg.split_seed))
  log(f"dataset {ds.name}: {len(ds.train_y)} train; {num_requests} {kind} requests of "
      f"{', '.join(str(r.size) for r in requests[:3])}{'…' if num_requests > 3 else ''} "
      f"examples; model {st.model_name}; {cfg.seeds} seed(s); methods {', '.join(names)}")
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  seed_keys = setup.seed_keys(cfg.seed, int(cfg.seeds))
  init_vars = setup.initial_variables(st, seed_keys)
  t0 = time.perf_counter()
  original = setup.train_reference(st, "original", x, y, seed_keys, init_vars,
                                   lambda s: None)
  log(f"original: {original.seconds:.1f} s per seed")
  sisa_states, sisa_mesh = _train_sisa(cfg, st, names, sisa_config, seed_keys, init_vars, log)
  ctx = setup.method_context(st, setup.parse_classes(cfg.forget_classes) if kind == "class"
                             else ())
  env = Requests(cfg, st, hparams, ctx, x, y, seed_keys, init_vars,
                 jax.jit(lambda v, xx: train_lib.predict(model, v, xx, cfg.eval_batch_size)),
                 {m: original.variables for m in methods_run}, sisa_states, [], sisa_mesh)
  rows, spent, test = [], {m: 0.0 for m in names}, setup.take_test(ds, st.split.test)
  deleted = np.zeros(len(ds.train_y), bool)
  for k, request in enumerate(requests, start=1):
    rows += _request_rows(k, request, deleted, names, env, spent, test)
    done = [rw for rw in rows if rw["request"] == k]
    log(f"request {k}/{num_requests} ({int(deleted.sum())} forgotten): " + "; ".join(
        f"{m} FA {100 * np.mean([rw['forget_acc'] for rw in done if rw['method'] == m]):.1f}"
        for m in names) + f" | {time.perf_counter() - t0:.0f} s elapsed, "
        f"~{(time.perf_counter() - t0) / k * (num_requests - k):.0f} s left")
  sisa_info = {"shards": sisa_config.shards, "slices": sisa_config.slices,
               "epochs_per_slice": sisa_config.epochs_per_slice,
               "train_seconds": float(np.mean([s.log[0]["seconds"] for s in sisa_states]))
               if sisa_states else None, "per_request": env.sisa_work}
  return {"rows": rows, "info": {"requests": [r.tolist() for r in requests], "kind": kind,
                                 "model": st.model_name, "seeds": int(cfg.seeds),
                                 "train_program": st.train_program.record(),
                                 "original_seconds": original.seconds, "sisa": sisa_info,
                                 "wall_seconds": time.perf_counter() - t0}}


@dataclasses.dataclass
class Requests:
  """What applying a request reads and updates: the settings, the data, the keys, the
  predictor, every method's current weights and SISA's states (and its work so far)."""
  cfg: object
  st: object
  hparams: dict
  ctx: object
  x: object
  y: object
  seed_keys: object
  init_vars: object
  predict: object
  state: dict
  sisa_states: list
  sisa_work: list
  sisa_mesh: object


CERTIFICATE_COLUMNS = ("residual_bound", "residual_budget", "refits", "epsilon_bound",
                       "unlearn_epochs", "distance_bound", "noise_sigma")


def _certificate(aux: dict, seed: int) -> dict:
  """A certified method's certificate after this request (`certified_head`: the residual
  bound accumulated since the last refit, the budget it may reach, the refits so far;
  `noisy_finetune`: the ε its bound gives, the epochs it ran, the W∞ bound it started from,
  its noise σ, the retrains so far)."""
  return {f"certified_{k}": float(aux[k][seed]) for k in CERTIFICATE_COLUMNS if k in aux}


def _after_request(m: str, k: int, request, arrays: dict, env) -> tuple:
  """(logits_of(x, seed), seconds per seed, the method's aux per seed) of method `m` once
  request `k` is served:
  retrain from scratch on what is left, SISA's retraining of the affected shards, or the
  method applied to its own model after the previous requests (`env.state`)."""
  st, cfg, model = env.st, env.cfg, env.st.model
  one = lambda v, i: jax.tree_util.tree_map(lambda a: a[i], v)
  if m == "retrain":
    ms = driver.train_population(st.train_model or model, st.recipe, env.init_vars,
                                 *arrays["retain"],
                                 jax.vmap(lambda kk: jax.random.fold_in(kk, 2 + k))(
                                     env.seed_keys),
                                 seed_mode=st.mode, log=lambda s: None, label="retrain",
                                 loop=st.train_program.loop,
                                 steps_per_call=st.train_program.steps_per_call)
    return (lambda xx, i, v=ms.variables: env.predict(one(v, i), xx)), ms.seconds, {}
  if m == "sisa":
    with parallel.data_parallel(env.sisa_mesh):
      reports = [sisa.unlearn_sisa(s, request) for s in env.sisa_states]
    env.sisa_work.append({"request": k, "affected_shards": float(np.mean(
        [len(r["affected_shards"]) for r in reports])), "fraction_of_full": float(
            np.mean([r["fraction_of_full"] for r in reports]))})
    return (lambda xx, i: jnp.asarray(parallel.to_host(jnp.mean(sisa.sisa_logits(
        model, env.sisa_states[i].variables, xx, cfg.eval_batch_size), axis=0)))), \
        float(np.mean([r["seconds"] for r in reports])), {}
  spec = methods_lib.get_method(m)
  data = methods_lib.select_data(spec, (env.x[request], env.y[request]), arrays["retain"],
                                 ctx=env.ctx)
  keys = jax.vmap(lambda kk: jax.random.fold_in(driver.method_key(kk, m), k))(env.seed_keys)
  ms = driver.apply_method(spec, env.ctx, env.hparams[m], env.state[m], data, keys,
                           seed_mode=st.mode)
  env.state[m] = ms.variables
  variables = model_variables(ms.variables)   # the model's own collections: one predict program
  return (lambda xx, i, v=variables: env.predict(one(v, i), xx)), ms.seconds, ms.aux


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


def job(cfg) -> str:
  R = cfg.requests
  names = [m.strip() for m in R.methods.split(",") if m.strip()]
  if not names:
    raise setup.UsageError("--methods (the field requests.methods) is empty")
  known = set(methods_lib.list_methods()) | {"sisa", "retrain"}
  bad = [m for m in names if m not in known]
  if bad:
    raise setup.UsageError(f"--methods: {bad[0]!r} is unknown; allowed: sisa, retrain, "
                           f"{', '.join(methods_lib.list_methods())}")
  if "retrain" not in names:
    names.append("retrain")
  if R.kind not in REQUEST_KINDS:
    raise setup.UsageError(f"--config.requests.kind={R.kind!r} is unknown; allowed: "
                           f"{', '.join(REQUEST_KINDS)}")
  hparams = cli.method_hparams(cfg)
  runs = [m for m in names if m not in ("sisa", "retrain")] or ["finetune"]
  cfg.methods = {m: hparams.get(m, dict(methods_lib.get_method(m).defaults)) for m in runs}
  cfg.scenario = "class" if R.kind == "class" else "random"
  if cfg.scenario == "random":
    cfg.forget_classes = ""
  for name in ("sisa_shards", "sisa_slices"):
    if R[name] < 1:
      raise setup.UsageError(f"--config.requests.{name}={R[name]} must be >= 1")
  if R.sisa_epochs_per_slice is not None and R.sisa_epochs_per_slice < 1:
    raise setup.UsageError(f"--config.requests.sisa_epochs_per_slice={R.sisa_epochs_per_slice}"
                           " must be >= 1 (or None: the recipe's epochs / slices)")
  sisa_config = sisa.SisaConfig(shards=R.sisa_shards, slices=R.sisa_slices,
                                epochs_per_slice=R.sisa_epochs_per_slice or 0)
  setup.validate(cfg)
  with setup.staged_workdir(cli.workdir(cfg, "requests_"), flags.FLAGS.overwrite) as (final,
                                                                                     staging):
    result = run(cfg, cli.method_hparams(cfg), names, num_requests=R.count,
                 request_size=R.size, kind=R.kind, sisa_config=sisa_config,
                 log=lambda s: print(s, flush=True))
    title = (f"Deletion requests: {cfg.dataset} · {result['info']['model']} · "
             f"{R.count} {R.kind} requests")
    md = "" if staging is None else write_requests(staging, result, cfg.to_dict(), title,
                                                     cfg.plots)
  return f"\n{md}\nrun directory: {final}"


if __name__ == "__main__":
  cli.run(job, fields=("requests.count", "requests.size", "requests.kind",
                       "requests.sisa_shards", "requests.sisa_slices"),
          methods_field="requests.methods")
