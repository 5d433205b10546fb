"""What every experiments CLI shares: `--config` and its overrides, `--help`, the one main().

The settings are the config (a shipped config's name or a `.py` file, `--config=NAME`,
and `--config.<field>=value` for any field, the methods' hyperparameters included:
`--config.methods.scrub.lr=0.01`). Besides it an entry point takes `--workdir`,
`--overwrite` and `--noresume`, and two fields by a shorter name: `--seeds` (the field
`seeds`) and `--methods=a,b` (the methods to run: the field `methods` keeps a and b;
for `experiments.requests`, the field `requests.methods`). `--help` prints one screen and
exits 0; an unknown flag names the nearest flag or config field.

`run(job)` is the one main: it refuses stray arguments, builds the config
(`build_config`), starts `jax.distributed` when asked, calls `job(cfg) -> text` and
prints the text; a `usage.UsageError` (a user mistake: its message names the flag and
what is allowed) becomes one line on stderr and exit status 2, before anything is
written. An OS error (a read-only or full disk, a permission) is one line and exit status
1; Ctrl-C is one line saying that the same command resumes, and exit status 130. Either
way no half-written run directory is left (`rundir.staged_workdir`).
"""

import difflib
import importlib.util
import inspect
import os
import sys
import time
from pathlib import Path
from collections.abc import Callable

import jax
from absl import app, flags
from ml_collections import config_dict, config_flags

from unlearn_jax import methods as methods_lib
from unlearn_jax import parallel
from .pipeline import usage

_CONFIGS = Path(__file__).resolve().parent / "configs"
_NOT_CONFIGS = ("__init__", "recipes")
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort")


def shipped_configs() -> list:
  return sorted(p.stem for p in _CONFIGS.glob("*.py") if p.stem not in _NOT_CONFIGS)


def config_by_name(argv: list) -> list:
  """`argv` with `--config=NAME[:ARG]` (a shipped config's name, no `.py`, no folder)
  replaced by that file's path, so `--config=cifar10_memorise` works from an installed
  wheel and a checkout alike. An unknown name is one line listing the shipped ones."""
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
    if name not in shipped_configs():
      print(f"error: --config={value}: no such shipped config; allowed: "
            f"{', '.join(shipped_configs())} (or a path to a .py config file)", file=sys.stderr)
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


def load_config(argv: list):
  """The config file `argv` names (`--config=PATH[:ARG]`, default `configs/default.py`),
  loaded without its overrides: what `--help` and the nearest-name hints read."""
  value = next((a[len("--config="):] for a in config_by_name(argv)
                if a.startswith("--config=")), str(_CONFIGS / "default.py"))
  path, _, arg = value.partition(":")
  spec = importlib.util.spec_from_file_location("help_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def field_paths(cfg, prefix: str = "") -> list:
  """Every leaf field of a ConfigDict as a dotted path, in the config's order."""
  out = []
  for key in cfg.keys():
    value = cfg[key]
    path = f"{prefix}{key}"
    out += field_paths(value, path + ".") if isinstance(value, config_dict.ConfigDict) \
        else [path]
  return out


# Flags of earlier versions whose field has another name.
# (A flag whose field keeps its name, `--budget` → `tune.budget`, is found by that name.)
RENAMED = {"train_seeds": "--seeds", "hparams": "--config.tuned_hparams",
           "requests": "--config.requests.count", "request_size": "--config.requests.size",
           "request_kind": "--config.requests.kind", "populations_dir": "--config.references_dir",
           "reuse_populations": "--config.references_dir",
           # config fields that moved: the evaluation's cache is every stage's now
           "config.evaluate.populations_dir": "--config.references_dir",
           "config.evaluate.reuse_populations": "--config.references_dir"}


def nearest(name: str, argv: list) -> str | None:
  """The flag or `--config.<field>` nearest to an unknown `--name`: a renamed flag, the
  field of that name (outside `methods` first), a method's hyperparameter
  (`--scrub.lr` → `--config.methods.scrub.lr`), else the closest spelling."""
  if name in RENAMED:
    return RENAMED[name]
  try:
    paths = field_paths(load_config(argv))
  except Exception:  # noqa: BLE001  a broken config file reports itself later
    paths = []
  if name.startswith("config."):
    close = difflib.get_close_matches(name[len("config."):], paths, 1, 0.6)
    return f"--config.{close[0]}" if close else None
  head, _, rest = name.partition(".")
  if rest and head in methods_lib.list_methods():
    return f"--config.methods.{name}"
  same = sorted((p for p in paths if p.split(".")[-1] == name),
                key=lambda p: (p.startswith("methods."), p.count(".")))
  if same:
    return f"--config.{same[0]}"
  names = [f.name for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__])]
  close = difflib.get_close_matches(name, names + paths, 1, 0.75)
  if not close:
    return None
  return f"--{close[0]}" if close[0] in names else f"--config.{close[0]}"


