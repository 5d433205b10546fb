"""experiments.klom_curve: the do-nothing and oracle-vs-oracle KLOM by population size."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_curve_and_the_first_n_at_which_klom_ranks():
  from experiments import klom_curve
  rng = np.random.default_rng(0)
  oracle = {s: rng.normal(0, 1, (32, 40)) for s in klom_curve.SPLITS}
  second = {s: rng.normal(0, 1, (32, 40)) for s in klom_curve.SPLITS}
  nothing = {s: rng.normal(0 if s != "forget" else 3.0, 1, (32, 40)) for s in klom_curve.SPLITS}
  rows = klom_curve.curve(nothing, oracle, second, [4, 8, 32])
  assert len(rows) == 3 * 3 * 2
  forget = [r for r in rows if r["split"] == "forget" and r["direction"] == "unlearned_oracle"]
  # The floor falls with N; a shifted population stays far from the oracles.
  assert forget[0]["floor_p95"] > forget[-1]["floor_p95"]
  assert all(r["do_nothing_p95"] > r["floor_p95"] for r in forget[1:])
  assert klom_curve.first_ranking_n(rows) in (4, 8)
  same = klom_curve.curve(oracle, oracle, oracle, [4])
  assert klom_curve.first_ranking_n(same) is None


@pytest.mark.integration    # three sizes of bootstrap redraws
def test_the_interval_curve_narrows_with_n_and_separates_only_real_gaps():
  """average_95 with its interval by N: none below the bootstrap's minimum, narrower at
  32 than at 16, and a forget split shifted by 3σ told from the floor while a third draw
  of the oracles' distribution is not."""
  from experiments import klom_curve
  from unlearn_jax.evaluation import MIN_MODELS_PER_SIDE
  rng = np.random.default_rng(1)
  draw = lambda shift=0.0: {s: rng.normal(shift if s == "forget" else 0.0, 1, (32, 40))
                            for s in klom_curve.SPLITS}
  oracle, second = draw(), draw()
  rows = klom_curve.interval_curve(draw(3.0), oracle, second, [8, 16, 32])
  assert 8 < MIN_MODELS_PER_SIDE and rows[0]["separable"] is None
  assert np.isnan(rows[0]["floor_low"])
  width = lambda r: r["floor_high"] - r["floor_low"]
  assert width(rows[2]) < width(rows[1])
  assert rows[1]["separable"] and rows[2]["separable"]
  for r in rows[1:]:
    assert r["floor_low"] <= r["floor_average_95"] <= r["floor_high"]
  same = klom_curve.interval_curve(draw(), oracle, second, [32])
  assert same[0]["separable"] is False


@pytest.mark.parametrize("text", ["8,x", "8,4", "1,2", ""])
def test_bad_sizes_are_named(text):
  from experiments import klom_curve
  from experiments.pipeline import usage
  with pytest.raises(usage.UsageError, match="--config.evaluate.sizes="):
    klom_curve.parse_sizes(text)


