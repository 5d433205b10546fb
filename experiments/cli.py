"""What every experiments CLI shares: one flag set, its parsing, and the one main().

The flags (`--config`, one `--<method>.<hparam>` config dict per registered method, the
data, split, model, seed, device and run-directory flags) are defined here once; each
entry point (`experiments.unlearn`, `.evaluate`, `.tune`, `.requests`, `.klom_curve`)
imports this module and adds only its own. `run(job)` is the one main: it refuses stray
arguments, builds the config from the flags (`build_config`), starts
`jax.distributed` when asked, calls `job(cfg) -> text` and prints the text; a
`setup.UsageError` (a user mistake: its message names the flag and what is allowed)
becomes one line on stderr and exit status 2, before anything is written. An OS error (a
read-only or full disk, a permission) is one line and exit status 1; Ctrl-C is one line
saying that the same command resumes, and exit status 130. Either way no half-written run
directory is left (`setup.staged_workdir`).
"""

import importlib.util
import os
import sys
import time
from pathlib import Path
from collections.abc import Callable

import jax
from absl import app, flags
from ml_collections import config_dict, config_flags

from unlearn_jax import methods as methods_lib
from . import setup
from unlearn_jax import parallel

_CONFIGS = Path(__file__).resolve().parent / "configs"
_DEFAULT_CONFIG = str(_CONFIGS / "default.py")


