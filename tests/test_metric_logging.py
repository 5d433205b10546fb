"""TensorBoard and wandb logging of a run (`experiments/reports/metric_logging.py`): the values in
the event file are the results.csv values; wandb gets the same through its API; a sink
whose package is missing is a one-line error before anything runs."""

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


FAKE_WANDB = '''
import json, os
CALLS = []
def _dump():
  with open(os.environ["FAKE_WANDB_LOG"], "w") as f:
    json.dump(CALLS, f)
class _Run:
  def log(self, values):
    CALLS.append(["log", values])
  def finish(self):
    CALLS.append(["finish"]); _dump()
def init(project=None, name=None, config=None):
  CALLS.append(["init", project, name, sorted(config)])
  return _Run()
'''


def _events(logdir: Path) -> dict:
  """{tag: {step: value}} read from the TFRecord event files (length, crc, Event, crc)."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in logdir.glob("events.out.tfevents.*"):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


@pytest.mark.integration
def test_tensorboard_and_wandb_get_the_run_metrics(tmp_path):
  fake = tmp_path / "fake"
  (fake / "wandb").mkdir(parents=True)
  (fake / "wandb" / "__init__.py").write_text(FAKE_WANDB)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "FAKE_WANDB_LOG": str(tmp_path / "wandb.json"),
         "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
  r = subprocess.run([sys.executable, "-m", "experiments.unlearn", "--methods=finetune,scrub",
                      "--seeds=2", "--config.train.epochs=3", "--config.plots=False",
                      f"--workdir={tmp_path / 'run'}", f"--config.tensorboard_dir={tmp_path / 'tb'}",
                      "--config.wandb_project=unlearn-test"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "run" / "results.csv") as f:
    rows = [row for row in csv.DictReader(f) if row["method"] == "scrub"]
  events = _events(tmp_path / "tb")
  assert events["results/scrub/forget_acc"] == pytest.approx(
      {i: float(row["forget_acc"]) for i, row in enumerate(rows)}, abs=1e-6)
  assert "memorisation_signal" in events
  along = [t for t in events if t.startswith("along/scrub/")]
  assert along and all(len(events[t]) >= 2 for t in along), along
  calls = json.loads((tmp_path / "wandb.json").read_text())
  assert calls[0][:3] == ["init", "unlearn-test", "run"] and "train" in calls[0][3]
  logged = {k: v for c in calls if c[0] == "log" for k, v in c[1].items()}
  assert logged["results/scrub/forget_acc"] == pytest.approx(float(rows[-1]["forget_acc"]))
  assert calls[-1] == ["finish"]


@pytest.mark.integration
def test_a_missing_sink_package_is_a_one_line_error(tmp_path):
  code = ("import runpy, sys; sys.modules['tensorboardX'] = None; sys.argv = ['unlearn', "
          f"'--methods=finetune', '--workdir={tmp_path / 'run'}', "
          f"'--config.tensorboard_dir={tmp_path / 'tb'}']; "
          "runpy.run_module('experiments.unlearn', run_name='__main__')")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: --config.tensorboard_dir=")
  assert "tensorboardX" in r.stderr and not (tmp_path / "run").exists()
