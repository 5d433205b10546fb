r"""One command from data to a verdict: train, retrain, unlearn, evaluate, report.

    python -m experiments.unlearn                       # digits, 10%% random, all methods
    python -m experiments.unlearn --scenario=class --forget_classes=3 --methods=finetune
    python -m experiments.unlearn --finetune.lr=0.05 --seeds=5 --workdir=runs/ft
    python -m experiments.unlearn --hparams=runs/tune_x/tuned.json   # experiments.tune's choice

Writes into --workdir (default runs/<dataset>_<scenario>_<time>): results.csv,
results.json, summary.md, splits.npz/json, plots/, checkpoints/. A run is staged in a
hidden sibling directory and moved into place only when complete. Train states (every
`--config.checkpoint_every` epochs) and finished methods are checkpointed in
`.<workdir name>.resume/` beside it: a killed run, restarted with the same command,
continues from there and ends with the weights of an uninterrupted run.
"""

import shutil
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_dict, config_flags

from unlearn_jax import methods as methods_lib
from experiments import report, runner, setup
from unlearn_jax import parallel

_DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.py")


def _bad_dotted_flag(error: Exception) -> None:
  """ml_collections parses `--x.y=v` overrides while the flags are *defined*; an unknown
  or mistyped field raises there. Name the flag and what is allowed, then exit 2."""
  for arg in sys.argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    head, _, field = name.partition(".")
    if not field:
      continue
    if head in methods_lib.list_methods():
      defaults = methods_lib.get_method(head).defaults
      if field not in defaults:
        print(f"error: --{name} is not a hyperparameter of {head}; allowed: "
              f"{', '.join(sorted(defaults))}", file=sys.stderr)
        sys.exit(2)
    if head == "config":
      hint = " ".join(str(error.args[0] if error.args else error)
                      .replace("\\'", "").replace("'", "").replace("\\n", " ").split())
      print(f"error: --{name} cannot be set ({hint}); the fields are in "
            "experiments/configs/default.py", file=sys.stderr)
      sys.exit(2)
  print(f"error: could not parse the flags: {type(error).__name__}: {error}", file=sys.stderr)
  sys.exit(2)


try:
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                            "ml_collections config file.", lock_config=True)
  # One config-dict flag per method: --finetune.lr=0.05, --random_label.variant=hybrid, ...
  _METHOD_FLAGS = {
      name: config_flags.DEFINE_config_dict(
          name, config_dict.ConfigDict(methods_lib.get_method(name).defaults),
          f"hyperparameters of {name}")
      for name in methods_lib.list_methods()
  }
except (AttributeError, KeyError, TypeError, ValueError) as e:
  _bad_dotted_flag(e)

# Top-level flags override the config file's fields when given.
flags.DEFINE_string("dataset", None, "digits | image_folder:PATH | cifar10 | cifar100 | "
                    "mnist | fashion_mnist | svhn_cropped")
flags.DEFINE_string("model", None, "mlp | cnn | resnet18 (default: mlp for 8x8, else cnn)")
flags.DEFINE_string("scenario", None, "random | class | subclass")
flags.DEFINE_float("forget_fraction", None, "random scenario: fraction of train to forget")
flags.DEFINE_string("forget_classes", None, "class/subclass scenarios: comma list of ids")
flags.DEFINE_string("methods", None, "comma list of methods (default: every registered)")
flags.DEFINE_integer("seeds", None, "number of seeds (vmapped where possible)")
flags.DEFINE_integer("train_seeds", None, "models trained per population (the same as --seeds)")
flags.DEFINE_integer("unlearn_seeds", None, "unlearning keys per trained model: each method runs "
                     "on every (trained model x unlearning seed) pair as one program")
flags.DEFINE_integer("seed", None, "first seed")
flags.DEFINE_integer("train_subset", None, "stratified subset of train (0 = all)")
flags.DEFINE_integer("test_subset", None, "stratified subset of test (0 = all)")
flags.DEFINE_string("data_dir", None, "tfds data_dir")
flags.DEFINE_string("seed_loop", None, "auto | vmap | sequential: seeds in one vmapped program "
                    "or one compiled program called seed after seed (auto: sequential for "
                    "conv models on CPU, where vmapping does not pay)")
flags.DEFINE_string("conv", None, "auto | xla | patches: the library models' convolution "
                    "(auto: patches + matmul on CPU, XLA's elsewhere)")
