r"""How fast is it here? One run, four tables, every figure measured in this process.

    python -m experiments.benchmarks.benchmark                              # digits, CPU-sized
    python -m experiments.benchmarks.benchmark --dataset=cifar10:cifar-10-python.tar.gz \
        --train_subset=2000 --models=cnn,resnet18 --methods=finetune,ssd,scrub
    python -m experiments.benchmarks.benchmark --models=resnet18 --batch_size=256 --steps=50   # a GPU
    python -m experiments.benchmarks.benchmark --dataset=cifar10:cifar-10-python.tar.gz \
        --train_subset=1000 --models=cnn,cnn:32-64-128 --methods= --seeds=2    # conv paths

How to read it:
1. *Train step*: one SGD step of each model on a batch of --batch_size, compiled once
   (`compile s`, printed apart) and then timed over --steps steps, --repeats times; the
   median gives images/s, for a Python loop over the compiled step ("host loop") and for
   the steps inside one `lax.scan`, and the same steps fully unrolled (no while loop around
   the convolution), for each convolution of `models.conv_impl`: `auto` (the default: on
   the CPU XLA's with its gradient as canonical convolutions, patches under 4×4), `xla`
   (XLA's, autodiff's gradient; its scan on the CPU is skipped unless --time_slow_scan:
   minutes) and `patches` (patches + matmul); PyTorch's same network
   (`experiments.torch_population`) beside them when torch is installed.
   --program_table=machine writes the rates as this machine's table, from which
   `unlearn_jax.train_programs` chooses the driver's training program (`=PATH`: to that
   file; nothing measured ships with the library). GFLOP/s:
   XLA's flop count of the step (`cost_analysis`) over the best path's time; × PyTorch:
   the best path's images/s over PyTorch's, in the same run.
   `cnn:32-64-128` names the CNN at the PyTorch reference's widths.
   `--accuracy_target=0.82` replaces the tables by the time to that test accuracy, each
   model trained once on all of --dataset with its recipe:
       python -m experiments.benchmarks.benchmark --dataset=cifar10:cifar-10-python.tar.gz \\
           --models=cnn:32-64-128,cnn --accuracy_target=0.82
   The batch is split over all visible devices (`devices`), as in the experiments.
   `step MiB` is XLA's own account of the compiled step (arguments + temporaries): what one
   more seed would add when seeds are vmapped.
2. *Methods*: the main experiment (`runner.run`, --seeds seeds) on the first model: the
   wall time per seed of training, retraining and each method, its compile time, and the
   ratio to retrain (< 1: cheaper than retraining from scratch, the point of unlearning).
3. *Seeds*: --seeds models trained as one vmapped program vs a Python loop over the
   same jitted single-model training, each timed after compilation (median of --repeats).
   A speed-up < 1 means vmapping does not pay on this backend (small CPUs: it does not).
4. *Memory*: the process's peak resident memory and, on GPUs/TPUs, the devices' peak bytes.
5. *Search*: --search_budget configurations of --search_method as one vmapped program vs
   one compiled program called per configuration (`unlearn_jax.tuning.run_search`),
   compile excluded, median of --repeats; the ratio says whether vmapping configurations
   pays on this backend for each of --search_models.
"""

import dataclasses
import json
import resource
import statistics
import sys
import time

from absl import app, flags, logging

import jax
import jax.numpy as jnp

from ..configs import default as default_config, recipes
from ..pipeline import run as runner
from ..pipeline import usage
from .timing import median_seconds
from unlearn_jax import data, driver, metrics, models, parallel, train, train_programs

flags.DEFINE_string("dataset", "digits", "digits | image_folder:PATH | cifar10 | ...")
flags.DEFINE_integer("train_subset", 0, "stratified subset of train for sections 2 and 3")
flags.DEFINE_string("models", "mlp,cnn,resnet18", "models for the train-step table")
flags.DEFINE_integer("batch_size", 0, "train-step batch (0: 128, 32 for resnet18 on CPU)")
flags.DEFINE_integer("steps", 0, "timed steps per repeat (0: 20, 2 for resnet18 on CPU)")
flags.DEFINE_integer("repeats", 3, "timed repetitions (the median is printed)")
flags.DEFINE_string("methods", "finetune,neggrad,random_label,l1_sparse,ssd,salun,scrub",
                    "methods for the methods table ('' = skip the table)")
