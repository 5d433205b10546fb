"""`python -m experiments.requests`: a small real stream of deletion requests, and bad flags."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Subprocess runs of the entry point as a user starts it: the integration lane.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def run_requests(*args):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run([sys.executable, "-m", "experiments.requests", *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=900)


def test_two_requests_with_sisa_finetune_and_retrain(tmp_path):
  r = run_requests("--config=digits", "--config.requests.count=2", "--config.requests.size=0.02", "--seeds=1",
                   "--methods=sisa,finetune", "--config.train.epochs=4", "--config.requests.sisa_shards=2",
                   "--config.requests.sisa_slices=2", f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "run" / "requests.csv")))
  assert [(x["method"], x["request"]) for x in rows] == [
      ("sisa", "1"), ("finetune", "1"), ("retrain", "1"),
      ("sisa", "2"), ("finetune", "2"), ("retrain", "2")]
  assert [int(x["forget_size"]) for x in rows] == [25, 25, 25, 50, 50, 50]
  for x in rows:
    assert 0.0 <= float(x["forget_acc"]) <= 1.0 and float(x["cumulative_seconds"]) >= 0.0
  for name in ("requests.md", "requests.json", "plots/requests_forget_acc.png"):
    assert (tmp_path / "run" / name).exists(), name
  assert "worst gap" in r.stdout and "SISA (2 shards × 2 slices)" in r.stdout


def test_certified_head_carries_its_certificate_across_requests(tmp_path):
  """Three one-example requests: certified_head's rows carry the residual bound and the
  budget, the bound stays within the budget, and it grows while no refit happens (the
  head's state passes from one request to the next); requests.md shows the certificate."""
  r = run_requests("--config.requests.count=3", "--config.requests.size=1", "--seeds=1",
                   "--methods=certified_head",
                   "--config.train.epochs=4", f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [x for x in csv.DictReader(open(tmp_path / "run" / "requests.csv"))
          if x["method"] == "certified_head"]
  assert len(rows) == 3
  bounds = [float(x["certified_residual_bound"]) for x in rows]
  refits = [float(x["certified_refits"]) for x in rows]
  for x in rows:
    assert 0 <= float(x["certified_residual_bound"]) <= float(x["certified_residual_budget"])
  for a, b, r0, r1 in zip(bounds, bounds[1:], refits, refits[1:]):
    assert b > a or r1 > r0, f"the bound did not accumulate: {bounds}, refits {refits}"
  assert "certified_head's certificate after each request" in (
      tmp_path / "run" / "requests.md").read_text()


def test_noisy_finetune_carries_its_certificate_across_requests(tmp_path):
  """Three one-example requests: noisy_finetune's rows carry the ε its bound gives (within
  the target), the epochs each request took (never fewer than the first request's, as the
  W∞ bound carries over) and its noise σ; requests.md shows the certificate."""
  r = run_requests("--config.requests.count=3", "--config.requests.size=1", "--seeds=1",
                   "--methods=noisy_finetune",
                   "--config.train.epochs=4", f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [x for x in csv.DictReader(open(tmp_path / "run" / "requests.csv"))
          if x["method"] == "noisy_finetune"]
  assert len(rows) == 3
  epochs = [float(x["certified_unlearn_epochs"]) for x in rows]
  for x in rows:
    assert 0 < float(x["certified_epsilon_bound"]) <= 1.0, x["certified_epsilon_bound"]
    assert float(x["certified_noise_sigma"]) > 0
  assert epochs[0] == 200 and min(epochs) == epochs[0], epochs
  assert "noisy_finetune's certificate after each request" in (
      tmp_path / "run" / "requests.md").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--config.requests.kind=sideways"],
     "--config.requests.kind='sideways' is unknown; allowed: random, class"),
    (["--config.requests.kind=class"], "needs --config.forget_classes"),
    (["--methods=sisa,magic"], "--methods: 'magic' is unknown; allowed: sisa, retrain"),
    (["--config.requests.count=200", "--config.requests.size=0.01"],
     "must select at least one example per request"),
    (["--config.requests.sisa_shards=0"], "--config.requests.sisa_shards=0 must be >= 1"),
])
def test_bad_flags_are_one_line(args, needle, tmp_path):
  r = run_requests(*args, f"--workdir={tmp_path / 'bad'}")
  assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
  assert not (tmp_path / "bad").exists()
