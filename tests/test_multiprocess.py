"""One JAX program over two processes (`jax.distributed`, 127.0.0.1, gloo collectives,
2 processes x 4 simulated CPU devices): the population axis spans both processes, the
results equal one process over 8 devices, only process 0 writes, and a job that loses a
process fails and resumes. The multiprocess lane (`python -m pytest --multiprocess`);
`tests/process_launcher.py` launches, time-limits and kills the processes."""

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import process_launcher as mp  # noqa: E402

pytestmark = pytest.mark.multiprocess

COMMON = ["--config.train.epochs=5", "--config.plots=False"]


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _launch_ok(args, tmp_path, timeout=300):
  outs = mp.launch(args, logs=tmp_path, timeout=timeout)
  for i, (rc, out) in enumerate(outs):
    assert rc == 0, f"process {i} failed (rc {rc}):\n{out[-3000:]}"
  return outs


def _only_process_0_wrote(outs, parent, names):
  """Process 1 printed nothing (it is silenced) and its stdout had no run directory; the
  parent holds the run directories and logs only: no staging or lock left by a second
  writer (a second writer would also have failed on the workdir's lock)."""
  assert "run directory:" in outs[0][1]
  assert "run directory:" not in outs[1][1], "process 1 reported a run of its own"
  left = sorted(p.name for p in parent.iterdir() if not p.name.startswith("process_"))
  assert left == sorted(names), left


def test_the_default_job_over_two_processes_equals_one_process(tmp_path):
  """4 seeds: the population axis is 4 devices over both processes (data 2 within each);
  every result equals the 1-process, 8-device run of the same mesh."""
  args = ["experiments.unlearn", "--methods=finetune,scrub,ssd", "--seeds=4", *COMMON]
  outs = _launch_ok(args + [f"--workdir={tmp_path / 'two'}"], tmp_path)
  assert "mesh seeds=4 x data=2 over 8 cpu device(s), 2 process(es)" in outs[0][1]
  rc, out = mp.run_single(args + [f"--workdir={tmp_path / 'one'}", "--config.mesh_seeds=4"])
  assert rc == 0, out[-3000:]
  _only_process_0_wrote(outs, tmp_path, ["one", "two"])
  two, one = _rows(tmp_path / "two" / "results.csv"), _rows(tmp_path / "one" / "results.csv")
  assert [(r["method"], r["seed"]) for r in two] == [(r["method"], r["seed"]) for r in one]
  assert len(two) == 4 * 5
  for a, b in zip(two, one):
    for col in ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr"):
      assert abs(float(a[col]) - float(b[col])) <= 0.005, (a["method"], col, a[col], b[col])
  assert (tmp_path / "two" / "checkpoints" / "scrub").is_dir()


def test_evaluate_and_tune_over_two_processes_equal_one_process(tmp_path):
  """`experiments.evaluate` at N = 8 (per-example ε within 1e-6) and a K = 8
  `experiments.tune` search (the same choice) split over both processes."""
  ev = ["experiments.evaluate", "--methods=finetune,ssd", "--config.evaluate.num_models=8",
        *COMMON]
  outs = _launch_ok(ev + [f"--workdir={tmp_path / 'ev2'}"], tmp_path)
  rc, out = mp.run_single(ev + [f"--workdir={tmp_path / 'ev1'}", "--config.mesh_seeds=8"])
  assert rc == 0, out[-3000:]
  e2, e1 = np.load(tmp_path / "ev2" / "epsilons.npz"), np.load(tmp_path / "ev1" / "epsilons.npz")
  assert sorted(e2.files) == sorted(e1.files) == ["finetune", "original", "retrain", "ssd"]
  for k in e1.files:
    both_inf = np.isinf(e1[k]) & np.isinf(e2[k])
    np.testing.assert_allclose(np.where(both_inf, 0, e2[k]), np.where(both_inf, 0, e1[k]),
                               atol=1e-6, err_msg=f"per-example epsilon of {k}")
  for a, b in zip(_rows(tmp_path / "ev2" / "evaluation.csv"),
                  _rows(tmp_path / "ev1" / "evaluation.csv")):
    for col in ("retain_acc", "forget_acc", "test_acc"):
      assert abs(float(a[col]) - float(b[col])) <= 0.005, (a["method"], col)

  tune = ["experiments.tune", "--methods=finetune", "--config.tune.budget=8", "--seeds=2", *COMMON]
  outs_t = _launch_ok(tune + [f"--workdir={tmp_path / 'tune2'}"], tmp_path)
  rc, out = mp.run_single(tune + [f"--workdir={tmp_path / 'tune1'}", "--config.mesh_seeds=8"])
  assert rc == 0, out[-3000:]
  t2 = json.loads((tmp_path / "tune2" / "tuned.json").read_text())["methods"]
  t1 = json.loads((tmp_path / "tune1" / "tuned.json").read_text())["methods"]
  assert t2["finetune"]["config"] == t1["finetune"]["config"]
  assert t2["finetune"]["hparams"] == t1["finetune"]["hparams"]
  _only_process_0_wrote(outs, tmp_path, ["ev1", "ev2", "tune1", "tune2"])
  _only_process_0_wrote(outs_t, tmp_path, ["ev1", "ev2", "tune1", "tune2"])


