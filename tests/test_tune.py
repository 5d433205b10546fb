"""experiments.tune end to end: the files, reuse with --hparams, selection blind to test."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.pipeline import tuning as tuning_run
from experiments.configs import default, digits
from unlearn_jax import data as data_lib

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--seeds=2", "--config.train.epochs=3", "--methods=finetune,ssd", "--config.tune.budget=3",
         "--config.methods.finetune.epochs=1", "--config.plots=True"]


def run_module(module, *args):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tune") / "run"
  proc = run_module("experiments.tune", *SMALL, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.integration   # two CLI runs
def test_tune_writes_its_files_and_unlearn_reuses_the_choice(tuned_run, tmp_path):
  workdir, proc = tuned_run
  for name in ("tuning.csv", "tuned.json", "report.md", "tuning.json",
               "plots/tuning_finetune.png", "plots/tuning_ssd.png"):
    assert (workdir / name).exists(), name
  rows = (workdir / "tuning.csv").read_text().splitlines()
  assert len(rows) == 1 + 2 * 3 * 2        # methods × configurations × seeds
  assert "configurations/s" in proc.stdout and "| ssd |" in proc.stdout
  tuned = json.loads((workdir / "tuned.json").read_text())
  assert tuned["rule"] == "no_retrain" and set(tuned["methods"]) == {"finetune", "ssd"}
  assert set(tuned["methods"]["ssd"]["searched"]) == {"alpha", "lam"}
  # Reuse: the chosen values replace the defaults; an explicit flag still wins.
  run = tmp_path / "reuse"
  proc = run_module("experiments.unlearn", "--seeds=1", "--config.train.epochs=2",
                    "--methods=finetune,ssd", "--config.methods.finetune.epochs=1", "--config.plots=False",
                    "--config.methods.ssd.lam=0.5", f"--config.tuned_hparams={workdir / 'tuned.json'}",
                        f"--workdir={run}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  used = json.loads((run / "results.json").read_text())["hparams"]
  assert used["finetune"]["lr"] == pytest.approx(tuned["methods"]["finetune"]["hparams"]["lr"])
  assert used["ssd"]["alpha"] == pytest.approx(tuned["methods"]["ssd"]["hparams"]["alpha"])
  assert used["ssd"]["lam"] == 0.5


@pytest.mark.parametrize("args,needle", [
    (["--config.tune.budget=0"], "--config.tune.budget=0 must be >= 1"),
    (["--config.tune.select=oracle"],
     "--config.tune.select='oracle' is unknown; allowed: retrain_gap, no_retrain"),
    (["--config.tune.selection_fraction=1.5"],
     "--config.tune.selection_fraction=1.5 must lie strictly between 0 and 1"),
    (["--config.tune.search_loop=pmap"],
     "--config.tune.search_loop='pmap' is unknown; allowed: auto, vmap, sequential"),
    (["--config.tune.min_retain=1.5"], "--config.tune.min_retain=1.5 must lie in [0, 1]"),
])
@pytest.mark.integration
def test_bad_tune_flags_are_one_line_and_write_nothing(args, needle, tmp_path):
  proc = run_module("experiments.tune", *args, f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.integration
def test_bad_hparams_file_is_a_flag_error(tmp_path):
  bad = tmp_path / "tuned.json"
  bad.write_text('{"methods": {"magic": {"hparams": {}}}}')
  proc = run_module("experiments.unlearn", f"--config.tuned_hparams={bad}", f"--workdir={tmp_path / 'r'}")
  assert proc.returncode == 2 and "method 'magic' is unknown" in proc.stderr, proc.stderr


@pytest.mark.integration
def test_selection_never_reads_the_test_split(monkeypatch):
  """Poison every test-split example (noise images, shuffled labels): the choice is the
  same, and only the reported test accuracy moves."""
  cfg = digits.get_config()
  cfg.seeds, cfg.methods, cfg.train.epochs = 1, default.methods_config("neggrad_plus,ssd"), 4
  hp = {"neggrad_plus": {"epochs": 1}}
  clean = tuning_run.run(cfg, hp, budget=3, log=lambda s: None)

  real_load = data_lib.load_dataset

  def poisoned(*args, **kwargs):
    ds = real_load(*args, **kwargs)
    split = data_lib.make_split(data_lib.SplitSpec("random", 0.1, seed=0), ds.train_y,
                                ds.test_y, ds.num_classes)
    rng = np.random.default_rng(0)
    x, y = ds.test_x.copy(), ds.test_y.copy()
    x[split.test] = rng.normal(size=x[split.test].shape).astype(x.dtype) * 5
    y[split.test] = rng.permutation(y[split.test])
    return dataclasses.replace(ds, test_x=x, test_y=y)

  monkeypatch.setattr(data_lib, "load_dataset", poisoned)
  dirty = tuning_run.run(cfg, hp, budget=3, log=lambda s: None)
  for m in ("neggrad_plus", "ssd"):
    assert dirty.tuned["methods"][m]["config"] == clean.tuned["methods"][m]["config"], m
    assert dirty.tuned["methods"][m]["score"] == pytest.approx(clean.tuned["methods"][m]["score"])
  ta = lambda res: next(r for r in res.table if r["method"] == "ssd")["tuned"]["test_acc"]
  assert ta(dirty) < ta(clean) - 0.3
