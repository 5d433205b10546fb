"""Optional experiment logging: TensorBoard event files and Weights & Biases, off by default.

The run directory's CSV and JSON files stay the record; these sinks repeat what a finished
run measured, for the dashboards people already use (flax's examples write TensorBoard
through metric writers; several PyTorch unlearning frameworks log to wandb):

- `along/<method>/<metric>`: forget and retain accuracy along each method's steps (the
  mean over seeds, step = the evaluation index, as `plots/along_steps.png`);
- `results/<method>/<column>`: every numeric column of `results.csv`, step = the seed's row;
- `memorisation_signal`: original FA − retrain FA (mean over seeds).

`--config.tensorboard_dir=DIR` needs `tensorboardX` (`pip install 'unlearn_jax[logging]'`);
`--config.wandb_project=NAME` needs `wandb` (its own login or `WANDB_MODE=offline`). Only the
writing process (process 0) logs.
"""

from __future__ import annotations

import importlib.util
import math

from . import run as report
from ..pipeline.usage import UsageError

RESULT_COLUMNS = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr", "seconds", "ain",
                  "layer_distance", "val_acc")


def check_available(tensorboard_dir: str | None, wandb_project: str | None) -> None:
  """UsageError, before anything runs, for a sink whose package is not installed."""
  if tensorboard_dir and importlib.util.find_spec("tensorboardX") is None:
    raise UsageError(f"--config.tensorboard_dir={tensorboard_dir} needs tensorboardX: pip install "
                     "'unlearn_jax[logging]'")
  if wandb_project and importlib.util.find_spec("wandb") is None:
    raise UsageError(f"--config.wandb_project={wandb_project} needs wandb: pip install wandb")


def scalars(result) -> list[tuple[str, float, int]]:
  """(tag, value, step) of a finished `runner.RunResult`, in logging order."""
  out = []
  for name, model_set in result.model_sets.items():
    for metric, (values, _, _) in report.along_curves(model_set.along).items():
      out += [(f"along/{name}/{metric}", float(v), i) for i, v in enumerate(values)]
  steps = {}
  for row in result.rows:
    step = steps[row["method"]] = steps.get(row["method"], -1) + 1
    for col in RESULT_COLUMNS:
      value = row.get(col)
      if isinstance(value, (int, float)) and math.isfinite(float(value)):
        out.append((f"results/{row['method']}/{col}", float(value), step))
  signal = report.memorisation_signal(result.rows)
  if signal is not None:
    out.append(("memorisation_signal", float(signal["points"][0]), 0))
  return out


def log_run(result, config: dict, tensorboard_dir: str | None = None,
            wandb_project: str | None = None, run_name: str = "") -> None:
  """Writes `scalars(result)` to the sinks that are asked for (none: nothing happens)."""
  values = scalars(result)
  if tensorboard_dir:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(logdir=tensorboard_dir)
    try:
      for tag, value, step in values:
        writer.add_scalar(tag, value, step)
      writer.add_text("config", f"```\n{config}\n```", 0)
    finally:
      writer.close()
  if wandb_project:
    import wandb
    run = wandb.init(project=wandb_project, name=run_name or None, config=config)
    try:
      for tag, value, step in values:
        run.log({tag: value, f"{tag.rsplit('/', 1)[0]}/step": step})
    finally:
      run.finish()