@pytest.mark.integration
def test_the_cli_end_to_end_on_digits(tmp_path):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  run = tmp_path / "curve"
  r = subprocess.run([sys.executable, "-m", "experiments.klom_curve", "--config.evaluate.sizes=2,4",
                      "--config.train.epochs=3", f"--workdir={run}",
                      f"--config.references_dir={tmp_path / 'pops'}"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = list(csv.DictReader(open(run / "curve.csv")))
  assert {(int(x["num_models"]), x["split"], x["direction"]) for x in rows} == {
      (n, s, d) for n in (2, 4) for s in ("forget", "retain", "test")
      for d in ("unlearned_oracle", "oracle_unlearned")}
  assert all(float(x["floor_p95"]) >= 0 and float(x["do_nothing_p95"]) >= 0 for x in rows)
  info = json.loads((run / "curve.json").read_text())["info"]
  assert info["max_models"] == 4 and (run / "plots" / "curve.png").exists()
  assert "How many models KLOM needs" in (run / "report.md").read_text()
  # The three populations are cached: a second run trains nothing.
  again = subprocess.run([sys.executable, "-m", "experiments.klom_curve", "--config.evaluate.sizes=2,4",
                          "--config.train.epochs=3", f"--workdir={tmp_path / 'again'}",
                          f"--config.references_dir={tmp_path / 'pops'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and again.stdout.count("reusing the references") == 3, \
      again.stdout[-2000:]
  assert (tmp_path / "again" / "curve.csv").read_text() == (run / "curve.csv").read_text()
  bad = subprocess.run([sys.executable, "-m", "experiments.klom_curve", "--config.evaluate.sizes=4,2",
                        f"--workdir={tmp_path / 'bad'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "--config.evaluate.sizes='4,2' must be increasing" in bad.stderr
  assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_the_docs_page_is_rendered_from_the_runs(tmp_path):
  """experiments.reports.population_docs: every method's row, ranked by average_95, the
  curve table and plot, the stamp; a missing run is one line, exit 2."""
  from experiments.reports import population as evaluation
  ev, cu, out = tmp_path / "ev", tmp_path / "cu", tmp_path / "docs"
  (cu / "plots").mkdir(parents=True)
  ev.mkdir()
  rows = []
  for i, m in enumerate(("original", "retrain", "scrub")):
    row = {c: 0.1 * (3 - i) for c in evaluation.CSV_COLUMNS}
    row.update(method=m, num_models=8, klom_direction="unlearned_oracle")
    rows.append(row)
  with open(ev / "evaluation.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=evaluation.CSV_COLUMNS)
    w.writeheader()
    w.writerows(rows)
  (ev / "evaluation.json").write_text(json.dumps({"info": {"wall_seconds": 12.0}}))
  curve_rows = [dict(num_models=n, split=s, direction=d, do_nothing_p95=1.0, floor_p95=2.0 / n)
                for n in (4, 8) for s in ("forget", "retain", "test")
                for d in ("unlearned_oracle", "oracle_unlearned")]
  (cu / "curve.json").write_text(json.dumps({"rows": curve_rows, "info": {
      "sizes": [4, 8], "first_ranking_n": 4}}))
  (cu / "curve.csv").write_text("x\n")
  (cu / "plots" / "curve.png").write_bytes(b"png")
  r = subprocess.run([sys.executable, "-m", "experiments.reports.population_docs",
                      f"--evaluation={ev}", f"--curve={cu}", f"--out={out}",
                      "--evaluation_command=python -m experiments.evaluate --config.evaluate.num_models=8"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  page = (out / "README.md").read_text()
  order = [(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in page.splitlines()
           if line.startswith("| ") and line.split("|")[2].strip() in ("original", "retrain", "scrub")]
  # Ascending average_95, ranked (these intervals do not overlap).
  assert order == [("1", "scrub"), ("2", "retrain"), ("3", "original")], order
  assert "Wall time 12 s" in page and "first falls below doing nothing" in page
  assert "| 8 | unlearned_oracle | 1.00 / 0.25 |" in page and "JAX " in page
  assert (out / "klom_curve.png").exists() and (out / "evaluation.csv").exists()
  bad = subprocess.run([sys.executable, "-m", "experiments.reports.population_docs",
                        f"--evaluation={tmp_path / 'none'}", f"--curve={cu}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_the_population_config_sets_up():
  """experiments/configs/cifar10_population.py loads and passes setup (on digits, offline):
  a vmapped MLP over every data method."""
  from experiments.pipeline import experiment
  from experiments.configs import cifar10_population
  from unlearn_jax import methods
  cfg = cifar10_population.get_config()
  # Its documented commands run this file with the population entry points.
  import importlib.util
  import re
  commands = re.findall(r"python -m (experiments\.\w+) --config=(\S+?\.py)",
                        cifar10_population.__doc__)
  assert {entry for entry, _ in commands} == {"experiments.evaluate", "experiments.klom_curve"}
  for entry, path in commands:
    assert importlib.util.find_spec(entry) is not None, entry
    assert (Path(__file__).resolve().parents[1] / path).resolve() == \
        Path(cifar10_population.__file__).resolve(), path
  assert cfg.model.startswith("mlp:") and cfg.seed_loop == "vmap"
  assert set(cfg.methods.keys()) == {m for m in methods.list_methods()
                                         if methods.get_method(m).reads}
  cfg.dataset = "digits"
  st = experiment.setup(cfg, log=lambda s: None)
  assert st.mode == "vmap" and st.recipe.lr == 0.02 and st.recipe.epochs == 30
