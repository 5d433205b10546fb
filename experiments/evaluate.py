r"""Proof of forgetting: N unlearned vs N retrained models per method, every attack.

    python -m experiments.evaluate                                  # digits, N=16, all methods
    python -m experiments.evaluate --num_models=64 --methods=finetune,neggrad,random_label
    python -m experiments.evaluate --dataset=image_folder:../shared/data/cifar10-jpeg.tar.gz \
        --train_subset=5000 --num_models=8 --chunk=4

Trains --num_models originals and --num_models retrained models (vmapped, in chunks of
--chunk when memory asks), applies each method to every original, and writes into
--workdir: evaluation.csv (one row per method), report.md, evaluation.json,
epsilons.npz and plots/ (per-example ε histograms, U/R distributions, method × metric
chart). The populations are checkpointed under --populations_dir/<fingerprint> and
reused by any later evaluation with the same data, model, split, recipe and N.
"""

import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_dict, config_flags

from experiments import population, setup
from experiments import population_report

_DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                          "ml_collections config file.", lock_config=True)
flags.DEFINE_string("dataset", None, "digits | image_folder:PATH | cifar10 | ...")
flags.DEFINE_string("model", None, "mlp | cnn | resnet18 (default: mlp for 8x8, else cnn)")
flags.DEFINE_string("scenario", None, "random | class | subclass")
flags.DEFINE_float("forget_fraction", None, "random scenario: fraction of train to forget")
flags.DEFINE_string("forget_classes", None, "class/subclass scenarios: comma list of ids")
flags.DEFINE_string("methods", None, "comma list (default: every method meant for the scenario)")
flags.DEFINE_integer("num_models", 16, "models per population (originals, retrained, unlearned)")
flags.DEFINE_integer("chunk", 0, "models per vmapped chunk (0 = all at once)")
flags.DEFINE_integer("mia_models", 16, "models per population that fit SalUn's SVC attack")
flags.DEFINE_integer("seed", None, "first seed")
flags.DEFINE_integer("train_subset", None, "stratified subset of train (0 = all)")
flags.DEFINE_integer("test_subset", None, "stratified subset of test (0 = all)")
flags.DEFINE_string("seed_loop", None, "auto | vmap | sequential (see --helpfull of "
                    "experiments.unlearn)")
flags.DEFINE_string("conv", None, "auto | xla | patches: the library models' convolution")
flags.DEFINE_string("workdir", None, "output directory (default runs/eval_<dataset>_<time>)")
flags.DEFINE_string("populations_dir", "runs/populations",
                    "where trained populations are checkpointed and reused ('' = never)")
flags.DEFINE_bool("overwrite", False, "replace the files of an existing --workdir")
flags.DEFINE_integer("mesh_data", None, "devices along the mesh's data axis (0 = all)")
flags.DEFINE_bool("distributed", None, "call jax.distributed.initialize() (multi-host)")
_OVERRIDES = ("dataset", "model", "scenario", "forget_fraction", "forget_classes", "methods",
              "seed", "train_subset", "test_subset", "seed_loop", "conv", "mesh_data", "distributed")


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {setup.flag_error_line(e)}", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"error: could not parse the flags: {e}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  setup.begin_cli(argv)
  F = flags.FLAGS
  cfg = config_dict.ConfigDict(_CONFIG.value.to_dict())
  for name in _OVERRIDES:
    if F[name].value is not None:
      cfg[name] = F[name].value
  if cfg.distributed:
    from unlearn_jax import parallel
    parallel.initialize_distributed()
  tag = cfg.dataset.replace("image_folder:", "folder-").replace("/", "_").replace(".", "")[-40:]
  workdir = F.workdir or f"runs/eval_{tag}_{cfg.scenario}_{time.strftime('%Y%m%d-%H%M%S')}"
  try:
    setup.validate(cfg)
    if not F.workdir:
      Path("runs").mkdir(exist_ok=True)
    with setup.staged_workdir(workdir, F.overwrite) as (final, staging):
      ev = population.run(cfg, {}, F.num_models, F.chunk,
                          Path(F.populations_dir) if F.populations_dir else None,
                          log=lambda s: print(s, flush=True), mia_models=F.mia_models)
      scen = (f"class {cfg.forget_classes}" if cfg.scenario == "class"
              else f"{cfg.scenario} {100 * cfg.forget_fraction:g}%")
      md = population_report.write_evaluation(staging, ev, cfg.to_dict() | {
          "num_models": F.num_models, "chunk": F.chunk},
          f"{cfg.dataset} · {ev.info['model']} · {scen}")
  except setup.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n" + md)
  print(f"run directory: {final}")

if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
