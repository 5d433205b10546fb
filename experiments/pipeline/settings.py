"""The pipeline's first stage, on the config alone: every check that needs no data
(`validate`), the methods to run and their hyperparameters, the training recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


from unlearn_jax import data as data_lib
from unlearn_jax import methods as methods_lib
from unlearn_jax import models as models_lib
from unlearn_jax import parallel
from unlearn_jax import train as train_lib
from unlearn_jax import train_programs
from .usage import UsageError


REFERENCE_MODELS = ("original", "retrain")


LOOP_CHOICES = ("auto",) + parallel.LOOPS   # --config.seed_loop, --config.tune.search_loop


def recipe_of(cfg) -> train_lib.TrainConfig:
  """The training recipe: the config's `train` fields (every field of `TrainConfig`,
  `experiments/configs/recipes.py`); UsageError naming a field it does not know."""
  given = cfg.train.to_dict()
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  unknown = sorted(set(given) - fields)
  if unknown:
    raise UsageError(f"--config.train.{unknown[0]} is unknown; allowed: {', '.join(sorted(fields))}")
  try:
    return train_lib.TrainConfig(**given)
  except (TypeError, ValueError) as e:
    raise UsageError(f"--config.train: {e}") from e


def parse_classes(text) -> tuple:
  if isinstance(text, (tuple, list)):
    return tuple(int(c) for c in text)
  text = str(text).strip()
  if not text:
    return ()
  try:
    return tuple(int(c) for c in text.split(","))
  except ValueError:
    raise UsageError(f"--config.forget_classes={text!r} must be a comma list of class ids, e.g. 3 or "
                     "3,5") from None


MATCHING_STAGE = "python -m experiments.evaluate"   # the stage that trains oracles


def _without_matching(names: list, log: Callable[[str], None]) -> tuple[list, list]:
  """(`names` less the methods that read `targets`, those methods), with a note saying
  so; a UsageError when nothing else is left (a stage without oracles cannot run them)."""
  matching = [m for m in names if "targets" in methods_lib.get_method(m).reads]
  if not matching:
    return names, []
  rest = [m for m in names if m not in matching]
  if not rest:
    raise UsageError(f"--methods: {', '.join(matching)} match the outputs of models trained "
                     f"without the forget set, which this stage does not train; run "
                     f"{'it' if len(matching) == 1 else 'them'} with {MATCHING_STAGE} (its "
                     "oracle population and attribution scores)")
  log(f"note: skipping {', '.join(matching)}: they match the outputs of models trained "
      f"without the forget set, which {MATCHING_STAGE} trains")
  return rest, matching


def resolve_methods(names, scenario: str, batch_norm: bool | None = None,
                    log: Callable[[str], None] = lambda s: None, *,
                    targets: bool = True) -> tuple:
  """The methods to run, in the registry's order, from the config's `methods` (their
  names). When it lists every registered method (the default), those not meant for
  `scenario` or (when `batch_norm` is known) not runnable on the model are skipped, with a
  note; a method chosen by name that cannot run here is a UsageError naming why.
  `targets=False`: the stage has no oracle population or attribution scores, so the
  methods that read `targets` (oracle_matching, dmm) are skipped with a note (a
  UsageError when they are all that was chosen)."""
  known = methods_lib.list_methods()
  names = list(names)
  for m in names:
    if m in REFERENCE_MODELS:
      raise UsageError(f"--methods: {m!r} is always run as a reference; list unlearning "
                       f"methods only ({', '.join(known)})")
    if m not in known:
      raise UsageError(f"--methods: {m!r} is unknown; allowed: {', '.join(known)}")
  if not names:
    raise UsageError("--methods: no method chosen; allowed: " + ", ".join(known))
  every = set(names) == set(known)
  names, skipped = _without_matching(names, log) if not targets else (names, [])
  if every:
    chosen = []
    for m in known:
      spec = methods_lib.get_method(m)
      if scenario not in spec.scenarios or m in skipped:
        continue
      if batch_norm is False and "batch_norm" in spec.requires:
        log(f"note: skipping {m}: it needs a model with BatchNorm (--config.model=cnn or "
            "resnet18)")
        continue
      chosen.append(m)
    return tuple(chosen)
  for m in names:
    spec = methods_lib.get_method(m)
    if not spec.reads and scenario not in spec.scenarios:
      raise UsageError(f"--methods: {m} is zero-shot and forgets whole classes: it needs "
                       f"--config.scenario=class with --config.forget_classes (got "
                       f"--config.scenario={scenario})")
    if batch_norm is False and "batch_norm" in spec.requires:
      raise UsageError(f"--methods: {m} needs a model with BatchNorm layers; the chosen "
                       f"model has none (use --config.model=cnn or --config.model=resnet18)")
  return tuple(m for m in known if m in names)


def validate(cfg) -> None:
  """Checks everything that needs no data; raises UsageError naming the flag."""
  name = cfg.dataset
  if not (name in data_lib.TFDS_NAMES or name in ("digits", "mnist1d")
          or name.startswith("image_folder:")
          or (":" in name and name.split(":", 1)[0] in data_lib.CIFAR_PYTHON)):
    raise UsageError(f"--config.dataset={name!r} is unknown; allowed: {', '.join(data_lib.DATASET_CHOICES)}")
  if cfg.get("conv", "auto") not in models_lib.CONV_IMPLS:
    raise UsageError(f"--config.conv={cfg.conv!r} is unknown; allowed: {', '.join(models_lib.CONV_IMPLS)}")
  if cfg.get("train_program", "auto") != "auto":
    try:
      train_programs.parse(cfg.train_program)
    except ValueError as e:
      raise UsageError(f"--config.train_program={cfg.train_program!r}: {e}") from e
  if cfg.model.partition(":")[0] not in models_lib.list_models():
    raise UsageError(f"--config.model={cfg.model!r} is unknown; allowed: "
                     f"{', '.join(models_lib.list_models())} (optionally name:W1-W2-...)")
  try:
    models_lib.parse_model_spec(cfg.model)
  except ValueError as e:
    raise UsageError(f"--config.model={cfg.model!r}: {str(e).partition(': ')[2]}") from e
  if cfg.scenario not in data_lib.SCENARIOS:
    raise UsageError(f"--config.scenario={cfg.scenario!r} is unknown; allowed: "
                     f"{', '.join(data_lib.SCENARIOS)}")
  if cfg.scenario == "random" and not 0.0 < float(cfg.forget_fraction) < 1.0:
    raise UsageError(f"--config.forget_fraction={cfg.forget_fraction} must lie strictly between 0 and 1")
  if cfg.seeds < 1:
    raise UsageError(f"--seeds={cfg.seeds} must be at least 1")
  if cfg.get("stream", False) and cfg.get("references_dir"):
    raise UsageError("--config.stream trains the references batch by batch from host memory "
                     "and caches nothing: leave --config.references_dir unset with it")
  if cfg.get("unlearn_seeds", 1) < 1:
    raise UsageError(f"--config.unlearn_seeds={cfg.unlearn_seeds} must be at least 1")
  if cfg.seed_loop not in LOOP_CHOICES:
    raise UsageError(f"--config.seed_loop={cfg.seed_loop!r} is unknown; allowed: "
                     f"{', '.join(LOOP_CHOICES)}")
  for name in ("mesh_seeds", "mesh_data", "train_subset", "test_subset"):
    if cfg.get(name) is not None and cfg.get(name) < 1:
      raise UsageError(f"--config.{name}={cfg.get(name)} must be at least 1 (or None: "
                       f"{'automatic' if name.startswith('mesh') else 'all'})")
  for name in ("checkpoint_every", "method_checkpoint_every", "along_every"):
    if int(cfg.get(name, 0)) < 0:
      raise UsageError(f"--config.{name}={cfg.get(name)} must be >= 0 (0 = off)")
  resolve_methods(list(cfg.methods.keys()), cfg.scenario)
  parse_classes(cfg.forget_classes)


def with_scenario_defaults(name: str, given: dict, scenario: str, model_name: str, log) -> dict:
  """`given` with the values a method's authors set for this scenario and model family in
  place of the registry's defaults (a value that differs from the registry's default was
  chosen by the user and is kept). Today: jit_lipschitz's σ and lr (`JIT_DEFAULTS`)."""
  if name != "jit_lipschitz" or not model_name:
    return given
  from unlearn_jax.methods.lipschitz import jit_lipschitz_defaults
  registry = methods_lib.get_method(name).defaults
  chosen = jit_lipschitz_defaults(model_name, scenario)
  if not chosen:
    return given
  out = dict(given)
  for k, v in chosen.items():
    if out.get(k, registry[k]) == registry[k]:
      out[k] = v
  log(f"note: jit_lipschitz uses its authors' {scenario}-scenario values for this model "
      f"family: sigma {out['sigma']}, lr {out['lr']}")
  return out


def resolve_hparams(method_names, method_hparams: dict, scenario: str, log,
                    model_name: str = "") -> dict:
  """Each method's defaults with the user's overrides, checked by the method itself
  (names, types, ranges, choices); a bad one is a UsageError naming the flag. With
  `model_name`, methods whose authors set values per scenario and model family get them
  (`with_scenario_defaults`)."""
  hparams = {}
  for m in method_names:
    method = methods_lib.get_method(m)
    try:
      given = with_scenario_defaults(m, dict(method_hparams.get(m, {})), scenario,
                                     model_name, log)
      hparams[m] = method.validate(given)
    except methods_lib.HyperparameterError as e:
      raise UsageError(f"--config.methods.{e.method}.{e.name}={e.value!r} {e.reason}") from e
    if scenario not in method.scenarios:
      log(f"note: {m} is not meant for the {scenario} scenario "
          f"(meant for: {', '.join(method.scenarios)}); running it anyway")
  return hparams
