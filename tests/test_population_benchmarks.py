"""The population benchmarks as a user runs them: `experiments.benchmarks.population_benchmark` (models
per hour, ours against PyTorch) and `experiments.benchmarks.gpu_benchmark` (its --smoke dry run), and
the PyTorch stacked network the benchmark compares against."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.integration    # the script as a user starts it (a subprocess, a compilation per way)
def test_a_vmapped_population_trains_the_single_model_recipes_members(tmp_path):
  """On digits, N = 1 and 3 MLPs vmapped and one at a time: one CSV row per (N, way); the
  vmapped members' accuracies equal the single-model recipe's (the same keys train the
  same models: per member, to 1e-6); each way's models/hour is N × 3600 / its seconds."""
  out = tmp_path / "table.csv"
  r = _run("experiments.benchmarks.population_benchmark", "--dataset=digits", "--train_size=300",
           "--test_size=200", "--models=mlp:32", "--sizes=1,3", "--repeats=1", "--epochs=8",
           "--ways=jax_vmap,jax_sequential", f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert [(row["n"], row["way"]) for row in rows] == [
      ("1", "jax_vmap"), ("1", "jax_sequential"), ("3", "jax_vmap"), ("3", "jax_sequential")]
  for row in rows:
    assert float(row["models_per_hour"]) == pytest.approx(
        3600 * int(row["n"]) / float(row["train_s"]), rel=0.05)
  by = {(row["n"], row["way"]): row for row in rows}
  for n in ("1", "3"):
    assert float(by[(n, "jax_vmap")]["acc_mean"]) == pytest.approx(
        float(by[(n, "jax_sequential")]["acc_mean"]), abs=1e-6)
    assert float(by[(n, "jax_vmap")]["acc_std"]) == pytest.approx(
        float(by[(n, "jax_sequential")]["acc_std"]), abs=1e-6)
  assert float(by[("3", "jax_vmap")]["acc_mean"]) > 0.5          # they learned digits
  assert "| mlp:32 | 3 | jax_vmap |" in r.stdout


@pytest.mark.integration    # three interpreters started
def test_bad_benchmark_arguments_are_one_line():
  r = _run("experiments.benchmarks.population_benchmark", "--dataset=digits", "--ways=jax_pmap")
  assert r.returncode != 0 and "--ways: 'jax_pmap' is unknown; allowed: jax_vmap" in r.stderr
  assert "Traceback" not in r.stderr
  r = _run("experiments.benchmarks.population_benchmark", "--dataset=digits", "--models=swin")
  assert r.returncode != 0 and "model 'swin' is unknown" in r.stderr
  assert "Traceback" not in r.stderr
  r = _run("experiments.benchmarks.gpu_benchmark", "--dataset=digits")
  assert r.returncode != 0 and "--out is required" in r.stderr


@pytest.mark.integration    # three small trainings and step timings: a CPU minute
def test_the_gpu_script_dry_runs_every_part(tmp_path):
  """`gpu_benchmark --smoke` on digits runs its three parts at toy sizes on the CPU and
  writes each part's figures (Markdown and JSON): the dry run of the script a GPU session
  runs."""
  import json
  out = tmp_path / "gpu.md"
  r = _run("experiments.benchmarks.gpu_benchmark", "--smoke", "--dataset=digits", f"--out={out}",
           "--repeats=1", "--airbench_models=2", "--resnet9_models=2",
           "--resnet18_batch=16", "--resnet18_steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  text = out.read_text()
  for heading in ("## airbench94 populations", "## ResNet-9 populations",
                  "## ResNet-18 train step"):
    assert heading in text
  figures = json.loads(Path(f"{out}.json").read_text())
  assert [row["n"] for row in figures["airbench94"]] == [1, 2]
  assert all(len(row["accuracies"]) == row["n"] for row in figures["airbench94"])
  assert figures["resnet18"]["jax_images_per_s"] > 0


def test_the_stacked_pytorch_network_is_m_independent_networks():
  """`torch_population`'s M-member network (grouped convolutions, batched dense layers,
  BatchNorm over M·C channels) computes, for member m, exactly what a one-member network
  with member m's weights computes on member m's images, for the CNN, ResNet-9 and MLP
  (train mode: per-member batch statistics)."""
  torch = pytest.importorskip("torch")
  sys.path.insert(0, str(ROOT))
  from experiments.benchmarks import torch_population as tp
  torch.manual_seed(0)
  shape, m = (16, 16, 3), 3
  for base, kwargs in (("cnn", {"widths": (4, 8, 8)}), ("resnet9", {"widths": (4, 8, 8, 4)}),
                       ("mlp", {"hidden": (16,)})):
    stacked = tp.build(base, kwargs, m, shape, 5).train()
    singles = [tp.build(base, kwargs, 1, shape, 5).train() for _ in range(m)]
    for i, single in enumerate(singles):
      for (name, big), small in zip(stacked.state_dict().items(),
                                    single.state_dict().values()):
        if big.dim() == 0:                                # BatchNorm's step counter
          continue
        part = big.shape[0] // m
        with torch.no_grad():
          small.copy_(big[i:i + 1] if name.endswith(("weight", "bias")) and big.dim() == 3
                      else big[i * part:(i + 1) * part])
    x = torch.randn(6, m * 3, 16, 16)
    got = stacked(x).detach().numpy()
    for i, single in enumerate(singles):
      want = single(x[:, 3 * i:3 * (i + 1)]).detach().numpy()[:, 0]
      np.testing.assert_allclose(got[:, i], want, rtol=1e-4, atol=1e-5, err_msg=base)
