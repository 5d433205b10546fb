"""The deletion-requests stage: K requests applied in order by each method, SISA and
retraining, every metric re-measured after every request (`experiments.requests` is its
command)."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import experiment, reference_models, settings
from .usage import UsageError
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
    raise UsageError(f"--config.requests.count={k} must be >= 1")
  if kind not in REQUEST_KINDS:
    raise UsageError(f"--config.requests.kind={kind!r} is unknown; allowed: "
                           f"{', '.join(REQUEST_KINDS)}")
  rng = np.random.default_rng(seed)
  if kind == "class":
    if not classes:
      raise UsageError("--config.requests.kind=class needs --config.forget_classes (e.g. 3)")
    pool = rng.permutation(np.flatnonzero(np.isin(train_y, classes)))
    if pool.size < k:
      raise UsageError(f"--config.forget_classes={','.join(map(str, classes))} has {pool.size} "
                             f"examples, fewer than --config.requests.count={k}")
    return [np.sort(p) for p in np.array_split(pool, k)]
  m = int(round(size * n)) if size < 1 else int(size)
  if m < 1 or k * m >= n:
    raise UsageError(f"--config.requests.size={size:g} × --config.requests.count={k} "
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
  sisa_mesh = (experiment.make_mesh(cfg, sisa_config.batch_size, st.mode,
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
  st = experiment.setup(cfg, log, population=0)    # SISA builds its own mesh below
  ds, model = st.ds, st.model
  methods_run = [m for m in names if m not in ("sisa", "retrain")]
  hparams = {**hparams, **settings.resolve_hparams(methods_run, hparams, kind, log, st.model_name)}
  if sisa_config.epochs_per_slice == 0:
    sisa_config = dataclasses.replace(
        sisa_config, epochs_per_slice=max(1, st.recipe.epochs // sisa_config.slices))
  requests = make_requests(ds.train_y, kind, num_requests, request_size,
                           settings.parse_classes(cfg.forget_classes), int(cfg.split_seed))
  log(f"dataset {ds.name}: {len(ds.train_y)} train; {num_requests} {kind} requests of "
      f"{', '.join(str(r.size) for r in requests[:3])}{'…' if num_requests > 3 else ''} "
      f"examples; model {st.model_name}; {cfg.seeds} seed(s); methods {', '.join(names)}")
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  seed_keys = reference_models.seed_keys(cfg.seed, int(cfg.seeds))
  init_vars = reference_models.initial_variables(st, seed_keys)
  t0 = time.perf_counter()
  original = reference_models.references(cfg, st, int(cfg.seeds), lambda s: None,
                                         names=("original",), data=((x, y), None),
                                         init_vars=init_vars).original
  log(f"original: {original.seconds:.1f} s per seed")
  sisa_states, sisa_mesh = _train_sisa(cfg, st, names, sisa_config, seed_keys, init_vars, log)
  ctx = experiment.method_context(st, settings.parse_classes(cfg.forget_classes) if kind == "class"
                             else ())
  env = Requests(cfg, st, hparams, ctx, x, y, seed_keys, init_vars,
                 jax.jit(lambda v, xx: train_lib.predict(model, v, xx, cfg.eval_batch_size)),
                 {m: original.variables for m in methods_run}, sisa_states, [], sisa_mesh)
  rows, spent, test = [], {m: 0.0 for m in names}, experiment.take_test(ds, st.split.test)
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
