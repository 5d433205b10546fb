"""`unlearn-jax run|evaluate|tune|requests`: the installed console script.

The wheel ships this application as the package `unlearn_jax_experiments` (in the checkout
it is `experiments/`, run as `python -m experiments.unlearn`), so an installed copy claims
no generic top-level name. Each subcommand is one entry point with all of its flags:

    unlearn-jax run        experiments.unlearn   (the main job: train, unlearn, report)
    unlearn-jax evaluate   experiments.evaluate  (populations: KLOM, U-LiRA, per-example ε)
    unlearn-jax tune       experiments.tune      (hyperparameter search, tuned.json)
    unlearn-jax requests   experiments.requests  (a stream of deletion requests, SISA)

`--config=NAME` (or a path whose file name is one of the shipped configs, as the docs write
`--config=experiments/configs/cifar10_cnn.py`) selects a config shipped with the package
when no such file exists where the command runs.
"""

import importlib
import sys
from pathlib import Path

COMMANDS = {"run": "unlearn", "evaluate": "evaluate", "tune": "tune", "requests": "requests"}
CONFIGS = Path(__file__).resolve().parent / "configs"

USAGE = ("usage: unlearn-jax {run|evaluate|tune|requests} [--flag=value ...]\n"
         "  run       train, unlearn with --methods, evaluate, write the run directory\n"
         "  evaluate  populations of models: KLOM, U-LiRA, per-example epsilon\n"
         "  tune      search each method's hyperparameters, write tuned.json\n"
         "  requests  a stream of deletion requests (SISA and the other methods)\n"
         "`unlearn-jax COMMAND --help` shows its flags and the config fields people change most.")


def shipped_config(value: str) -> str:
  """The `--config` value to hand to ml_collections: unchanged when it names an existing
  file (or carries a `:` override), else the shipped `configs/<name>.py` it names."""
  path, sep, rest = value.partition(":")
  if Path(path).is_file():
    return value
  name = Path(path).name
  name = name if name.endswith(".py") else f"{name}.py"
  candidate = CONFIGS / name
  return f"{candidate}{sep}{rest}" if candidate.is_file() else value


def _with_shipped_configs(args: list) -> list:
  out = []
  for a in args:
    if a.startswith("--config=") and not a.startswith("--config."):
      a = "--config=" + shipped_config(a[len("--config="):])
    out.append(a)
  return out


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] not in COMMANDS:
    print(f"error: unknown command {argv[1]!r}; allowed: {', '.join(COMMANDS)}\n{USAGE}",
          file=sys.stderr)
    sys.exit(2)
  module = importlib.import_module(f"{__package__}.{COMMANDS[argv[1]]}")
  from . import cli   # after the entry module: it defines that command's own flags
  sys.argv = [f"unlearn-jax {argv[1]}", *_with_shipped_configs(argv[2:])]
  cli.run(module.job)


if __name__ == "__main__":
  main()