def test_sisa_shards_over_two_processes_equal_one_process(tmp_path):
  """`experiments.requests` with SISA's 8 shards on the population axis over both
  processes (3 deletion requests): every row equals the 1-process, 1-device run."""
  args = ["experiments.requests", "--methods=sisa,finetune", "--config.requests.count=3", "--seeds=1",
          "--config.requests.sisa_shards=8", "--config.requests.sisa_slices=2", "--config.train.epochs=4",
          "--config.plots=False"]
  outs = _launch_ok(args + [f"--workdir={tmp_path / 'two'}"], tmp_path)
  rc, out = mp.run_single(args + [f"--workdir={tmp_path / 'one'}"], devices=1)
  assert rc == 0, out[-3000:]
  _only_process_0_wrote(outs, tmp_path, ["one", "two"])
  two, one = _rows(tmp_path / "two" / "requests.csv"), _rows(tmp_path / "one" / "requests.csv")
  assert [(r["method"], r["request"]) for r in two] == [(r["method"], r["request"]) for r in one]
  assert {r["method"] for r in two} == {"sisa", "finetune", "retrain"}
  for a, b in zip(two, one):
    for col in ("retain_acc", "forget_acc", "test_acc"):
      assert abs(float(a[col]) - float(b[col])) <= 0.005, (a["method"], a["request"], col)


def test_flags_that_differ_between_processes_are_one_line_errors(tmp_path):
  """Process 1 started with other flags: both exit 2 with one line naming it."""
  port = mp.free_port()
  procs = []
  for i, seeds in enumerate((4, 8)):
    procs.append(mp.subprocess.Popen(
        [mp.sys.executable, "-m", "experiments.unlearn", "--methods=finetune",
         f"--seeds={seeds}", f"--workdir={tmp_path / 'run'}",
         f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
             f"--config.process_id={i}"],
        cwd=mp.ROOT, env=mp.env_for(4), stdout=mp.subprocess.PIPE, stderr=mp.subprocess.PIPE,
        text=True))
  try:
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    mp.kill_all(procs)
  assert [p.returncode for p in procs] == [2, 2]
  for err in errs:
    assert "error: process 1 was started with other flags than process 0" in err, err[-2000:]
  assert not (tmp_path / "run").exists()


def test_a_lost_process_fails_the_job_and_the_same_command_resumes(tmp_path):
  """Process 1 is killed mid-training: process 0 stops within the heartbeat timeout with
  JAX's "another task died" error, no run directory exists, and the same command on two
  processes resumes from the collective checkpoint and finishes."""
  args = ["experiments.unlearn", "--methods=finetune", "--seeds=4",
          "--config.train.epochs=40", "--config.plots=False", "--config.heartbeat_seconds=5",
          f"--workdir={tmp_path / 'run'}"]
  procs = mp.start(args, logs=tmp_path)
  resume = tmp_path / ".run.resume" / "original"
  try:
    deadline = time.time() + 180
    while time.time() < deadline and all(p.poll() is None for p in procs):
      done = [int(p.name) for p in resume.glob("*") if p.name.isdigit()] if resume.is_dir() else []
      if done and max(done) >= 3:
        break
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the job ended before it could be killed"
    procs[1].kill()
    procs[0].wait(timeout=120)
  finally:
    mp.kill_all(procs)
  assert procs[0].returncode != 0
  out = (tmp_path / "process_0.log").read_text()
  assert "another task died" in out, out[-3000:]
  assert not (tmp_path / "run").exists(), "a half-written run directory was left"
  assert not list(tmp_path.glob(".run.partial-*"))
  (tmp_path / "killed").mkdir()
  for i in range(2):
    (tmp_path / f"process_{i}.log").rename(tmp_path / "killed" / f"process_{i}.log")
  outs = _launch_ok(args, tmp_path)
  assert "original: resumed after epoch" in outs[0][1]
  assert (tmp_path / "run" / "results.csv").is_file()
  assert not (tmp_path / ".run.resume").exists()
