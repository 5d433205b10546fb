"""Resumable runs: a run killed mid-training and restarted with the same flags ends with
the weights of an uninterrupted run; a corrupt or foreign checkpoint is a clear error."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import orbax.checkpoint as ocp
import pytest

from experiments.configs import default
from experiments.pipeline import run as runner
from experiments.pipeline import usage
from unlearn_jax import checkpoint


ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
  cfg = default.get_config()
  cfg.methods, cfg.seeds = default.methods_config("finetune"), 2
  cfg.train.epochs = 6
  cfg.checkpoint_every = 2
  for k, v in kw.items():
    cfg[k] = default.methods_config(v) if k == "methods" else v
  return cfg


class Killed(Exception):
  pass


def _run_killed_after(cfg, resume_dir, label, step, monkeypatch):
  """Runs until `label`'s checkpoint at `step` is written, then dies as a kill would."""
  real_save = checkpoint.ResumeStore.save

  def save_then_die(self, name, s, tree, meta):
    real_save(self, name, s, tree, meta)
    if name == label and s == step:
      raise Killed
  with monkeypatch.context() as m:
    m.setattr(checkpoint.ResumeStore, "save", save_then_die)
    with pytest.raises(Killed):
      runner.run(cfg, {}, log=lambda s: None, resume_dir=resume_dir)


@pytest.mark.integration   # long: three runs of the job
def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
  """Seeds vmapped; the SIGKILL test below covers sequential seeds."""
  cfg = _cfg()
  want = runner.run(cfg, {}, log=lambda s: None)
  resume_dir = tmp_path / "resume"
  _run_killed_after(cfg, resume_dir, "original", 4, monkeypatch)     # mid-training
  lines = []
  got = runner.run(cfg, {}, log=lines.append, resume_dir=resume_dir)
  assert any("original: resumed after epoch 4/6" in l for l in lines), lines
  for name in ("original", "retrain", "finetune"):
    chex.assert_trees_all_equal(got.model_sets[name].variables, want.model_sets[name].variables)
  assert [r["forget_acc"] for r in got.rows] == [r["forget_acc"] for r in want.rows]


@pytest.mark.integration
def test_finished_methods_are_not_rerun(tmp_path, monkeypatch):
  cfg = _cfg(methods="finetune,neggrad")
  resume_dir = tmp_path / "resume"
  _run_killed_after(cfg, resume_dir, "method_finetune", 0, monkeypatch)
  lines = []
  runner.run(cfg, {}, log=lines.append, resume_dir=resume_dir)
  assert any("original: resumed after epoch 6/6" in l for l in lines)
  assert any("method finetune: finished before, restored" in l for l in lines)
  assert not any("method neggrad: finished before" in l for l in lines)


@pytest.mark.integration
def test_a_method_killed_mid_way_resumes_inside_it(tmp_path, monkeypatch):
  """`--config.method_checkpoint_every=1`: SCRUB's state after each cycle is checkpointed;
  killed after its second cycle, the rerun restores the trained references and the
  cycle, runs the rest, and ends with the weights and rows of an uninterrupted run."""
  cfg = _cfg(methods="scrub", method_checkpoint_every=1, seed_loop="sequential")
  cfg.train.epochs = 2
  hp = {"scrub": {"epochs": 3, "max_epochs": 2}}
  want = runner.run(cfg, hp, log=lambda s: None)
  resume_dir = tmp_path / "resume"
  real_save = checkpoint.ResumeStore.save

  def save_then_die(self, name, s, tree, meta):
    real_save(self, name, s, tree, meta)
    if name == "steps_scrub" and s == 2:
      raise Killed
  with monkeypatch.context() as m:
    m.setattr(checkpoint.ResumeStore, "save", save_then_die)
    with pytest.raises(Killed):
      runner.run(cfg, hp, log=lambda s: None, resume_dir=resume_dir)
  lines = []
  got = runner.run(cfg, hp, log=lines.append, resume_dir=resume_dir)
  assert any("scrub: resumed after chunk 2/3" in l for l in lines), lines
  chex.assert_trees_all_equal(got.model_sets["scrub"].variables,
                              want.model_sets["scrub"].variables)
  assert [r["forget_acc"] for r in got.rows] == [r["forget_acc"] for r in want.rows]


def test_other_flags_refuse_the_resume_directory(tmp_path, monkeypatch):
  resume_dir = tmp_path / "resume"
  _run_killed_after(_cfg(), resume_dir, "original", 2, monkeypatch)
  with pytest.raises(usage.UsageError, match=r"other settings \(differs in: config\)"):
    runner.run(_cfg(seed=7), {}, log=lambda s: None, resume_dir=resume_dir)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
  resume_dir = tmp_path / "resume"
  _run_killed_after(_cfg(), resume_dir, "original", 4, monkeypatch)
  step_dir = resume_dir / "original" / "4"
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage")
  with pytest.raises(usage.UsageError, match=r"original step 4 is corrupt .*delete"):
    runner.run(_cfg(), {}, log=lambda s: None, resume_dir=resume_dir)


def _weights(run_dir: Path, name: str):
  with ocp.CheckpointManager((run_dir / "checkpoints" / name).resolve()) as mngr:
    return mngr.restore(mngr.latest_step())


@pytest.mark.integration
@pytest.mark.slow  # three CLI processes (~1 min on 2 cores); the in-process kill above is fast
def test_sigkill_then_same_command_resumes(tmp_path):
  """A real kill -9 of the CLI mid-training; the same command again finishes the run with
  the weights of an uninterrupted one."""
  args = [sys.executable, "-m", "experiments.unlearn", "--methods=finetune", "--seeds=1",
          "--config.seed_loop=sequential", "--config.train.epochs=12", "--config.plots=False"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run(args + [f"--workdir={tmp_path / 'clean'}"], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  run_dir = tmp_path / "killed"
  resume = tmp_path / ".killed.resume" / "original"
  proc = subprocess.Popen(args + [f"--workdir={run_dir}"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in resume.glob("*") if p.name.isdigit()] if resume.is_dir() else []
    if steps and max(steps) >= 3:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not run_dir.exists()                       # nothing half-written
  out = subprocess.run(args + [f"--workdir={run_dir}"], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True).stdout
  assert "original: resumed after epoch" in out
  assert not (tmp_path / ".killed.resume").exists()  # cleaned up once complete
  for name in ("original", "retrain", "finetune"):
    chex.assert_trees_all_equal(_weights(run_dir, name), _weights(tmp_path / "clean", name))
