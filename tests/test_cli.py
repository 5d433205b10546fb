"""The CLI end to end: a real run, reproducibility, and every bad input."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]
CHECK_RUN = ROOT.parent / "shared" / "tools" / "check_run.py"
SMALL = ["--config=digits", "--seeds=2", "--config.train.epochs=6",
         "--methods=finetune,neggrad,random_label", "--config.methods.finetune.epochs=2",
         "--config.methods.random_label.epochs=2", "--config.methods.neggrad.epochs=2"]


def run_cli(*args, cwd=ROOT):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run([sys.executable, "-m", "experiments.unlearn", *args], cwd=cwd,
                        capture_output=True, text=True, env=env, timeout=600)


def read_rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  out = []
  for i in range(2):
    r = run_cli(*SMALL, f"--workdir={base / f'run{i}'}")
    assert r.returncode == 0, r.stderr[-3000:]
    out.append((base / f"run{i}", r))
  return out


@pytest.mark.integration
def test_run_writes_every_artifact(two_runs):
  run, proc = two_runs[0]
  for name in ("results.csv", "results.json", "summary.md", "splits.npz", "splits.json",
               "losses.npz",
               "plots/metrics.png", "plots/losses_original.png", "plots/losses_finetune.png",
               "checkpoints/original", "checkpoints/retrain", "checkpoints/random_label"):
    assert (run / name).exists(), name
  rows = read_rows(run / "results.csv")
  assert {r["method"] for r in rows} == {"original", "retrain", "finetune", "neggrad",
                                         "random_label"}
  assert len(rows) == 10
  assert "| method | RA | FA | TA |" in proc.stdout and "epoch 6/6" in proc.stdout
  assert "examples/s" in proc.stdout and "left" in proc.stdout
  # The training program the shipped table chooses is printed and recorded.
  from unlearn_jax import train_programs
  chosen = train_programs.choose("mlp", "cpu", 64, (8, 8, 1))
  info = json.loads((run / "results.json").read_text())["info"]
  assert info["train_program"] == json.loads(json.dumps(chosen.record())), info
  assert f"train program: {chosen.describe()}" in proc.stdout


@pytest.mark.integration
def test_run_is_stamped_with_what_made_it(two_runs):
  """provenance.json: the command, the commit of this checkout, the versions, the machine
  (the stamp under every documentation table built from a run)."""
  run, _ = two_runs[0]
  stamp = json.loads((run / "provenance.json").read_text())
  assert stamp["command"].startswith("python -m experiments.unlearn ")
  assert f"--workdir={run}" in stamp["command"]
  head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                        text=True)
  if head.returncode == 0:
    assert stamp["commit"] == head.stdout.strip()
  assert stamp["jax"] == jax.__version__ and stamp["hardware"]["cpu_count"] == os.cpu_count()
  assert stamp["date"][:4].isdigit() and stamp["hardware"]["backend"] == "cpu"


@pytest.mark.integration
@pytest.mark.skipif(not CHECK_RUN.exists(), reason=f"the results-contract checker is not at "
                    f"{CHECK_RUN} (it ships beside this repository in the team's layout)")
def test_run_directory_passes_the_results_contract_checker(two_runs):
  run, _ = two_runs[0]
  check = subprocess.run([sys.executable, str(CHECK_RUN), str(run), "foundation"],
                         capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
def test_same_flags_same_results(two_runs):
  (a, _), (b, _) = two_runs
  strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  assert strip(read_rows(a / "results.csv")) == strip(read_rows(b / "results.csv"))
  assert (a / "splits.json").read_text() == (b / "splits.json").read_text()


def _config(**overrides):
  """The CLI's config: the default config file (the digits one for `dataset="digits"`)
  with `overrides` (`methods`: a comma list of the methods to run)."""
  from experiments.configs import default, digits
  cfg = (digits if overrides.get("dataset") == "digits" else default).get_config()
  from ml_collections import ConfigDict
  from unlearn_jax import methods
  for k, v in overrides.items():      # a method's name the registry lacks gets no hparams
    cfg[k] = ConfigDict({m: dict(methods.get_method(m).defaults) if m in methods.list_methods()
                         else {} for m in v.split(",")}) if k == "methods" else v
  return cfg


def _hparams(**overrides):
  """The CLI's hyperparameters: every method's defaults, with `--method.name` overrides."""
  from unlearn_jax import methods
  out = {m: dict(methods.get_method(m).defaults) for m in methods.list_methods()}
  for m, values in overrides.items():
    out[m].update(values)
  return out


# The flag-error matrix, in-process: the CLI's validation (`runner.validate_run`, every
# check made before anything is written) and its error line (`usage.error_line`).
@pytest.mark.parametrize("flags_,hparams_,needle", [
    (dict(dataset="imagenet"), {}, "--config.dataset='imagenet' is unknown; allowed: digits"),
    (dict(model="swin"), {},
     "--config.model='swin' is unknown; allowed: mlp, cnn, resnet18, resnet9, airbench94, vit"),
    (dict(model="cnn:16-x"), {}, "--config.model='cnn:16-x': after ':' give positive layer widths"),
    (dict(methods="finetune,magic"), {}, "--methods: 'magic' is unknown; allowed: finetune"),
    (dict(scenario="sideways"), {},
     "--config.scenario='sideways' is unknown; allowed: random, class, subclass"),
    (dict(forget_fraction=1.5), {}, "--config.forget_fraction=1.5 must lie strictly between 0 and 1"),
    (dict(forget_fraction=0.0), {}, "--config.forget_fraction=0.0 must lie strictly between 0 and 1"),
    (dict(scenario="class", forget_classes="11"), {}, "[11] outside the dataset's classes 0..9"),
    (dict(scenario="class"), {}, "needs --config.forget_classes"),
    (dict(forget_fraction=0.0001), {}, "the forget set is empty"),
    (dict(methods="gkt"), {},
     "gkt is zero-shot and forgets whole classes: it needs --config.scenario=class"),
    (dict(scenario="class", forget_classes="3", methods="deepinversion"), {},
     "deepinversion needs a model with BatchNorm layers; the chosen model has none"),
    (dict(mesh_data=512), {},
     "--config.mesh_seeds=1 --config.mesh_data=512: a mesh of 1 seeds x 512 data needs"),
    (dict(mesh_seeds=0), {}, "--config.mesh_seeds=0 must be at least 1 (or None: automatic)"),
    (dict(train_program="unrolled:cudnn"), {}, "--config.train_program='unrolled:cudnn': "
     "conv='cudnn' is unknown; allowed: auto, xla, patches, canonical"),
    (dict(methods="finetune"), dict(finetune=dict(epochs=0)),
     "--config.methods.finetune.epochs=0 lies outside finetune's bounds for epochs: [1, inf)"),
    (dict(stream=True, references_dir="refs"), {}, "--config.stream trains the references "
     "batch by batch from host memory and caches nothing: leave --config.references_dir unset"),
    (dict(methods="oracle_matching"), {}, "--methods: oracle_matching match the outputs of "
     "models trained without the forget set, which this stage does not train; run it with "
     "python -m experiments.evaluate"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, flags_, hparams_, needle):
  from experiments.pipeline import run as runner
  from experiments.pipeline import usage
  workdir = tmp_path / "run"
  with pytest.raises(usage.UsageError) as err:
    runner.validate_run(_config(**flags_), _hparams(**hparams_), str(workdir), False)
  line = usage.error_line(err.value)
  assert line.startswith("error: ") and needle in line and "\n" not in line, line
  assert not workdir.exists() and not any(tmp_path.iterdir())


# End to end: the parse-time errors absl raises (a dotted method flag, a config file's own
# argument) and one validation error, each one line on stderr, exit 2, no traceback.
@pytest.mark.parametrize("args,needle", [
    (["--config.dataset=imagenet"], "error: --config.dataset='imagenet' is unknown; allowed: digits"),
    (["--config.methods.finetune.alpha=3"], "--config.methods.finetune.alpha is not a config "
     "field; did you mean --config.methods.finetune.lr"),
    (["--epochs=3"], "error: unknown flag --epochs; did you mean --config.train.epochs?"),
    (["--config=experiments/configs/cifar10_vit.py:tpu"],
     "cifar10_vit.py:tpu: unknown recipe; allowed: cpu, gpu"),
])
@pytest.mark.integration
def test_bad_flags_end_to_end_are_one_line_exit_2_and_write_nothing(tmp_path, args, needle):
  workdir = tmp_path / "run"
  r = run_cli(*args, f"--workdir={workdir}")
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert needle in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert not workdir.exists() and not any(tmp_path.iterdir())


def test_workdir_that_is_a_file(tmp_path):
  from experiments.pipeline import run as runner
  from experiments.pipeline import usage
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(usage.UsageError, match="is a file"):
    runner.validate_run(_config(), _hparams(), str(f), False)
  assert f.read_text() == "x"


def test_nonempty_workdir_needs_overwrite(tmp_path):
  from experiments.pipeline import run as runner
  from experiments.pipeline import usage
  (tmp_path / "keep.txt").write_text("x")
  with pytest.raises(usage.UsageError, match="--overwrite"):
    runner.validate_run(_config(), _hparams(), str(tmp_path), False)
  assert (tmp_path / "keep.txt").exists()


def test_default_methods_are_every_method_meant_for_the_scenario():
  from unlearn_jax import methods
  from experiments.pipeline import settings, usage
  zero_shot = ("zs_minmax_noise", "gkt", "deepinversion")
  every = list(methods.list_methods())
  assert settings.resolve_methods(every, "random") == tuple(
      m for m in methods.list_methods() if m not in zero_shot)
  assert settings.resolve_methods(every, "class", batch_norm=True) == methods.list_methods()
  assert settings.resolve_methods(every, "class", batch_norm=False) == tuple(
      m for m in methods.list_methods() if m != "deepinversion")
  # a chosen list runs in the registry's order (the results' order whatever the spelling)
  assert settings.resolve_methods(["ssd", "finetune"], "random") == ("finetune", "ssd")
  with pytest.raises(usage.UsageError, match="gkt is zero-shot"):
    settings.resolve_methods(["gkt", "finetune"], "random")
  # a stage without oracles (every one but experiments.evaluate) skips the matching methods,
  # saying so (from every method, or from a list such as a config's data methods), and
  # refuses them when nothing else is left
  notes = []
  assert settings.resolve_methods(every, "random", log=notes.append, targets=False) == tuple(
      m for m in methods.list_methods() if m not in zero_shot + ("oracle_matching", "dmm"))
  assert any("skipping oracle_matching, dmm" in n for n in notes), notes
  assert settings.resolve_methods(["dmm", "scrub", "oracle_matching"], "random",
                                  targets=False) == ("scrub",)
  with pytest.raises(usage.UsageError, match="dmm match the outputs of models trained"):
    settings.resolve_methods(["dmm"], "random", targets=False)


@pytest.mark.parametrize("name,arg", [("default", None), ("digits", None), ("cifar10_cnn", None),
                                      ("cifar10_population", None),
                                      ("cifar10_resnet18", None), ("cifar10_memorise", None),
                                      ("cifar10_vit", None), ("cifar10_vit", "gpu"),
                                      ("cifar10_resnet9", None), ("cifar10_airbench94", None)])
def test_every_config_file_sets_up(name, arg):
  """Each config under experiments/configs loads and passes setup (on digits, offline)."""
  import importlib.util
  from experiments.pipeline import experiment
  module = importlib.import_module(f"experiments.configs.{name}")
  cfg = module.get_config() if arg is None else module.get_config(arg)
  # The commands the config's docstring gives run this file with an existing entry point
  # (a renamed config or CLI leaves them stale).
  commands = re.findall(r"python -m (experiments\.\w+) --config=(\S+?)[\s:]", module.__doc__)
  assert commands, f"{name}: its docstring gives no command that runs it"
  for entry, path in commands:
    assert importlib.util.find_spec(entry) is not None, f"{name}: {entry} does not exist"
    file = ROOT / path if path.endswith(".py") else ROOT / "experiments/configs" / f"{path}.py"
    assert file.resolve() == Path(module.__file__).resolve(), (name, path)
  from experiments.configs import default
  cfg.dataset, cfg.methods = "digits", default.methods_config("finetune")
  st = experiment.setup(cfg, log=lambda s: None)
  if name == "cifar10_resnet18":
    assert st.model_name == "resnet18" and st.recipe.schedule == "cosine"
    assert st.recipe.augment and st.recipe.momentum == 0.9 and st.mode == "vmap"
  if name == "cifar10_resnet9":      # the Easy Data Unlearning Bench's recipe
    r = st.recipe
    assert st.model_name == "resnet9" and (r.schedule, r.nesterov, r.augment) == (
        "linear_onecycle", False, False)
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay) == (24, 256, 0.4, 5e-4)
    assert r.peak_fraction == pytest.approx(5 / 24)
  if name == "cifar10_airbench94":   # airbench's recipe (airbench94.py's hyp, in mean units)
    r = st.recipe
    assert st.model_name == "airbench94" and r.augment
    assert (r.epochs, r.batch_size, r.momentum, r.nesterov, r.label_smoothing) == (
        10, 1024, 0.85, True, 0.2)
    # lr 11.5 per 1,024 examples on a summed loss = 11.5 / (1 + 1/0.15) ... airbench's
    # `lr / kilostep_scale` with kilostep_scale 1024·(1 + 1/(1 − momentum)) on the sum,
    # times the batch 1,024 on the mean; decoupled decay 0.0153 → coupled ÷ that and lr.
    assert r.lr == pytest.approx(11.5 / (1 + 1 / (1 - 0.85)), rel=0.01)
    assert r.weight_decay == pytest.approx(0.0153 / (1 + 1 / 0.15) / r.lr, rel=0.01)
    assert (r.augmentation, r.bias_lr_scale, r.lookahead_every) == (
        "translate_alternating_flip", 64.0, 5)
  if name == "cifar10_vit":
    assert st.model_name.startswith("vit:") and st.recipe.optimizer == "adam"
    assert not any("BatchNorm" in k for k in str(st.model).split())
    assert st.recipe.epochs == (200 if arg == "gpu" else 30)
    assert st.mode == "vmap"     # no convolution: seeds vmapped even on a CPU


def test_vit_config_names_its_recipes():
  from experiments.configs import cifar10_vit
  with pytest.raises(ValueError, match="unknown recipe; allowed: cpu, gpu"):
    cifar10_vit.get_config("tpu")


@pytest.mark.integration
def test_benchmark_prints_its_tables(tmp_path):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  table = tmp_path / "programs.json"
  r = subprocess.run([sys.executable, "-m", "experiments.benchmarks.benchmark", "--models=mlp,cnn:8-16",
                      "--methods=finetune", "--steps=2", "--seeds=2", "--repeats=1", "--epochs=3",
                      "--search_budget=3", "--search_models=mlp", f"--program_table={table}"],
                     cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  # The train-program table it wrote: 3 programs per (model, convolution) cell, minus XLA's
  # skipped slow scan on the CPU; the driver's choice is one of its rows.
  from unlearn_jax import train_programs
  rows = train_programs.load_table(table)["rows"]
  cells = {(row["model"], row["conv"], row["loop"], row["steps_per_call"]) for row in rows}
  assert ("cnn:8-16", "auto", "scan", 2) in cells and ("mlp", "auto", "unrolled", 1) in cells
  assert len(rows) == 3 + 3 * 3 - (jax.default_backend() == "cpu"), cells
  chosen = train_programs.choose("cnn:8-16", jax.default_backend(), 128, (8, 8, 1),
                                 train_programs.load_table(table))
  assert (chosen.loop, chosen.conv) in {(c[2], c[1]) for c in cells if c[0] == "cnn:8-16"}
  for needle in ("## 1. Train step", "unrolled img/s | GFLOP/s (best) | × PyTorch (best)",
                 "| mlp | - | 128 |", "| cnn:8-16 | xla | 128 |", "| cnn:8-16 | auto | 128 |",
                 "| cnn:8-16 | patches | 128 |", "## 2. Methods", "| finetune |",
                 f"train-program rows to {table}",
                 "## 3. Seeds", "vmapped vs loop, same run:", "## 5. Search: 3 configurations",
                 "vmapped ÷ sequential", "peak resident memory"):
    assert needle in r.stdout, r.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.benchmarks.benchmark", "--models=swin"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert bad.returncode == 2 and "--models='swin'" in bad.stderr
  assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("command, shows", [
    (["-m", "experiments.unlearn", "--help"], ("train.epochs", "60", "--methods")),
    (["-m", "experiments.unlearn", "--config=digits", "-h"], ("train.epochs", "30", "'digits'")),
    (["-m", "experiments.evaluate", "--help"], ("evaluate.num_models", "16")),
    (["-m", "experiments.tune", "--help"], ("tune.budget", "16")),
    (["-m", "experiments.requests", "--help"], ("requests.count", "requests.methods")),
    (["-m", "experiments.klom_curve", "--help"], ("evaluate.sizes", "'8,16,32,64'")),
    (["-c", "from experiments import console; console.main(['unlearn-jax', 'run', '--help'])"],
     ("usage: unlearn-jax run", "train.epochs")),
])
def test_help_is_one_screen_that_exits_0(command, shows):
  """`--help` says what the command does, its flags and the fields people change most with
  the chosen config's values, in at most 60 lines, and exits 0."""
  r = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert 5 < len(lines) <= 60, f"{len(lines)} lines:\n{r.stdout}"
  for text in ("--config", "--workdir", "experiments/configs/default.py", *shows):
    assert text in r.stdout, f"--help does not show {text!r}:\n{r.stdout}"