flags.DEFINE_integer("seeds", 4, "seeds for the methods and vmap-vs-loop tables")
flags.DEFINE_integer("epochs", 0, "epochs per model in sections 2-3 (0 = the recipe's)")
flags.DEFINE_string("search_method", "finetune", "method for the search table ('' = skip)")
flags.DEFINE_integer("search_budget", 16, "configurations in the search table")
flags.DEFINE_string("search_models", "", "models for the search table ('' = --models)")
flags.DEFINE_bool("time_slow_scan", False, "also time XLA's convolution inside lax.scan on "
                  "the CPU backend (minutes per model: its slow path, jax-ml/jax#12868); "
                  "otherwise that cell is skipped")
flags.DEFINE_string("program_table", "", "also write the train-step table's rates as a "
                    "train-program table (JSON, `unlearn_jax.train_programs`): 'machine' = "
                    "this machine's table, which --train_program=auto then reads, or a path; "
                    "rows already there for other (backend, model, input, batch) are kept")
flags.DEFINE_string("train_programs", "auto", "--accuracy_target only: comma list of train "
                    "programs to time (auto = the one unlearn_jax.train_programs chooses; "
                    "LOOP[:CONV[:STEPS]], e.g. scan:patches,unrolled:xla:8)")
flags.DEFINE_float("accuracy_target", 0.0, "instead of the tables: train each of --models on "
                   "all of --dataset with its recipe, test accuracy after every epoch, and "
                   "print the wall time to reach this test accuracy (e.g. 0.82)")


def _model(name, num_classes, conv=None):
  """`cnn:32-64-128` is the CNN with those widths (the PyTorch reference's shape)."""
  kwargs = {"conv": conv or "auto"} if name.partition(":")[0] in models.CONV_MODELS else {}
  return models.get_model(name, num_classes, **kwargs)


def _torch_images_per_s(name, ds, batch, steps, repeats):
  """The same network in PyTorch (`experiments.torch_population`, one member); None when
  torch is not installed or the model has no PyTorch counterpart there."""
  try:
    import torch

    from . import torch_population
  except ImportError:
    return None
  base, kwargs = models.parse_model_spec(name)
  if base not in torch_population.MODELS:
    return None
  torch.manual_seed(0)
  net = torch_population.build(base, kwargs, 1, ds.input_shape, ds.num_classes)
  opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
  x = torch.randn(batch, ds.input_shape[-1], *ds.input_shape[:2])
  y = torch.randint(0, ds.num_classes, (batch,))
  net.train()

  def run():
    for _ in range(steps):
      opt.zero_grad()
      torch.nn.functional.cross_entropy(net(x)[:, 0], y).backward()
      opt.step()
  run()
  return batch * steps / median_seconds(run, repeats)