flags.DEFINE_integer("mesh_seeds", None, "devices along the mesh's seeds axis (vmapped seeds)")
flags.DEFINE_integer("mesh_data", None, "devices along the mesh's data axis (0 = the rest)")
flags.DEFINE_bool("distributed", None, "call jax.distributed.initialize() (multi-host)")
flags.DEFINE_bool("stream", None, "train original/retrain from host memory batch by batch "
                  "(the train set is not copied to the device; seeds in sequence)")
flags.DEFINE_string("workdir", None, "run directory (default runs/<dataset>_<scenario>_<time>)")
flags.DEFINE_bool("overwrite", False, "replace the files of an existing --workdir")
flags.DEFINE_string("hparams", None, "a tuned.json from experiments.tune: its chosen "
                    "hyperparameters replace the defaults (an explicit --<method>.<hparam> "
                    "still wins)")
flags.DEFINE_bool("resume", True, "continue a killed run from its checkpoints in "
                  "<workdir parent>/.<workdir name>.resume (--noresume: start over)")
_OVERRIDES = ("dataset", "model", "scenario", "forget_fraction", "forget_classes", "methods",
              "seeds", "unlearn_seeds", "seed", "train_subset", "test_subset", "data_dir", "seed_loop", "conv", "mesh_seeds",
              "mesh_data", "distributed", "stream")


def parse_flags(argv):
  """absl's parser, with a parse failure turned into one line naming the flag."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {setup.flag_error_line(e)}", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _bad_dotted_flag(e)
  sys.exit(2)


def build_config():
  cfg = config_dict.ConfigDict(_CONFIG.value.to_dict())
  for name in _OVERRIDES:
    value = flags.FLAGS[name].value
    if value is not None:
      cfg[name] = value
  train_seeds, seeds = flags.FLAGS.train_seeds, flags.FLAGS.seeds
  if train_seeds is not None:
    if seeds is not None and seeds != train_seeds:
      print(f"error: --train_seeds={train_seeds} and --seeds={seeds} disagree: they are the "
            "same setting; pass one", file=sys.stderr)
      sys.exit(2)
    cfg.seeds = train_seeds
  return cfg


def with_tuned(hparams: dict, path: str) -> dict:
  """The flags' hyperparameters with a tuned.json's choices in place of the defaults; a
  value given explicitly on the command line (different from the default) is kept."""
  from experiments import tuning_run
  out = {m: dict(v) for m, v in hparams.items()}
  for m, chosen in tuning_run.load_tuned(path).items():
    defaults = methods_lib.get_method(m).defaults
    for k, v in chosen.items():
      if k in defaults and out[m].get(k) == defaults[k]:
        out[m][k] = v
  return out


def default_workdir(cfg) -> str:
  tag = cfg.dataset.replace("image_folder:", "folder-").replace("/", "_").replace(".", "")[-40:]
  return f"runs/{tag}_{cfg.scenario}_{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv):
  setup.begin_cli(argv)
  cfg = build_config()
  if cfg.distributed:
    parallel.initialize_distributed()
  workdir = flags.FLAGS.workdir or default_workdir(cfg)
  hparams = {name: flag.value.to_dict() for name, flag in _METHOD_FLAGS.items()}
  log = lambda s: print(s, flush=True)
  try:
    if flags.FLAGS.hparams:
      hparams = with_tuned(hparams, flags.FLAGS.hparams)
    st = runner.validate_run(cfg, hparams, flags.FLAGS.workdir, flags.FLAGS.overwrite, log)
    if not flags.FLAGS.workdir:
      Path("runs").mkdir(exist_ok=True)
    resume_dir = setup.resume_dir_for(workdir)
    with setup.staged_workdir(workdir, flags.FLAGS.overwrite) as (final, staging):
      if not flags.FLAGS.resume and resume_dir.exists():
        shutil.rmtree(resume_dir)    # under the workdir's lock: no other run is using it
      result = runner.run(cfg, hparams, log=log, st=st,
                          resume_dir=resume_dir if cfg.checkpoint_every > 0 else None)
      md = report.write_run(staging, result, cfg.to_dict(), cfg.save_checkpoints, cfg.plots)
    shutil.rmtree(resume_dir, ignore_errors=True)   # the run is complete: nothing to resume
  except setup.UsageError as e:
    print(setup.error_line(e), file=sys.stderr)
    sys.exit(2)
  print("\n" + md)
  print(f"wall time {result.info['wall_seconds']:.1f}s; run directory: {final}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