def _unknown_flag(name: str) -> None:
  hint = nearest(name, sys.argv)
  print(f"error: unknown flag --{name}" + (f"; did you mean {hint}?" if hint else
        "; see --help"), file=sys.stderr)
  sys.exit(2)


def _bad_dotted_flag(error: Exception) -> None:
  """ml_collections parses `--config.x=v` overrides while the flags are *defined*; an
  unknown field or a value of the wrong type raises there: one line, exit 2."""
  for arg in sys.argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if not name.startswith("config."):
      continue
    try:
      paths = field_paths(load_config(sys.argv))
    except Exception:  # noqa: BLE001
      paths = []
    if name[len("config."):] not in paths:
      hint = nearest(name, sys.argv)
      print(f"error: --{name} is not a config field" +
            (f"; did you mean {hint}?" if hint else "; see --help"), file=sys.stderr)
      sys.exit(2)
  hint = " ".join(str(error.args[0] if error.args else error)
                  .replace("\\'", "").replace("'", "").replace("\\n", " ").split())
  print(f"error: could not apply the config overrides: {hint}", file=sys.stderr)
  sys.exit(2)


try:
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(_CONFIGS / "default.py"), "a shipped config's name or a .py config file; "
      "--config.<field>=value overrides a field", lock_config=True)
except (AttributeError, KeyError, TypeError, ValueError) as e:
  _bad_dotted_flag(e)

flags.DEFINE_string("workdir", None, "run directory (default runs/<dataset>_<scenario>_<time>)")
flags.DEFINE_bool("overwrite", False, "replace the files of an existing --workdir")
flags.DEFINE_bool("resume", True, "continue a killed run from its checkpoints in "
                  "<workdir parent>/.<workdir name>.resume (--noresume: start over)")
flags.DEFINE_string("methods", None, "the config field `methods` (requests: "
                    "`requests.methods`): a comma list of the methods to run")
flags.DEFINE_integer("seeds", None, "the config field `seeds`: models trained per run")


