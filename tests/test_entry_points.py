"""One real step of each entry point, in process (flax's examples' way: the program's own
`main` on small data, no subprocess): `unlearn`, `evaluate`, `tune` and `requests` parse
their flags, run a one-epoch job on digits and write their run directory. The end-to-end
runs as a user starts them (subprocesses, exit codes, a SIGKILL and its resume, the
wheel) are the integration lane's (`python -m pytest --integration`)."""

import csv
import json
import sys
from pathlib import Path

import pytest
from absl import flags

from experiments import cli, evaluate, requests, tune, unlearn
from experiments.pipeline import usage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_log  # noqa: E402

# Dotted overrides (`--config.train.epochs=1`, `--config.methods.finetune.epochs=1`) are parsed by
# ml_collections from sys.argv when the flags are *defined*, i.e. at import: in process they
# are given as values instead, exactly where the CLI puts them.
ONE_EPOCH = {"train.epochs": 1, "plots": False, "save_checkpoints": False}


@pytest.fixture
def run_job(monkeypatch):
  """`run_job(module, *args, config=..., hparams=...)`: `module.job` as its main runs it,
  with `args` as the command line (absl parses them, every flag back to its default
  first), the config built as the CLI builds it with `config`'s dotted fields set, and
  `hparams` ({method: {name: value}}) over the methods' defaults."""
  def run(module, *args, config=None, hparams=None, methods_field="methods") -> str:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["entry_point", "--seeds=1", *args])
    usage.begin_cli(["entry_point"])
    cfg = cli.build_config(methods_field)
    cfg.update_from_flattened_dict({**ONE_EPOCH, **(config or {})})
    for method, values in (hparams or {}).items():
      for name, value in values.items():
        cfg.methods[method][name] = value
    return module.job(cfg)

  yield run
  flags.FLAGS.unparse_flags()


def rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


ONE_FINETUNE_EPOCH = {"finetune": {"epochs": 1}}


def test_unlearn_one_epoch(run_job, tmp_path):
  out = run_job(unlearn, "--methods=finetune", f"--workdir={tmp_path / 'run'}",
                hparams=ONE_FINETUNE_EPOCH)
  got = rows(tmp_path / "run" / "results.csv")
  assert [r["method"] for r in got] == ["original", "retrain", "finetune"]
  assert all(0.0 <= float(r["forget_acc"]) <= 1.0 for r in got)
  assert "| method |" in out and str(tmp_path / "run") in out
  assert not (tmp_path / ".run.resume").exists()     # a finished run leaves nothing to resume


@pytest.mark.integration   # 36 s: the default lane keeps under 5 minutes on CI
def test_evaluate_one_epoch_compiles_each_program_once(run_job, tmp_path):
  """Populations of 4 in chunks of 2: every program (the epoch programs, the method's, the
  logits and metrics) is compiled once, however many chunks and populations."""
  with compile_log.compiles() as counts:
    run_job(evaluate, "--methods=finetune", f"--workdir={tmp_path / 'run'}",
            config={"evaluate.num_models": 4, "evaluate.chunk": 2, "evaluate.mia_models": 2,
                    "references_dir": str(tmp_path / "pops")},
            hparams=ONE_FINETUNE_EPOCH)
  assert not compile_log.compiled_twice(counts), compile_log.compiled_twice(counts)
  per = compile_log.per_program(counts)
  assert per["jit(unlearn_finetune)"] == 1 and per["jit(train_epoch)"] == 2, per
  got = rows(tmp_path / "run" / "evaluation.csv")
  assert [r["method"] for r in got] == ["original", "retrain", "finetune"]
  assert 0.0 <= float(got[2]["forgetting_quality"]) <= 1.0
  assert any((tmp_path / "pops").iterdir()), "the populations were not kept for reuse"


def test_tune_one_epoch(run_job, tmp_path):
  run_job(tune, "--methods=finetune", f"--workdir={tmp_path / 'run'}",
          config={"tune.budget": 2}, hparams=ONE_FINETUNE_EPOCH)
  tuned = json.loads((tmp_path / "run" / "tuned.json").read_text())
  assert "finetune" in json.dumps(tuned)
  assert len(rows(tmp_path / "run" / "tuning.csv")) == 2      # 2 configurations x 1 seed


def test_requests_one_epoch(run_job, tmp_path):
  run_job(requests, "--methods=finetune", f"--workdir={tmp_path / 'run'}",
          config={"requests.count": 1, "requests.size": 0.02}, hparams=ONE_FINETUNE_EPOCH,
          methods_field="requests.methods")
  got = rows(tmp_path / "run" / "requests.csv")
  assert [(r["method"], r["request"]) for r in got] == [("finetune", "1"), ("retrain", "1")]


def test_a_bad_flag_is_a_usage_error_before_anything_is_written(run_job, tmp_path):
  with pytest.raises(usage.UsageError, match="--config.dataset='imagenet' is unknown"):
    run_job(unlearn, f"--workdir={tmp_path / 'run'}", config={"dataset": "imagenet"})
  assert not any(tmp_path.iterdir())


def test_a_stage_reuses_the_references_another_stage_cached(run_job, tmp_path, capsys):
  """`--config.references_dir` is every stage's cache: experiments.unlearn trains and saves
  the original and retrained populations, then experiments.tune restores both and
  experiments.requests its original, training none (the cache keeps its two entries)."""
  cache = {"references_dir": str(tmp_path / "refs")}
  run_job(unlearn, "--seeds=2", "--methods=finetune", f"--workdir={tmp_path / 'run'}",
          config=cache, hparams=ONE_FINETUNE_EPOCH)
  assert capsys.readouterr().out.count("saving the references") == 2
  populations = lambda: sorted(p.name for p in (tmp_path / "refs").iterdir() if p.is_dir())
  entries = populations()
  assert len(entries) == 2
  run_job(tune, "--seeds=2", "--methods=finetune", f"--workdir={tmp_path / 'tune'}",
          config={**cache, "tune.budget": 2}, hparams=ONE_FINETUNE_EPOCH)
  out = capsys.readouterr().out
  assert out.count("reusing the references") == 2 and "saving the references" not in out, out
  run_job(requests, "--seeds=2", "--methods=finetune", f"--workdir={tmp_path / 'req'}",
          config={**cache, "requests.count": 1, "requests.size": 0.02},
          hparams=ONE_FINETUNE_EPOCH, methods_field="requests.methods")
  assert populations() == entries
  for name in entries:       # each entry is one population, with what produced it
    fp = json.loads((tmp_path / "refs" / name / "fingerprint.json").read_text())
    assert fp["fingerprint"]["population"] in ("original", "retrain")
    assert fp["fingerprint"]["num_models"] == 2