def _time_step(model, step, state, x, y, steps: int, mesh, F, skip_scan: bool) -> tuple:
  """(host loop s, lax.scan s, unrolled s, XLA's FLOPs per step, compile s, step MiB) of
  `steps` train steps on one batch, each the median of F.repeats."""
  with parallel.data_parallel(mesh):
    state, xr, yr = parallel.replicate((state, x, y), mesh)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = jax.jit(lambda s, k: step(s, parallel.shard_batch((xr, yr)), k)).lower(
        state, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", float("nan")))   # XLA's count, one step
    mem = compiled.memory_analysis()
    mib = ((mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2**20) if mem else float("nan")
    jax.block_until_ready(compiled(state, key))     # warm-up

    def host_loop():
      s = state
      for i in range(steps):
        s, _ = compiled(s, jax.random.fold_in(key, i))
      return s.variables
    host = median_seconds(host_loop, F.repeats)
    if skip_scan:
      scan = float("inf")   # skipped (--time_slow_scan): minutes of the slow path
    else:
      scanned = jax.jit(lambda s, k: jax.lax.scan(
          lambda c, kk: step(c, parallel.shard_batch((xr, yr)), kk), s,
          jax.random.split(k, steps))[0].variables).lower(state, key).compile()
      jax.block_until_ready(scanned(state, key))
      scan = median_seconds(lambda: scanned(state, key), F.repeats)
    # The same steps fully unrolled (`unroll=steps`): one straight-line program, no
    # while loop around the convolution (XLA:CPU emits a slower one inside loops).
    unrolled_fn = jax.jit(lambda s, k: jax.lax.scan(
        lambda c, kk: step(c, parallel.shard_batch((xr, yr)), kk), s,
        jax.random.split(k, steps), unroll=steps)[0].variables).lower(state, key).compile()
    jax.block_until_ready(unrolled_fn(state, key))
    unrolled = median_seconds(lambda: unrolled_fn(state, key), F.repeats)
  return host, scan, unrolled, flops, compile_s, mib


def step_table(ds, names, F, mesh) -> list:
  """Train-step images/s per model and convolution path: a Python loop over one compiled
  step ("host loop"), `steps` steps inside one `lax.scan` and the same steps unrolled, for
  each convolution (`auto`, `xla`, `patches`); PyTorch's same network when torch is
  installed. Returns the rates as train-program rows (`unlearn_jax.train_programs`): the
  host loop is the `unrolled` program with 1 step per call."""
  rows = []
  print(f"\n## 1. Train step ({jax.default_backend()}, {parallel.describe(mesh)})\n")
  print("| model | conv | batch | host loop img/s | lax.scan img/s | unrolled img/s | "
        "GFLOP/s (best) | × PyTorch (best) | compile s | step MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  on_cpu = jax.default_backend() == "cpu"
  for name in names:
    slow = on_cpu and name.startswith("resnet18")
    n_data = parallel.data_size(mesh)
    batch = F.batch_size or (32 if slow else 128)
    batch = max(n_data, batch - batch % n_data)   # a multiple of the data axis
    steps = F.steps or (2 if slow else 20)
    convs = (("auto", "xla", "patches") if name.partition(":")[0] in models.CONV_MODELS
             else ("-",))
    torch_rate = _torch_images_per_s(name, ds, batch, steps, F.repeats) if on_cpu else None
    x = jnp.asarray(ds.train_x[:batch])
    y = jnp.asarray(ds.train_y[:batch])
    if x.shape[0] < batch:   # a tiny dataset: repeat it to a full batch
      reps = -(-batch // x.shape[0])
      x, y = jnp.tile(x, (reps,) + (1,) * (x.ndim - 1))[:batch], jnp.tile(y, reps)[:batch]
    for conv in convs:
      model = _model(name, ds.num_classes, None if conv == "-" else conv)
      cfg = train.TrainConfig(epochs=1, batch_size=batch, augment=ds.input_shape[-1] == 3)
      tx = train.make_optimizer(cfg, steps)
      step = train.make_supervised_step(model, tx, cfg.augment)
      with parallel.data_parallel(mesh):
        state = train.init_train_state(
            models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape), tx)
      host, scan, unrolled, flops, compile_s, mib = _time_step(
          model, step, state, x, y, steps, mesh, F,
          skip_scan=on_cpu and conv == "xla" and not F.time_slow_scan)
      for loop, k, secs in (("unrolled", 1, host), ("scan", steps, scan),
                            ("unrolled", steps, unrolled)):
        if secs == float("inf"):
          continue
        rows.append({"backend": jax.default_backend(), "model": name,
                     "input": train_programs.input_name(ds.input_shape), "batch": batch,
                     "loop": loop, "conv": "auto" if conv == "-" else conv,
                     "steps_per_call": k, "images_per_s": round(batch * steps / secs, 1),
                     "gflops_per_s": round(flops * steps / secs / 1e9, 2)})
      best = min(host, scan, unrolled)
      ratio = f"{batch * steps / best / torch_rate:.2f}" if torch_rate else "—"
      print(f"| {name} | {conv} | {batch} | {batch * steps / host:,.0f} | "
            f"{'skipped' if scan == float('inf') else f'{batch * steps / scan:,.0f}'} | "
            f"{batch * steps / unrolled:,.0f} | "
            f"{flops * steps / best / 1e9:,.1f} | {ratio} | {compile_s:.1f} | {mib:.0f} |",
            flush=True)
    if torch_rate is not None:
      print(f"| {name} | PyTorch | {batch} | {torch_rate:,.0f} | — | — | — | 1.00 | — | — |",
            flush=True)
  return rows


def write_program_table(path: str, rows: list, F) -> None:
  """The train-step rates as the table `unlearn_jax.train_programs.choose` reads; rows of
  other (backend, model, input, batch) already in `path` are kept."""
  import pathlib
  import platform
  import subprocess
  out = train_programs.machine_table_path() if path == "machine" else pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  old = train_programs.load_table(out) if out.exists() else {"rows": []}
  key = lambda r: (r["backend"], r["model"], r["input"], r["batch"])
  mine = {key(r) for r in rows}
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  measured = {"command": "python -m experiments.benchmarks.benchmark " + " ".join(sys.argv[1:]),
              "commit": commit, "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{len(jax.devices())} {jax.default_backend()} device(s), "
                         f"{__import__('os').cpu_count()} cores",
              "repeats": F.repeats, "steps": F.steps}
  kept = [r for r in old.get("rows", []) if key(r) not in mine]
  runs = [run for i, run in enumerate(old.get("runs", [])) if any(r["run"] == i for r in kept)]
  renumber = {old["runs"].index(run): j for j, run in enumerate(runs)}
  kept = [{**r, "run": renumber[r["run"]]} for r in kept]
  table = {"runs": runs + [measured],
           "rows": kept + [{**r, "run": len(runs)} for r in rows]}
  out.write_text(json.dumps(table, indent=1) + "\n")
  print(f"\nwrote {len(rows)} train-program rows to {out} ({len(table['rows'])} in all)")


def method_table(F, model_name, ds):
  cfg = default_config.get_config()
  cfg.dataset, cfg.train_subset = F.dataset, F.train_subset or None
  cfg.methods = default_config.methods_config(F.methods)
  cfg.model, cfg.seeds, cfg.plots, cfg.save_checkpoints = model_name, F.seeds, False, False
  cfg.train = recipes.for_model(model_name, ds.image_size, ds.input_shape[-1])
  if F.epochs:
    cfg.train.epochs = F.epochs
  t0 = time.perf_counter()
  result = runner.run(cfg, {}, log=lambda s: None)
  wall = time.perf_counter() - t0
  info = result.info
  print(f"\n## 2. Methods ({F.dataset}, {model_name}, {F.seeds} seeds, seeds "
        f"{'vmapped' if info['seeds_vmapped'] else 'in sequence'}; whole run {wall:.0f} s)\n")
  print("| model set | s per seed | compile s | × retrain |")
  print("|---|---|---|---|")
  retrain = result.model_sets["retrain"].seconds
  for name, ms in result.model_sets.items():
    print(f"| {name} | {ms.seconds:.2f} | {ms.compile_seconds:.1f} | "
          f"{ms.seconds / max(retrain, 1e-9):.2f} |", flush=True)


def _shapes(model, ds):
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                      ds.input_shape))


def seeds_table(ds, F, model_name):
  """--seeds models: one vmapped program vs a loop over one compiled single-model program."""
  model = _model(model_name, ds.num_classes)
  cfg = recipes.train_config_for(model_name, ds)
  if F.epochs:
    cfg = dataclasses.replace(cfg, epochs=F.epochs)
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  fit = lambda k: train.fit(model, cfg, models.init_variables(model, k, ds.input_shape), x, y,
                            jax.random.fold_in(k, 1))[0]
  keys = jax.random.split(jax.random.PRNGKey(0), F.seeds)
  t0 = time.perf_counter()
  one = jax.jit(fit).lower(keys[0]).compile()
  one_compile = time.perf_counter() - t0
  loop_s = median_seconds(lambda: [one(k) for k in keys], F.repeats)
  t0 = time.perf_counter()
  many = jax.jit(jax.vmap(fit)).lower(keys).compile()
  vmap_compile = time.perf_counter() - t0
  vmap_s = median_seconds(lambda: many(keys), F.repeats)
  print(f"\n## 3. Seeds: {F.seeds} x {model_name} ({cfg.epochs} epochs x {len(y)} examples)\n")
  print("| how | s | models/s | compile s |")
  print("|---|---|---|---|")
  print(f"| loop over jit(fit) | {loop_s:.2f} | {F.seeds / loop_s:.2f} | {one_compile:.1f} |")
  print(f"| jit(vmap(fit)) | {vmap_s:.2f} | {F.seeds / vmap_s:.2f} | {vmap_compile:.1f} |")
  print(f"\nvmapped vs loop, same run: {loop_s / vmap_s:.2f}x "
        f"(driver default here: {driver.default_seed_mode(_shapes(model, ds))})")


def _epochs_to_target(name, ds, cfg, model, program, call, state, spe, chunk, t0,
                      F) -> tuple:
  """(seconds of training until F.accuracy_target or None, total seconds, final test
  accuracy) of cfg.epochs epochs of `call`, the test set scored after each, printed."""
  test_x, test_y = jnp.asarray(ds.test_x), jnp.asarray(ds.test_y)
  eval_model = _model(name, ds.num_classes)   # scoring: the model's own convolution
  score = jax.jit(lambda v: metrics.accuracy(train.predict(eval_model, v, test_x, 500),
                                           test_y))
  compile_s = time.perf_counter() - t0
  params = sum(a.size for a in jax.tree_util.tree_leaves(state.variables["params"]))
  print(f"### {name}, train program {program.describe()} ({params:,} parameters; "
        f"recipe {cfg}; compile {compile_s:.1f} s)\n")
  print("| epoch | train loss | test acc | wall s (training) |")
  print("|---|---|---|---|")
  wall, reached = 0.0, None
  for e in range(cfg.epochs):
    t0 = time.perf_counter()
    losses = []
    for _ in range(spe // chunk):
      state, hist = call(state)
      losses.append(hist["loss"])
    jax.block_until_ready(state)
    wall += time.perf_counter() - t0
    acc = float(score(state.variables))
    loss = float(jnp.mean(jnp.concatenate([jnp.ravel(v) for v in losses])))
    print(f"| {e + 1} | {loss:.3f} | {100 * acc:.1f} | {wall:.0f} |", flush=True)
    if reached is None and acc >= F.accuracy_target:
      reached = wall
  return reached, wall, acc


def time_to_accuracy(ds, names, F):
  """Each model trained once per train program of --train_programs with its recipe
  (--epochs overrides), same seed, the test set scored after every epoch: wall time
  (compilation excluded, reported apart) until --accuracy_target."""
  print(f"\n## Time to {100 * F.accuracy_target:.0f}% test accuracy ({ds.name}, "
        f"{len(ds.train_y)} train, {jax.default_backend()})\n")
  summary = []
  for name in names:
    cfg = recipes.train_config_for(name, ds)
    if F.epochs:
      cfg = dataclasses.replace(cfg, epochs=F.epochs)
    for spec in [p for p in F.train_programs.split(",") if p]:
      program = (train_programs.choose(name, jax.default_backend(), cfg.batch_size,
                                       ds.input_shape) if spec == "auto"
                 else train_programs.parse(spec))
      model = _model(name, ds.num_classes, None if program.conv == "auto" else program.conv)
      x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
      spe = train.steps_per_epoch(len(y), cfg.batch_size)
      tx = train.make_optimizer(cfg, spe)
      state = train.init_train_state(
          models.init_variables(model, jax.random.PRNGKey(0), ds.input_shape), tx)
      key = jax.random.PRNGKey(1)
      chunk = driver.chunk_steps(spe, program.steps_per_call) if program.loop == "unrolled" \
          else spe
      t0 = time.perf_counter()
      if program.loop == "scan":
        call = jax.jit(lambda st: train.train_epochs(model, cfg, st, x, y, key, 1),
                       donate_argnums=0).lower(state).compile()
      else:
        call = jax.jit(lambda st: train.train_steps(model, cfg, st, x, y, key, chunk),
                       donate_argnums=0).lower(state).compile()
      reached, wall, acc = _epochs_to_target(name, ds, cfg, model, program, call, state,
                                             spe, chunk, t0, F)
      rate = len(y) * cfg.epochs / wall
      summary.append((name, program, reached, rate, acc))
      print(f"\n{name} ({program.loop}, conv {program.conv}): "
            f"{'reached' if reached is not None else 'did not reach'} "
            f"{100 * F.accuracy_target:.0f}% test accuracy"
            + (f" after {reached:.0f} s of training" if reached is not None else "")
            + f"; {rate:,.0f} images/s over the whole run\n", flush=True)
  print(f"| model | train program | s to {100 * F.accuracy_target:.0f}% | images/s | "
        "final test acc |")
  print("|---|---|---|---|---|")
  for name, program, reached, rate, acc in summary:
    print(f"| {name} | {program.loop}:{program.conv} | "
          f"{'—' if reached is None else f'{reached:.0f}'} | {rate:,.0f} | {100 * acc:.1f} |")


def search_table(ds, F, names):
  """K configurations of one method (1 seed, 1 epoch where it has epochs): one vmapped
  program vs one compiled program called K times (`tuning.run_search`), compile excluded."""
  from unlearn_jax import methods as methods_lib, tuning
  method = methods_lib.get_method(F.search_method)
  split = data.make_split(data.SplitSpec("random", 0.1, seed=0), ds.train_y, ds.test_y,
                          ds.num_classes)
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  forget, retain = (x[split.forget], y[split.forget]), (x[split.retain], y[split.retain])
  configs = tuning.sample_configs(method, F.search_budget, jax.random.PRNGKey(0))
  fixed = {k: 1 for k, v in method.defaults.items() if "epochs" in k and isinstance(v, int)}
  print(f"\n## 5. Search: {F.search_budget} configurations of {method.name} "
        f"({', '.join(configs)}; {fixed or 'its defaults'}), 1 seed, {len(split.retain)} "
        f"retain / {len(split.forget)} forget\n")
  print("| model | vmapped s | sequential s | configurations/s vmapped | sequential | "
        "vmapped ÷ sequential speed | picked here |")
  print("|---|---|---|---|---|---|---|")
  for name in names:
    model = _model(name, ds.num_classes)
    variables = jax.tree_util.tree_map(lambda a: a[None], models.init_variables(
        model, jax.random.PRNGKey(0), ds.input_shape))
    ctx = methods_lib.MethodContext(model, ds.num_classes, ds.input_shape, (), name)
    data_ = methods_lib.select_data(method, forget, retain, ctx=ctx)
    keys = jax.random.split(jax.random.PRNGKey(1), 1)
    timed = {loop: statistics.median(
        tuning.run_search(method, ctx, configs, fixed, variables, data_, keys, loop)[1]
        for _ in range(F.repeats)) for loop in parallel.LOOPS}
    k = F.search_budget
    print(f"| {name} | {timed['vmap']:.2f} | {timed['sequential']:.2f} | "
          f"{k / timed['vmap']:.1f} | {k / timed['sequential']:.1f} | "
          f"{timed['sequential'] / timed['vmap']:.2f}x | "
          f"{driver.default_seed_mode(_shapes(model, ds))} |", flush=True)
  print(f"\n`experiments.tune --search_loop=auto` uses the seeds' mode: sequential for conv "
        f"models on CPU, vmap elsewhere (backend here: {jax.default_backend()}).")


def memory_table():
  print("\n## 4. Memory\n")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
  print(f"peak resident memory of this process: {rss_mib:,.0f} MiB")
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      print(f"{d}: peak {stats['peak_bytes_in_use'] / 2**20:,.0f} MiB of "
            f"{stats.get('bytes_limit', 0) / 2**20:,.0f} MiB")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  names = [m for m in F.models.split(",") if m]
  bad = [m for m in names if m.partition(":")[0] not in models.list_models()]
  if bad or not names:
    print(f"error: --models={F.models!r}: unknown {bad}; allowed: "
          f"{', '.join(models.list_models())}", file=sys.stderr)
    sys.exit(2)
  if F.seeds < 1 or F.repeats < 1:
    print("error: --seeds and --repeats must be at least 1", file=sys.stderr)
    sys.exit(2)
  try:
    ds = data.load_dataset(F.dataset, None, F.train_subset)
  except data.DatasetError as e:
    print(f"error: --dataset: {e}", file=sys.stderr)
    sys.exit(2)
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  print(f"# unlearn_jax benchmark: jax {jax.__version__}, {jax.default_backend()}, "
        f"{jax.device_count()} device(s); dataset {ds.name} ({len(ds.train_y)} train), "
        f"median of {F.repeats}")
  if F.accuracy_target:
    time_to_accuracy(ds, names, F)
    return
  rows = step_table(ds, names, F, mesh)
  if F.program_table:
    write_program_table(F.program_table, rows, F)
  if F.methods:
    try:
      method_table(F, names[0], ds)
    except (usage.UsageError, ValueError) as e:    # a method's unknown name: ValueError
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  seeds_table(ds, F, names[0])
  if F.search_method:
    search_table(ds, F, [m for m in (F.search_models or F.models).split(",") if m])
  memory_table()


if __name__ == "__main__":
  app.run(main)