def parse_flags(argv):
  """absl's parser, with a parse failure turned into one line naming the flag (an unknown
  one with its nearest flag or config field)."""
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    _unknown_flag(e.flagname)
  except flags.Error as e:
    print(f"error: {usage.flag_error_line(e)}", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _bad_dotted_flag(e)
  sys.exit(2)


def chosen_methods(cfg, text: str, field: str) -> None:
  """`--methods=a,b`: the field `methods` keeps a and b (a registered method the config
  does not list joins at its defaults), or, for requests, `requests.methods` is a,b."""
  names = [m.strip() for m in text.split(",") if m.strip()]
  if field == "requests.methods":
    cfg.requests.methods = ",".join(names)
    return
  # A method the config lists keeps its hyperparameters, another joins at its defaults; a
  # name the registry lacks is refused with the rest (`settings.resolve_methods`).
  known = methods_lib.list_methods()
  given = cfg.methods.to_dict()
  cfg.methods = config_dict.ConfigDict(
      {m: given.get(m, dict(methods_lib.get_method(m).defaults) if m in known else {})
       for m in dict.fromkeys(names)})


def build_config(methods_field: str = "methods"):
  """The config file with its `--config.*` overrides, then `--seeds` and `--methods`."""
  cfg = config_dict.ConfigDict(_CONFIG.value.to_dict())
  if flags.FLAGS.seeds is not None:
    cfg.seeds = flags.FLAGS.seeds
  if flags.FLAGS.methods is not None:
    chosen_methods(cfg, flags.FLAGS.methods, methods_field)
  if cfg.get("plots") and importlib.util.find_spec("matplotlib") is None:
    # A core install (`pip install unlearn_jax`) has no matplotlib: the run's tables and
    # CSVs are complete without the figures.
    print("note: plots are off: matplotlib is not installed (pip install "
          "'unlearn_jax[plots]')", file=sys.stderr)
    cfg.plots = False
  return cfg


def with_tuned(hparams: dict, path: str) -> dict:
  """The hyperparameters with a tuned.json's choices in place of the registry's defaults;
  a value the config or the command line changed from the default is kept."""
  from .pipeline import tuning as tuning_run
  out = {m: dict(v) for m, v in hparams.items()}
  for m, chosen in tuning_run.load_tuned(path).items():
    if m not in out:
      continue
    defaults = methods_lib.get_method(m).defaults
    for k, v in chosen.items():
      if k in defaults and out[m].get(k) == defaults[k]:
        out[m][k] = v
  return out


def method_hparams(cfg) -> dict:
  """{method: its hyperparameters}: the config's `methods`, with a `tuned_hparams` file's
  choices in place of the defaults where given."""
  hparams = {m: dict(v) for m, v in cfg.methods.to_dict().items()}
  return with_tuned(hparams, cfg.tuned_hparams) if cfg.get("tuned_hparams") else hparams


def default_workdir(cfg) -> str:
  """runs/<dataset>_<scenario>_<time>; in a multi-process job process 0's time (every
  process names the same directory)."""
  tag = cfg.dataset.replace("image_folder:", "folder-").replace("/", "_").replace(".", "")[-40:]
  stamp = time.localtime(parallel.from_process_0(int(time.time())))
  return f"runs/{tag}_{cfg.scenario}_{time.strftime('%Y%m%d-%H%M%S', stamp)}"


def workdir(cfg, prefix: str = "") -> str:
  """--workdir, or a new runs/<prefix><dataset>_<scenario>_<time> (runs/ created)."""
  if flags.FLAGS.workdir:
    return flags.FLAGS.workdir
  Path("runs").mkdir(exist_ok=True)
  return default_workdir(cfg).replace("runs/", f"runs/{prefix}", 1)


def start_processes(cfg) -> None:
  """`jax.distributed` when asked (`distributed`, or `coordinator_address` with
  `num_processes` and `process_id`), then: every process must have been given the same
  flags (UsageError naming the first that differs); processes other than 0 print nothing
  (process 0 reports; every process computes)."""
  explicit = [cfg.coordinator_address, cfg.num_processes, cfg.process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise usage.UsageError("--config.coordinator_address, --config.num_processes and "
                           "--config.process_id go together (or set --config.distributed="
                           "True alone to detect the cluster)")
  if not (cfg.distributed or cfg.coordinator_address):
    return
  parallel.initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id,
                                  int(cfg.get("heartbeat_seconds", 100)))
  given = [a for a in sys.argv[1:] if not a.lstrip("-").startswith("config.process_id")]
  other = parallel.same_on_every_process(" ".join(given))
  if other is not None:
    raise usage.UsageError(f"process {other} was started with other flags than process 0 "
                           f"({' '.join(given)}); start every process with the same command "
                           "(only --config.process_id differs)")
  if not parallel.is_writer():
    sys.stdout = open(os.devnull, "w")


def lost_peer(error: Exception) -> bool:
  """Whether `error` is a collective failing because another process of the job died."""
  text = f"{type(error).__name__}: {error}".lower()
  return any(k in text for k in ("gloo", "connection", "heartbeat", "peer", "unavailable",
                                 "barrier", "deadline", "coordination", "socket"))


# The fields `--help` shows for every entry point, then each entry point's own.
COMMON_FIELDS = ("dataset", "model", "scenario", "forget_fraction", "forget_classes",
                 "train_subset", "train.epochs", "train.lr", "train.batch_size", "seed_loop",
                 "tuned_hparams")


def help_text(program: str, doc: str, fields: tuple, methods_field: str) -> str:
  """The one screen `--help` prints: what the command does, its flags, the fields people
  change most with their (the chosen config's) defaults, and where the rest are."""
  try:
    cfg = load_config(sys.argv)
  except Exception as e:  # noqa: BLE001  the config file is the user's: say so, still help
    cfg, fields = None, ()
    print(f"note: the config could not be loaded ({type(e).__name__}: {e})", file=sys.stderr)
  what = inspect.cleandoc(doc or "").split("\n\n")[0]
  lines = [f"usage: {program} [--config=NAME|FILE] [--config.<field>=VALUE ...] "
           "[--workdir=DIR] [flags]", "", *what.splitlines(), "", "flags:"]
  for name, text in (("config", "a shipped config (" + ", ".join(shipped_configs()) +
                      ") or a .py file; default: default"),
                     ("config.<field>", "any config field, e.g. --config.train.epochs=20, "
                      "--config.methods.scrub.lr=0.01"),
                     ("workdir", "the run directory (default: runs/<dataset>_<scenario>_"
                      "<time>)"),
                     ("overwrite", "replace the files of an existing --workdir"),
                     ("noresume", "start over instead of resuming a killed run"),
                     ("methods", f"a comma list of methods to run (the field "
                      f"`{methods_field}`)"),
                     ("seeds", "models trained per run (the field `seeds`)")):
    lines.append(f"  --{name:<16} {text}")
  if cfg is not None:
    lines += ["", "config fields people change most (--config.<field>; this config's values):"]
    for path in fields:
      value = cfg
      for part in path.split("."):
        value = value[part]
      shown = f"{len(value)} methods: {', '.join(list(value)[:4])}, ..." if path == "methods" \
          else repr(value)
      lines.append(f"  {path:<26} {shown}")
  lines += ["", "every field, with a comment: experiments/configs/default.py (the shipped "
            "configs change what differs)", "a method's hyperparameters and their bounds: "
            "python -c 'import unlearn_jax as uj; help(uj.scrub)'"]
  return "\n".join(lines)


def run(job: Callable, fields: tuple = (), methods_field: str = "methods") -> None:
  """The one main() of the experiments CLIs (module docstring). `fields`: the entry
  point's own config fields `--help` shows after `COMMON_FIELDS`."""
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    module = sys.modules.get(job.__module__)
    spec = getattr(module, "__spec__", None)
    name = (spec.name if spec is not None else job.__module__).replace(
        "unlearn_jax_experiments", "experiments")
    program = sys.argv[0] if sys.argv[0].startswith("unlearn-jax") else f"python -m {name}"
    print(help_text(program, getattr(module, "__doc__", ""), (methods_field,) +
                    COMMON_FIELDS + tuple(fields), methods_field))
    sys.exit(0)

  def main(argv):
    usage.begin_cli(argv)
    usage.redeliver_lost_interrupts()
    try:
      cfg = build_config(methods_field)
      start_processes(cfg)
      text = job(cfg)
    except usage.UsageError as e:
      print(usage.error_line(e), file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print(usage.INTERRUPTED_LINE, file=sys.stderr)
      sys.exit(130)
    except OSError as e:     # the work directory or the cache: read-only, full, no permission
      print(usage.os_error_line(e), file=sys.stderr)
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
