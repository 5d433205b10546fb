r"""One command from data to a verdict: train, retrain, unlearn, evaluate, report.

    python -m experiments.unlearn                       # digits, 10%% random, all methods
    python -m experiments.unlearn --config.scenario=class --config.forget_classes=3 --methods=finetune
    python -m experiments.unlearn --config.methods.finetune.lr=0.05 --seeds=5 --workdir=runs/ft
    python -m experiments.unlearn --config.tuned_hparams=runs/tune_x/tuned.json   # experiments.tune's choice

Writes into --workdir (default runs/<dataset>_<scenario>_<time>): results.csv,
results.json, summary.md, splits.npz/json, plots/, checkpoints/. A run is staged in a
hidden sibling directory and moved into place only when complete. Train states (every
`--config.checkpoint_every` epochs), finished methods and, with
`--config.method_checkpoint_every=N`, methods every N epochs are checkpointed in
`.<workdir name>.resume/` beside it: a killed run, restarted with the same command,
continues from there and ends with the weights of an uninterrupted run.
"""

import shutil

from absl import flags

from . import cli
from .reports import metric_logging, run as report
from .pipeline import run as runner

from .pipeline import rundir
from unlearn_jax import parallel


def job(cfg) -> str:
  """Validate everything, then train, unlearn, evaluate and write the run directory (in a
  multi-process job every process computes and process 0 writes)."""
  F = flags.FLAGS
  log = lambda s: print(s, flush=True)
  hparams = cli.method_hparams(cfg)
  st = runner.validate_run(cfg, hparams, F.workdir, F.overwrite, log)
  metric_logging.check_available(cfg.tensorboard_dir, cfg.wandb_project)
  workdir = cli.workdir(cfg)
  resume_dir = rundir.resume_dir_for(workdir)
  with rundir.staged_workdir(workdir, F.overwrite) as (final, staging):
    if not F.resume and resume_dir.exists() and parallel.is_writer():
      shutil.rmtree(resume_dir)    # under the workdir's lock: no other run is using it
    parallel.barrier("resume directory ready")
    result = runner.run(cfg, hparams, log=log, st=st,
                        resume_dir=resume_dir if cfg.checkpoint_every > 0 else None)
    result = report.on_host(result)      # every process: gathering is a collective
    md = (report.write_run(staging, result, cfg.to_dict(), cfg.save_checkpoints, cfg.plots)
          if staging is not None else "")
    if staging is not None:
      metric_logging.log_run(result, cfg.to_dict(), cfg.tensorboard_dir, cfg.wandb_project,
                             run_name=final.name)
  parallel.barrier("run written")
  if parallel.is_writer():
    shutil.rmtree(resume_dir, ignore_errors=True)   # the run is complete: nothing to resume
  return (f"\n{md}\nwall time {result.info['wall_seconds']:.1f}s; run directory: {final}")


if __name__ == "__main__":
  cli.run(job)
