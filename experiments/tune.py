r"""Tuned, not guessed: search every method's hyperparameters as one program per method.

    python -m experiments.tune --config=digits --config.scenario=class \
        --config.forget_classes=3 --config.tune.budget=16
    python -m experiments.tune --config=experiments/configs/cifar10_memorise.py \
        --methods=finetune,ssd,salun --config.tune.select=retrain_gap
    python -m experiments.unlearn --config.tuned_hparams=runs/<tune dir>/tuned.json            # reuse it

For each method with a search space (`register(..., space=...)`), `--config.tune.budget` K
configurations (the defaults first, then random draws, log-uniform on log scales) × the
seeds run as one vmapped program (`--config.tune.search_loop=vmap`) or one compiled program called per
configuration and seed (`sequential`; `auto` picks what the seeds use: sequential for conv
models on CPU). Selection (`--config.tune.select`) scores each configuration on a
`--config.tune.selection_fraction` of D_f and of D_r and on the val split; the report uses only the
rest of D_f and D_r and the test split:
  * `no_retrain` (deployment mode): forget accuracy toward held-out accuracy (random) or 0
    (class), retain and val accuracy kept, loss MIA toward 0.5 (`tuning.no_retrain_score`);
  * `retrain_gap` (benchmark mode): mean |gap| to the retrained models over RA, FA, TA and
    the loss MIA (`tuning.retrain_gap_score`).
Either rule chooses only among configurations that keep `--config.tune.min_retain` (default 0.9) of
the original's retain accuracy on the selection part (`tuning.select_configuration`):
retrain_gap alone would trade the retain set away for a smaller gap in FA and MIA.
Writes into --workdir: tuning.csv (every configuration × seed: its values, the selection
metrics and score), tuned.json (the chosen hyperparameters per method, the rule and the
data it saw), report.md (default vs tuned), tuning.json and plots/tuning_<method>.png.
Every other flag is experiments.unlearn's (dataset, model, scenario, seeds, configs,
`--config.methods.<method>.<hparam>` for the hyperparameters that are not searched).
"""

from absl import flags

from .pipeline import tuning as tuning_run
from .reports import tuning as tuning_report

from .pipeline import rundir, settings
from . import cli   # the shared flags, their parsing, the one main



def job(cfg) -> str:
  T = cfg.tune
  fixed = cli.method_hparams(cfg)
  tuning_run.check_options(T.budget, T.select, T.selection_fraction, T.search_loop,
                           T.min_retain)
  settings.validate(cfg)
  with rundir.staged_workdir(cli.workdir(cfg, "tune_"), flags.FLAGS.overwrite) as (final,
                                                                                 staging):
    result = tuning_run.run(cfg, fixed, budget=T.budget, rule=T.select,
                            fraction=T.selection_fraction, loop=T.search_loop,
                            min_retain=T.min_retain, log=lambda s: print(s, flush=True))
    title = (f"Tuning: {cfg.dataset} · {result.info['model']} · {cfg.scenario}"
             + (f" (classes {cfg.forget_classes})" if cfg.scenario != "random" else
                f" ({100 * cfg.forget_fraction:g}% forget)"))
    md = ("" if staging is None else
          tuning_report.write_tuning(staging, result, cfg.to_dict(), title, cfg.plots))
  return (f"\n{md}\nwall time {result.info['wall_seconds']:.1f}s; run directory: {final}; "
          f"reuse the choice with --config.tuned_hparams={final}/tuned.json")


if __name__ == "__main__":
  cli.run(job, fields=("tune.budget", "tune.select", "tune.selection_fraction",
                       "tune.min_retain"))