def config_by_name(argv: list) -> list:
  """`argv` with `--config=NAME[:ARG]` (a shipped config's name, no `.py`, no folder)
  replaced by that file's path, so `unlearn-jax run --config=cifar10_memorise` works from
  an installed wheel as `--config=experiments/configs/cifar10_memorise.py` does from a
  checkout. An unknown name is one line listing the shipped ones."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(out):
      value = out[i + 1]
    else:
      continue
    name, sep, extra = value.partition(":")
    if name.endswith(".py") or "/" in name or os.sep in name or not name:
      continue
    shipped = sorted(p.stem for p in _CONFIGS.glob("*.py") if p.stem != "__init__")
    if name not in shipped:
      print(f"error: --config={value}: no such shipped config; allowed: {', '.join(shipped)} "
            "(or a path to a .py config file)", file=sys.stderr)
      sys.exit(2)
    path = str(_CONFIGS / f"{name}.py") + sep + extra
    if arg == "--config":
      out[i + 1] = path
    else:
      out[i] = f"--config={path}"
  return out


# ml_collections reads `--config` and its `--config.x` overrides from sys.argv while the
# flags are defined (below): a config's name becomes its path first.
sys.argv = config_by_name(sys.argv)


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
flags.DEFINE_string("dataset", None, "digits | mnist1d | image_folder:PATH | cifar10 | cifar100 | "
                    "mnist | fashion_mnist | svhn_cropped")
flags.DEFINE_string("model", None, "mlp | cnn | resnet18 | resnet9 | vit (default: mlp:64-64 "
                    "on mnist1d, mlp for 8x8, else cnn)")
flags.DEFINE_string("scenario", None, "random | class | subclass")
flags.DEFINE_float("forget_fraction", None, "random scenario: fraction of train to forget")
flags.DEFINE_string("forget_classes", None, "class/subclass scenarios: comma list of ids")
flags.DEFINE_string("methods", None, "comma list of methods (default: every registered)")
flags.DEFINE_integer("seeds", None, "number of seeds (vmapped where possible)")
flags.DEFINE_integer("train_seeds", None, "models trained per population (the same as --seeds)")
flags.DEFINE_integer("unlearn_seeds", None, "unlearning keys per trained model: each method runs "
                     "on every (trained model x unlearning seed) pair as one program")
flags.DEFINE_integer("seed", None, "first seed")
flags.DEFINE_integer("train_subset", None, "stratified subset of train (-1 = the dataset's default: "
                     "1,000 for mnist1d, else all; 0 = all)")
flags.DEFINE_integer("test_subset", None, "stratified subset of test (0 = all)")
flags.DEFINE_string("data_dir", None, "tfds data_dir")
flags.DEFINE_string("seed_loop", None, "auto | vmap | sequential: seeds in one vmapped program "
                    "or one compiled program called seed after seed (auto: sequential for "
                    "conv models on CPU, where vmapping does not pay)")
flags.DEFINE_string("conv", None, "auto | xla | patches | canonical: the library models' "
                    "convolution (auto: on CPU canonical, XLA's convolution with its gradient "
                    "as canonical convolutions, patches under 4x4; xla elsewhere)")
flags.DEFINE_string("train_program", None, "auto | LOOP[:CONV[:STEPS]] (LOOP scan | unrolled, "
                    "CONV auto | xla | patches | canonical): how original/retrain epochs are "
                    "compiled (auto: the fastest measured on this machine by experiments.benchmark "
                    "--program_table=machine, else scan; unlearn_jax.train_programs)")
flags.DEFINE_integer("mesh_seeds", None, "devices along the mesh's seeds axis (vmapped seeds)")
flags.DEFINE_integer("mesh_data", None, "devices along the mesh's data axis (0 = the rest)")
flags.DEFINE_bool("distributed", None, "call jax.distributed.initialize() first: one process "
                  "of a multi-process job (the cluster is detected: SLURM, Open MPI, TPU)")
flags.DEFINE_string("coordinator_address", None, "multi-process job without a detected "
                    "cluster: host:port of process 0's coordinator (implies --distributed)")
flags.DEFINE_integer("num_processes", None, "multi-process job: the number of processes")
flags.DEFINE_integer("process_id", None, "multi-process job: this process's index, 0..N-1")
flags.DEFINE_bool("stream", None, "train original/retrain from host memory batch by batch "
                  "(the train set is not copied to the device; seeds in sequence)")
flags.DEFINE_string("workdir", None, "run directory (default runs/<dataset>_<scenario>_<time>)")
flags.DEFINE_bool("overwrite", False, "replace the files of an existing --workdir")
flags.DEFINE_string("hparams", None, "a tuned.json from experiments.tune: its chosen "
                    "hyperparameters replace the defaults (an explicit --<method>.<hparam> "
                    "still wins)")
flags.DEFINE_bool("resume", True, "continue a killed run from its checkpoints in "
                  "<workdir parent>/.<workdir name>.resume (--noresume: start over)")
flags.DEFINE_string("tensorboard_dir", None, "also write TensorBoard event files of the run's "
                    "metrics here (needs tensorboardX: the [logging] extra)")
flags.DEFINE_string("wandb_project", None, "also log the run's metrics to this Weights & "
                    "Biases project (needs wandb)")
_OVERRIDES = ("dataset", "model", "scenario", "forget_fraction", "forget_classes", "methods",
              "seeds", "unlearn_seeds", "seed", "train_subset", "test_subset", "data_dir",
              "seed_loop", "conv", "train_program", "mesh_seeds",
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
  if cfg.get("plots") and importlib.util.find_spec("matplotlib") is None:
    # A core install (`pip install unlearn_jax`) has no matplotlib: the run's tables and
    # CSVs are complete without the figures.
    print("note: plots are off: matplotlib is not installed (pip install "
          "'unlearn_jax[plots]')", file=sys.stderr)
    cfg.plots = False
  return cfg


def with_tuned(hparams: dict, path: str) -> dict:
  """The flags' hyperparameters with a tuned.json's choices in place of the defaults; a
  value given explicitly on the command line (different from the default) is kept."""
  from . import tuning_run
  out = {m: dict(v) for m, v in hparams.items()}
  for m, chosen in tuning_run.load_tuned(path).items():
    defaults = methods_lib.get_method(m).defaults
    for k, v in chosen.items():
      if k in defaults and out[m].get(k) == defaults[k]:
        out[m][k] = v
  return out


def default_workdir(cfg) -> str:
  """runs/<dataset>_<scenario>_<time>; in a multi-process job process 0's time (every
  process names the same directory)."""
  tag = cfg.dataset.replace("image_folder:", "folder-").replace("/", "_").replace(".", "")[-40:]
  stamp = time.localtime(parallel.from_process_0(int(time.time())))
  return f"runs/{tag}_{cfg.scenario}_{time.strftime('%Y%m%d-%H%M%S', stamp)}"


def method_hparams() -> dict:
  """{method: its hyperparameters from the --<method>.<hparam> flags}, with a
  --hparams=tuned.json's choices in place of the defaults where given."""
  hparams = {name: flag.value.to_dict() for name, flag in _METHOD_FLAGS.items()}
  return with_tuned(hparams, flags.FLAGS.hparams) if flags.FLAGS.hparams else hparams


