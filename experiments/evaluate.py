r"""Proof of forgetting: N unlearned vs N retrained models per method, every attack.

    python -m experiments.evaluate                                  # digits, N=16, all methods
    python -m experiments.evaluate --num_models=64 --methods=finetune,neggrad,random_label
    python -m experiments.evaluate --dataset=cifar10:cifar-10-python.tar.gz \
        --train_subset=5000 --num_models=8 --chunk=4

Trains --num_models originals and --num_models retrained models (vmapped, in chunks of
--chunk when memory asks), applies each method to every original, and writes into
--workdir: evaluation.csv (one row per method), report.md, evaluation.json,
epsilons.npz and plots/ (per-example ε histograms, U/R distributions, method × metric
chart). The populations are checkpointed under --populations_dir/<fingerprint> and
reused by any later evaluation with the same data, model, split, recipe and N. Every
other flag is experiments.unlearn's (`experiments.cli`: dataset, model, scenario, seeds,
configs, `--<method>.<hparam>`).
"""

from pathlib import Path

from absl import flags

from . import cli, population, population_flags, population_report, setup  # noqa: F401

flags.DEFINE_integer("num_models", 16, "models per population (originals, retrained, unlearned)")
flags.DEFINE_integer("mia_models", 16, "models per population that fit SalUn's SVC attack")
flags.DEFINE_integer("bootstrap", 200, "bootstrap redraws of the models behind every KLOM "
                     "interval (0 = no intervals)")
flags.DEFINE_integer("bootstrap_epsilon", 30, "of those, the redraws that also recompute "
                     "per-example ε, F and the competition score (each runs the attack grid)")


def job(cfg) -> str:
  F = flags.FLAGS
  hparams = cli.method_hparams()
  setup.validate(cfg)
  with setup.staged_workdir(cli.workdir(cfg, "eval_"), F.overwrite) as (final, staging):
    ev = population.run(cfg, hparams, F.num_models, F.chunk,
                        Path(F.populations_dir) if F.populations_dir else None,
                        log=lambda s: print(s, flush=True), mia_models=F.mia_models,
                        num_resamples=F.bootstrap, epsilon_resamples=F.bootstrap_epsilon)
    scen = (f"class {cfg.forget_classes}" if cfg.scenario == "class"
            else f"{cfg.scenario} {100 * cfg.forget_fraction:g}%")
    md = "" if staging is None else population_report.write_evaluation(
        staging, ev, cfg.to_dict() | {"num_models": F.num_models, "chunk": F.chunk,
                                   "bootstrap": F.bootstrap,
                                   "bootstrap_epsilon": F.bootstrap_epsilon},
        f"{ev.info['dataset']} · {ev.info['model']} · {scen}")
  return f"\n{md}\nrun directory: {final}"


if __name__ == "__main__":
  cli.run(job)
