r"""Proof of forgetting: N unlearned vs N retrained models per method, every attack.

    python -m experiments.evaluate                                  # MNIST-1D, N=16, all methods
    python -m experiments.evaluate --config.evaluate.num_models=64 \
        --methods=finetune,neggrad,random_label
    python -m experiments.evaluate --config=cifar10_cnn --config.dataset=cifar10:cifar-10-python.tar.gz \
        --config.train_subset=5000 --config.evaluate.num_models=8 --config.evaluate.chunk=4

Trains `evaluate.num_models` originals and as many retrained models (vmapped, in chunks
of `evaluate.chunk` when memory asks), applies each method to every original, and writes into
--workdir: evaluation.csv (one row per method), report.md, evaluation.json,
epsilons.npz and plots/ (per-example ε histograms, U/R distributions, method × metric
chart). With --config.references_dir=DIR the populations are checkpointed under DIR, one
directory per population and fingerprint, and reused by any later stage (unlearn, evaluate,
tune, requests, klom_curve) with the same data, model, split, recipe, seeds and N. Every
other flag is experiments.unlearn's (`experiments.cli`: dataset, model, scenario, seeds,
configs, `--config.methods.<method>.<hparam>`).
"""

from absl import flags

from . import cli
from .pipeline import population
from .reports import population as population_report

from .pipeline import rundir, settings, usage


def chunk_of(cfg) -> int:
  """Models per vmapped chunk (0: all at once); UsageError below 1."""
  chunk = cfg.evaluate.chunk
  if chunk is not None and chunk < 1:
    raise usage.UsageError(f"--config.evaluate.chunk={chunk} must be at least 1 (or None: "
                           "all at once)")
  return chunk or 0


def job(cfg) -> str:
  E = cfg.evaluate
  hparams = cli.method_hparams(cfg)
  settings.validate(cfg)
  chunk = chunk_of(cfg)
  with rundir.staged_workdir(cli.workdir(cfg, "eval_"), flags.FLAGS.overwrite) as (final,
                                                                                 staging):
    ev = population.run(cfg, hparams, E.num_models, chunk,
                        log=lambda s: print(s, flush=True), mia_models=E.mia_models,
                        num_resamples=E.bootstrap, epsilon_resamples=E.bootstrap_epsilon)
    scen = (f"class {cfg.forget_classes}" if cfg.scenario == "class"
            else f"{cfg.scenario} {100 * cfg.forget_fraction:g}%")
    md = "" if staging is None else population_report.write_evaluation(
        staging, ev, cfg.to_dict() | {"num_models": E.num_models, "chunk": chunk,
                                   "bootstrap": E.bootstrap,
                                   "bootstrap_epsilon": E.bootstrap_epsilon},
        f"{ev.info['dataset']} · {ev.info['model']} · {scen}")
  return f"\n{md}\nrun directory: {final}"


if __name__ == "__main__":
  cli.run(job, fields=("evaluate.num_models", "evaluate.mia_models", "evaluate.bootstrap",
                       "evaluate.chunk", "references_dir"))