@pytest.mark.parametrize("name, hint", [
    ("epochs", "--config.train.epochs"), ("dataset", "--config.dataset"),
    ("finetune.lr", "--config.methods.finetune.lr"), ("num_models", "--config.evaluate.num_models"),
    ("hparams", "--config.tuned_hparams"), ("train_seeds", "--seeds"),
    ("config.train.epoch", "--config.train.epochs"), ("sisa_shards", "--config.requests.sisa_shards"),
    ("overwrit", "--overwrite"), ("seeds_loop", "--config.seed_loop"),
    ("populations_dir", "--config.references_dir"),
    ("config.evaluate.populations_dir", "--config.references_dir"),
])
def test_an_unknown_flag_names_the_nearest_flag_or_field(name, hint):
  from experiments import cli
  assert cli.nearest(name, ["x"]) == hint


@pytest.mark.integration
def test_conv_profile_prints_every_path_per_layer():
  """`experiments.benchmarks.conv_profile` on a tiny CNN: a row per (layer, path) with its GFLOP/s and
  the per-path sums."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  r = subprocess.run([sys.executable, "-m", "experiments.benchmarks.conv_profile", "--widths=4,8",
                      "--batch=4", "--size=8", "--steps=2", "--repeats=1"],
                     cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [line for line in r.stdout.splitlines() if line.startswith("| conv")]
  paths = ("xla", "canonical", "patches", "im2col", "matmul")
  assert [row.split(" | ")[2] for row in rows] == list(paths) * 2, r.stdout
  assert "| canonical |" in r.stdout.split("all convs")[-1], r.stdout


def test_the_first_run_is_the_memorising_benchmarks_setup():
  """The default config (the README's first command) sets up exactly the memorising
  benchmark whose signal the behaviour tests check (tests/memorising.py: 1,000 MNIST-1D
  examples, a 64-64 MLP, its training recipe), so the first run can rank methods; digits
  keeps its own defaults; a bad --train_subset is one line."""
  from experiments.pipeline import experiment, usage
  sys.path.insert(0, str(ROOT / "tests"))
  import memorising
  cfg = _config(methods="finetune")
  st = experiment.setup(cfg, log=lambda s: None)
  assert (st.ds.name, len(st.ds.train_y)) == ("mnist1d", memorising.TRAIN_SIZE)
  assert st.model_name == "mlp:" + "-".join(map(str, memorising.HIDDEN))
  bench = memorising.RECIPE
  assert (st.recipe.epochs, st.recipe.batch_size, st.recipe.lr) == (
      bench.epochs, bench.batch_size, bench.lr)
  np.testing.assert_array_equal(st.ds.train_y, memorising.dataset().train_y)
  digits = experiment.setup(_config(dataset="digits", methods="finetune"), log=lambda s: None)
  from unlearn_jax import data as data_lib
  assert (digits.model_name, len(digits.ds.train_y), digits.recipe.epochs) == (
      "mlp", len(data_lib.load_dataset("digits").train_y), 30)
  with pytest.raises(usage.UsageError, match=r"--config.train_subset=-2 must be at least 1"):
    experiment.setup(_config(train_subset=-2), log=lambda s: None)


def test_a_shipped_config_is_found_by_name_and_runs_on_the_cifar_archive(tmp_path, monkeypatch):
  """`--config=cifar10_memorise` (the form that works from a wheel) is the shipped file;
  with `--config.dataset=cifar10:PATH` (a small archive of the official format) it sets up; an
  unknown name is one line listing the shipped ones."""
  from experiments import cli
  from experiments.pipeline import experiment
  import importlib
  sys.path.insert(0, str(ROOT / "tests"))
  from test_data import write_cifar_python
  configs = ROOT / "experiments" / "configs"
  assert cli.config_by_name(["x", "--config=cifar10_memorise", "--seeds=2"]) == [
      "x", f"--config={configs / 'cifar10_memorise.py'}", "--seeds=2"]
  assert cli.config_by_name(["x", "--config", "cifar10_vit:gpu"]) == [
      "x", "--config", f"{configs / 'cifar10_vit.py'}:gpu"]
  keep = ["x", "--config=experiments/configs/default.py"]
  assert cli.config_by_name(keep) == keep
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  write_cifar_python(tmp_path / "cifar-10-python.tar.gz", per_file=40)
  cfg = importlib.import_module("experiments.configs.cifar10_memorise").get_config()
  assert cfg.dataset == "cifar10"       # a dataset's name, never a path of this repository
  cfg.dataset = f"cifar10:{tmp_path / 'cifar-10-python.tar.gz'}"
  cfg.methods = importlib.import_module("experiments.configs.default").methods_config("finetune")
  cfg.train_subset, cfg.test_subset = 100, 20
  st = experiment.setup(cfg, log=lambda s: None)
  assert st.ds.input_shape == (32, 32, 3) and len(st.ds.train_y) == 100
  r = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['u', '--config=nope']; "
                      "import experiments.cli"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.strip().startswith(
      "error: --config=nope: no such shipped config; allowed: cifar10_airbench94, cifar10_cnn"), r.stderr


def test_an_unwritable_workdir_and_os_errors_are_one_line(tmp_path, monkeypatch):
  """A workdir whose parent cannot be written (read-only, no permission) is refused before
  anything is written; any other OS error is one line that names the path and what to do."""
  import errno
  from experiments.pipeline import rundir, usage
  target = tmp_path / "ro" / "run"
  target.parent.mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == target.parent
                      else real(p, mode))
  with pytest.raises(usage.UsageError) as e:
    rundir.prepare_workdir(str(target), False)
  assert str(e.value) == (f"--workdir={target}: cannot write in {target.parent} (read-only "
                          "or no permission); choose a writable directory")
  line = usage.os_error_line(OSError(errno.EROFS, "Read-only file system", "/x/.run.resume"))
  assert line.startswith("error: Read-only file system: /x/.run.resume; nothing was written")
  assert "\n" not in line


def test_the_workdir_lock_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
  from experiments.pipeline import rundir
  monkeypatch.setenv("UNLEARN_JAX_CACHE", str(tmp_path / "cache"))
  with pytest.raises(RuntimeError):
    with rundir.staged_workdir(str(tmp_path / "run"), False):
      raise RuntimeError("a job that fails half-way")
  assert not (tmp_path / "run").exists()
  assert not [p for p in tmp_path.rglob("*") if p.is_file()], list(tmp_path.rglob("*"))
  with rundir.staged_workdir(str(tmp_path / "run"), False) as (_, staging):
    staging.mkdir()
    (staging / "x.txt").write_text("done")
  assert (tmp_path / "run" / "x.txt").exists()
  assert not list((tmp_path / "cache").rglob("*.lock"))


@pytest.mark.integration
def test_ctrl_c_and_an_os_error_end_in_one_line(tmp_path):
  """SIGINT during training: one line saying the same command resumes, exit 130, no
  staging directory left. A cache path that is a file (an OS error on the cache): one
  line, exit 1."""
  import signal
  import time
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "UNLEARN_JAX_CACHE": str(tmp_path / "cache")}
  p = subprocess.Popen([sys.executable, "-m", "experiments.unlearn", "--config=digits",
                        "--methods=finetune", "--seeds=1", "--config.train.epochs=100000",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       # A terminal's Ctrl-C: a test runner started in the background of a
                       # non-interactive shell ignores SIGINT, and its children inherit that.
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.time() + 300
    for line in p.stdout:        # wait for a progress line of the training itself
      if "examples/s" in line or time.time() > deadline:
        break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
  finally:
    p.kill()
  assert p.returncode == 130, err[-2000:]
  assert err.strip().splitlines()[-1] == (
      "interrupted: the run directory was not written; rerun the same command to resume "
      "from the last checkpoint"), err[-2000:]
  assert "Traceback" not in err
  assert not list(tmp_path.glob(".run.partial-*")) and not (tmp_path / "run").exists()
  (tmp_path / "file").write_text("not a folder")
  r = subprocess.run([sys.executable, "-m", "experiments.unlearn", "--config=digits",
                      "--methods=finetune", f"--workdir={tmp_path / 'run2'}"], cwd=ROOT,
                     env={**env, "UNLEARN_JAX_CACHE": str(tmp_path / "file" / "cache")},
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
  assert r.stderr.startswith("error: Not a directory: ") and "UNLEARN_JAX_CACHE" in r.stderr


def _functions(path: Path):
  import ast
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def test_no_function_in_the_application_is_over_60_lines():
  """The application reads as named steps: no function in experiments/ is longer than 60
  lines (a long one is split into the steps it does)."""
  long = [f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
          for p in sorted((ROOT / "experiments").rglob("*.py")) for f in _functions(p)
          if f.end_lineno - f.lineno + 1 > 60]
  assert not long, "split these into named steps: " + "; ".join(long)


def test_every_stage_gets_its_references_from_one_function():
  """experiments.unlearn, evaluate, tune, requests and klom_curve (and the matching
  oracles) train or restore their original and retrained models through
  `pipeline.reference_models.references` (one fingerprint, one cache): no other module
  calls the trainer of a reference itself."""
  import ast
  callers = {}
  for p in sorted((ROOT / "experiments").rglob("*.py")):
    for node in ast.walk(ast.parse(p.read_text())):
      if isinstance(node, ast.Call):
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        callers.setdefault(name, set()).add(p.relative_to(ROOT).as_posix())
  assert callers.get("train_reference", set()) <= {"experiments/pipeline/reference_models.py"}, \
      f"a stage trains references by itself: {callers['train_reference']}"
  assert {"experiments/pipeline/run.py", "experiments/pipeline/population.py",
          "experiments/pipeline/tuning.py", "experiments/pipeline/requests.py",
          "experiments/pipeline/matching.py", "experiments/klom_curve.py"} <= \
      callers.get("references", set()), callers.get("references")


def test_a_ctrl_c_lost_in_a_garbage_collector_callback_is_delivered_again(tmp_path):
  """A KeyboardInterrupt raised inside a gc callback (where JAX's buffer-freeing callback
  runs) is dropped by Python ("Exception ignored"): the first fresh-venv run of the Ctrl-C
  test trained on past its SIGINT this way. With the CLI's hook the interrupt is raised
  again outside the callback; without it the script below finishes its loop."""
  script = tmp_path / "lost.py"
  script.write_text(
      "import gc, signal, sys, time\n"
      "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
      "if sys.argv[1] == 'hook':\n"
      "  from experiments.pipeline import usage\n"
      "  usage.redeliver_lost_interrupts()\n"
      "fired = []\n"
      "def callback(phase, info):\n"
      "  if not fired:\n"
      "    fired.append(1)\n"
      "    raise KeyboardInterrupt\n"
      "gc.callbacks.append(callback)\n"
      "try:\n"
      "  gc.collect()\n"
      "  deadline = time.time() + 5\n"
      "  while time.time() < deadline:\n"
      "    sum(range(1000))\n"
      "  print('lost')\n"
      "except KeyboardInterrupt:\n"
      "  print('delivered')\n")
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  run = lambda mode: subprocess.run([sys.executable, str(script), mode], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=60).stdout.strip()
  assert run("none") == "lost"          # Python's own behaviour: the case the hook is for
  assert run("hook") == "delivered"
