"""The CLI end to end: a real run, reproducibility, and every bad input."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--seeds=2", "--config.train.epochs=6", "--methods=finetune,neggrad,random_label",
         "--finetune.epochs=2", "--random_label.epochs=2", "--neggrad.epochs=2"]


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
  check = subprocess.run([sys.executable, str(ROOT.parent / "shared/tools/check_run.py"),
                          str(run), "foundation"], capture_output=True, text=True)
  if (ROOT.parent / "shared/tools/check_run.py").exists():
    assert check.returncode == 0, check.stdout + check.stderr


def test_same_flags_same_results(two_runs):
  (a, _), (b, _) = two_runs
  strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  assert strip(read_rows(a / "results.csv")) == strip(read_rows(b / "results.csv"))
  assert (a / "splits.json").read_text() == (b / "splits.json").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--dataset=imagenet"], "--dataset='imagenet' is unknown; allowed: digits"),
    (["--model=swin"], "--model='swin' is unknown; allowed: mlp, cnn, resnet18, vit"),
    (["--model=cnn:16-x"], "--model='cnn:16-x': after ':' give positive layer widths"),
    (["--methods=finetune,magic"], "--methods: 'magic' is unknown; allowed: finetune"),
    (["--scenario=sideways"], "--scenario='sideways' is unknown; allowed: random, class, subclass"),
    (["--forget_fraction=1.5"], "--forget_fraction=1.5 must lie strictly between 0 and 1"),
    (["--forget_fraction=0"], "--forget_fraction=0.0 must lie strictly between 0 and 1"),
    (["--scenario=class", "--forget_classes=11"], "[11] outside the dataset's classes 0..9"),
    (["--scenario=class"], "needs --forget_classes"),
    (["--forget_fraction=0.0001"], "the forget set is empty"),
    (["--finetune.alpha=3"], "finetune"),
    (["--methods=gkt"], "gkt is zero-shot and forgets whole classes: it needs --scenario=class"),
    (["--scenario=class", "--forget_classes=3", "--methods=deepinversion"],
     "deepinversion needs a model with BatchNorm layers; the chosen model has none"),
    (["--mesh_data=512"], "--mesh_seeds=1 --mesh_data=512: a mesh of 1 seeds x 512 data needs"),
    (["--mesh_seeds=0"], "--mesh_seeds=0 must be >= 1"),
    (["--config=experiments/configs/cifar10_vit.py:tpu"],
     "cifar10_vit.py:tpu: unknown recipe; allowed: cpu, gpu"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, needle):
  workdir = tmp_path / "run"
  r = run_cli(*args, f"--workdir={workdir}")
  assert r.returncode != 0
  assert needle in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not workdir.exists() and not any(tmp_path.iterdir())


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  r = run_cli(f"--workdir={f}")
  assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "x"


def test_nonempty_workdir_needs_overwrite(tmp_path):
  (tmp_path / "keep.txt").write_text("x")
  r = run_cli(f"--workdir={tmp_path}")
  assert r.returncode == 2 and "--overwrite" in r.stderr
  assert (tmp_path / "keep.txt").exists()


def test_default_methods_are_every_method_meant_for_the_scenario():
  from unlearn_jax import methods
  from experiments import runner, setup
  zero_shot = ("zs_minmax_noise", "gkt", "deepinversion")
  assert setup.resolve_methods("", "random") == tuple(
      m for m in methods.list_methods() if m not in zero_shot)
  assert setup.resolve_methods("", "class", batch_norm=True) == methods.list_methods()
  assert setup.resolve_methods("", "class", batch_norm=False) == tuple(
      m for m in methods.list_methods() if m != "deepinversion")
  assert setup.resolve_methods("ssd,finetune,ssd", "random") == ("ssd", "finetune")


@pytest.mark.parametrize("name,arg", [("default", None), ("cifar10_cnn", None),
                                      ("cifar10_resnet18", None), ("cifar10_memorise", None),
                                      ("cifar10_vit", None), ("cifar10_vit", "gpu")])
def test_every_config_file_sets_up(name, arg):
  """Each config under experiments/configs loads and passes setup (on digits, offline)."""
  import importlib
  from experiments import runner, setup
  module = importlib.import_module(f"experiments.configs.{name}")
  cfg = module.get_config() if arg is None else module.get_config(arg)
  assert "python -m experiments.unlearn" in module.__doc__
  cfg.dataset, cfg.methods = "digits", "finetune"
  st = setup.setup(cfg, log=lambda s: None)
  if name == "cifar10_resnet18":
    assert st.model_name == "resnet18" and st.recipe.schedule == "cosine"
    assert st.recipe.augment and st.recipe.momentum == 0.9 and st.mode == "vmap"
  if name == "cifar10_vit":
    assert st.model_name.startswith("vit:") and st.recipe.optimizer == "adam"
    assert not any("BatchNorm" in k for k in str(st.model).split())
    assert st.recipe.epochs == (200 if arg == "gpu" else 30)
    assert st.mode == "vmap"     # no convolution: seeds vmapped even on a CPU


def test_vit_config_names_its_recipes():
  from experiments.configs import cifar10_vit
  with pytest.raises(ValueError, match="unknown recipe; allowed: cpu, gpu"):
    cifar10_vit.get_config("tpu")


def test_benchmark_prints_its_tables():
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  r = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--models=mlp,cnn:8-16",
                      "--methods=finetune", "--steps=2", "--seeds=2", "--repeats=1", "--epochs=3",
                      "--search_budget=3", "--search_models=mlp"],
                     cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  for needle in ("## 1. Train step", "| mlp | - | 128 |", "| cnn:8-16 | xla | 128 |",
                 "| cnn:8-16 | patches | 128 |", "## 2. Methods", "| finetune |",
                 "## 3. Seeds", "vmapped vs loop, same run:", "## 5. Search: 3 configurations",
                 "vmapped ÷ sequential", "peak resident memory"):
    assert needle in r.stdout, r.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--models=swin"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert bad.returncode == 2 and "--models='swin'" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_help_prints_the_module_docstring_as_written():
  """absl formats the docstring with %: '10% r' once printed as a path (fixed by '%%')."""
  r = subprocess.run([sys.executable, "-m", "experiments.unlearn", "--help"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert "# digits, 10% random, all methods" in r.stdout, r.stdout[:500]


def test_bad_method_hyperparameter_value_is_a_flag_error(tmp_path):
  r = run_cli("--methods=finetune", "--finetune.epochs=0", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and "--finetune.epochs=0 must be >= 1" in r.stderr
  assert not (tmp_path / "w").exists()