def workdir(cfg, prefix: str = "") -> str:
  """--workdir, or a new runs/<prefix><dataset>_<scenario>_<time> (runs/ created)."""
  if flags.FLAGS.workdir:
    return flags.FLAGS.workdir
  Path("runs").mkdir(exist_ok=True)
  return default_workdir(cfg).replace("runs/", f"runs/{prefix}", 1)


def start_processes(cfg) -> None:
  """`jax.distributed` when asked (`--distributed`, or `--coordinator_address` with
  `--num_processes` and `--process_id`), then: every process must have been given the same
  flags (UsageError naming the first that differs); processes other than 0 print nothing
  (process 0 reports; every process computes)."""
  F = flags.FLAGS
  explicit = [F.coordinator_address, F.num_processes, F.process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise setup.UsageError("--coordinator_address, --num_processes and --process_id go "
                           "together (or pass --distributed alone to detect the cluster)")
  if not (cfg.distributed or F.coordinator_address):
    return
  parallel.initialize_distributed(F.coordinator_address, F.num_processes, F.process_id,
                                  int(cfg.get("heartbeat_seconds", 100)))
  given = [a for a in sys.argv[1:] if not a.lstrip("-").startswith("process_id")]
  other = parallel.same_on_every_process(" ".join(given))
  if other is not None:
    raise setup.UsageError(f"process {other} was started with other flags than process 0 "
                           f"({' '.join(given)}); start every process with the same command "
                           "(only --process_id differs)")
  if not parallel.is_writer():
    sys.stdout = open(os.devnull, "w")


def lost_peer(error: Exception) -> bool:
  """Whether `error` is a collective failing because another process of the job died."""
  text = f"{type(error).__name__}: {error}".lower()
  return any(k in text for k in ("gloo", "connection", "heartbeat", "peer", "unavailable",
                                 "barrier", "deadline", "coordination", "socket"))


def run(job: Callable) -> None:
  """The one main() of the experiments CLIs (module docstring)."""
  def main(argv):
    setup.begin_cli(argv)
    cfg = build_config()
    try:
      start_processes(cfg)
      text = job(cfg)
    except setup.UsageError as e:
      print(setup.error_line(e), file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print(setup.INTERRUPTED_LINE, file=sys.stderr)
      sys.exit(130)
    except OSError as e:     # the work directory or the cache: read-only, full, no permission
      print(setup.os_error_line(e), file=sys.stderr)
      sys.exit(1)
    except Exception as e:  # noqa: BLE001  a lost peer surfaces as a runtime error
      if jax.process_count() == 1 or not lost_peer(e):
        raise
      print(f"error: process {jax.process_index()} of {jax.process_count()} lost the others "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); nothing was "
            "written to the run directory; rerun the same command on every process to "
            "resume", file=sys.stderr)
      os._exit(1)    # JAX's shutdown would wait for the lost process
    print(text)

  app.run(main, flags_parser=parse_flags)
