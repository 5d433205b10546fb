"""The method interface: a registry of factories returning a method's steps.

A method is registered with the data it reads (`forget`, `retain`, both, or none),
its defaults, its paper and the scenarios it is meant for; its factory returns its
`steps.Steps` (init, phases, finalize: `unlearn_jax.steps`):

    @register("finetune", reads=("retain",), defaults=dict(epochs=5, lr=0.02),
              bounds=dict(epochs="[1, inf)", lr="(0, inf)"), ...)
    def finetune(ctx: MethodContext, *, epochs, lr):
      # docstring: update rule, paper, defaults, data read
      def init(variables, data, key):
        return StepState(model_state(variables), {"retain": data.retain}, {"finetune": key})
      return Steps(init, (ce_phase("finetune", ctx.model, "retain", epochs=epochs, lr=lr,
                                   batch_size=64),))

`register` returns the *method*: a `Method`, a frozen dataclass value (`method(ctx,
**overrides) -> unlearn`) whose docstring and signature are the factory's (so
`help(uj.finetune)` shows the rule, the paper, the defaults, the bounds and the data it
reads) and whose fields are the registry's facts (`name`, `reads`, `defaults`, `bounds`,
`paper`, `scenarios`, `requires`, `choices`, `space`, `aux`, `needs`); `method.steps(ctx,
**overrides)` returns the steps themselves, for a caller who owns the loop. Calling the method checks
every hyperparameter (name, type, declared bounds, choices: a `HyperparameterError`, a ValueError
naming the method, the argument, the value and what is allowed) and returns the pure
`unlearn(variables, data, key) -> (variables, aux)`: the steps run by the one driver loop
(`steps.run`; its `evaluate`, `every` and `progress` pass through). `aux` is a dict of
scalars (e.g. `stopped_early` for ascent methods). The variables come back in the model's
structure; a method that carries state from one call to the next adds its own collection
(`adapter.METHOD_COLLECTIONS`; `adapter.model_variables` drops it). `unlearn` checks the
data's shapes when it is traced (before anything compiles). Methods never jit themselves:
the caller applies `jax.jit`/`jax.vmap`. `select_data` builds the `UnlearnData` a method
may see (and checks the labels when they are concrete): the fields it did not declare are
`None`, so a method cannot read them by accident.

The phase builders below are shared by the method families: `gradient_phase` (epochs of
`steps.make_step` on a loss), `ce_phase` (plain CE fine-tuning, the repair phase of many
methods), `edit_phase` and `one_shot` (a single edit of the weights).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import batching, losses
from unlearn_jax import steps as steps_lib
from unlearn_jax import train as train_lib
from unlearn_jax.adapter import ModelAdapter, as_adapter
from unlearn_jax.steps import Phase, StepState, Steps, TrainState, init_train_state, make_step

ACCESS_CHOICES = ("forget", "retain")
# What a method may read beyond the examples: `targets`, the logits the unlearned model
# should give on data.forget and data.retain (an oracle population's mean, or a
# prediction of it: the matching methods, `unlearn_jax.methods.matching`).
READS_CHOICES = ACCESS_CHOICES + ("targets",)


class UnlearnData(NamedTuple):
  """The data a method may read: `(x, y)` pairs, or None where not declared; `targets`,
  for the methods that read it, is `(forget_logits [n_forget, C], retain_logits
  [n_retain, C])`: the outputs the unlearned model should match on those examples."""
  forget: tuple | None = None
  retain: tuple | None = None
  targets: tuple | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class MethodContext:
  """What a method knows besides data: the model (as a `ModelAdapter`) and the task.

  `model` may be given as a ModelAdapter, a library model or any Linen module
  (`adapter.as_adapter`); it is stored as the adapter. `forget_classes` are the class ids
  to forget (class scenarios; the zero-shot methods need them).
  """
  model: ModelAdapter
  num_classes: int
  input_shape: tuple
  forget_classes: tuple = ()
  model_name: str = ""

  def __post_init__(self):
    object.__setattr__(self, "model", as_adapter(self.model))
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) \
        or self.num_classes < 2:
      raise ValueError(f"num_classes must be an integer >= 2; got {self.num_classes!r}")
    object.__setattr__(self, "num_classes", int(self.num_classes))
    shape = tuple(self.input_shape) if isinstance(self.input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
      raise ValueError(f"input_shape must be a tuple of positive sizes of one example, e.g. "
                       f"(32, 32, 3); got {self.input_shape!r}")
    object.__setattr__(self, "input_shape", tuple(int(d) for d in shape))
    classes = tuple(int(c) for c in self.forget_classes)
    bad = [c for c in classes if not 0 <= c < self.num_classes]
    if bad:
      raise ValueError(f"forget_classes {bad} lie outside [0, {self.num_classes})")
    object.__setattr__(self, "forget_classes", classes)
    if not self.model_name:
      object.__setattr__(self, "model_name", self.model.name)
    check_adapter(self.model, self.num_classes, self.input_shape)


def _first_line(error: Exception) -> str:
  text = str(error).splitlines()[0] if str(error) else ""
  return f"{type(error).__name__}: {text.split(' (https://')[0]}"


def adapter_field_error(adapter: ModelAdapter, error: Exception, mode: str) -> str | None:
  """The adapter field a failed `mode` call of the model points to, as one line saying
  what to set; None when the error names none of them."""
  text = f"{type(error).__name__}: {error}"
  axis = re.search(r"unbound axis name: ([\w.-]+)", text)
  if axis:
    name = axis.group(1).rstrip(".")
    return (f"axis_names={adapter.axis_names}: {adapter.name} reduces over the collective "
            f"axis {name!r} in {mode} mode (e.g. nn.BatchNorm(axis_name={name!r})); add it: "
            f"axis_names={adapter.axis_names + (name,)} binds it as an axis of size one, so "
            "each model's statistics are its own batch's")
  immutable = re.search(r'collection "(\w+)" is immutable', text)
  if immutable:
    name = immutable.group(1)
    return (f"mutable={adapter.mutable}: {adapter.name} updates the collection {name!r} in "
            f"{mode} mode; add it: mutable={adapter.mutable + (name,)}")
  rng = re.search(r'needs PRNG for "(\w+)"', text)
  if rng:
    name = rng.group(1)
    return (f"rng_streams={adapter.rng_streams}: {adapter.name} draws from the rng stream "
            f"{name!r} in {mode} mode; add it: rng_streams={adapter.rng_streams + (name,)}")
  keyword = re.search(r"unexpected keyword argument '(\w+)'", text)
  if keyword:
    field = "train_kwargs" if mode == "train" else "eval_kwargs"
    return (f"{field}={dict(getattr(adapter, field))}: {adapter.name} takes no argument "
            f"{keyword.group(1)!r}; give the keyword arguments that switch its {mode} mode "
            "(e.g. {'train': True} or {'deterministic': False})")
  return None


def check_adapter(adapter: ModelAdapter, num_classes: int, input_shape: tuple) -> None:
  """The adapter checked against the model, once, on abstract values (`jax.eval_shape` of
  its init and of a train-mode call on two examples: nothing is computed or compiled):
  the train-mode fields (`train_kwargs`, `rng_streams`, `mutable`, `axis_names`) must let
  the model run; `head` must be a path in `params` to a Dense-like module whose output
  width is `num_classes`; every `mutable` name must be a collection the model has. A
  ValueError names the field and what to set."""
  try:
    shapes = jax.eval_shape(lambda: adapter.init(jax.random.PRNGKey(0), input_shape))
  except Exception as e:  # the user's model: one line saying what failed, then its error
    hint = adapter_field_error(adapter, e, "eval")
    if hint:
      raise ValueError(hint) from e
    raise ValueError(f"input_shape={input_shape}: {adapter.name} could not be initialised "
                     f"on one example of this shape ({_first_line(e)})") from e
  collections = sorted(k for k in shapes if k != "params")
  unknown = [c for c in adapter.mutable if c not in shapes]
  if unknown:
    raise ValueError(f"mutable={adapter.mutable}: {unknown[0]!r} is not a collection of "
                     f"{adapter.name}; allowed: its collections besides params "
                     f"{collections or '(none)'}")
  x2 = jax.ShapeDtypeStruct((2,) + tuple(input_shape), jnp.float32)
  try:
    jax.eval_shape(lambda v, x: adapter.apply(v, x, train=True, rng=jax.random.PRNGKey(0)),
                   shapes, x2)
  except Exception as e:  # the user's model in train mode: the field to fix, or its error
    hint = adapter_field_error(adapter, e, "train")
    raise ValueError(hint or (
        f"train_kwargs={dict(adapter.train_kwargs)}, rng_streams={adapter.rng_streams}, "
        f"mutable={adapter.mutable}: {adapter.name} fails in train mode "
        f"({_first_line(e)})")) from e
  if adapter.head is None:
    return
  width = adapter.head_params(shapes.get("params", {}), "every method")["kernel"].shape[-1]
  if width != num_classes:
    raise ValueError(f"head={adapter.head} outputs {width} values; the logits have "
                     f"num_classes={num_classes}: give the path of the layer that produces "
                     "the logits, not a hidden layer")


class HyperparameterError(ValueError):
  """A bad hyperparameter: `method`, `name` and `value` say which; the message says what is
  allowed. The CLI turns it into a flag error (`--method.name=value: ...`)."""

  def __init__(self, method: str, name: str, value, reason: str):
    self.method, self.name, self.value, self.reason = method, name, value, reason
    super().__init__(f"{method}: {name}={value!r} {reason}")


class Interval(NamedTuple):
  """The values a numeric hyperparameter admits: `low` to `high` (either may be infinite),
  each end closed or open; written and parsed as "[1, inf)", "(0, 1]", "[0, 1)"."""
  low: float
  high: float
  low_closed: bool
  high_closed: bool

  @classmethod
  def parse(cls, text: str) -> Interval:
    m = re.fullmatch(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*", str(text))
    try:
      low, high = float(m.group(2)), float(m.group(3))
    except (AttributeError, ValueError):
      raise ValueError(f"an interval is written like \"[0, 1)\" or \"(0, inf)\"; got "
                       f"{text!r}") from None
    if not low < high or math.isnan(low) or math.isnan(high):
      raise ValueError(f"interval {text!r} needs low < high")
    return cls(low, high, m.group(1) == "[" and math.isfinite(low),
               m.group(4) == "]" and math.isfinite(high))

  def __contains__(self, value) -> bool:
    above = value >= self.low if self.low_closed else value > self.low
    below = value <= self.high if self.high_closed else value < self.high
    return bool(above and below)

  def __str__(self) -> str:
    end = lambda v: "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"
    return (f"{'[' if self.low_closed else '('}{end(self.low)}, {end(self.high)}"
            f"{']' if self.high_closed else ')'}")


def check_bounds(name: str, bounds: Mapping[str, str], defaults: Mapping[str, Any]) -> dict:
  """`{hparam: Interval}` from a method's declared bounds: one for every numeric (int or
  float, not bool) hyperparameter and none for the others, each holding its default.
  ValueError naming the method and the hyperparameter otherwise."""
  numeric = [k for k, v in defaults.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
  missing = [k for k in numeric if k not in bounds]
  if missing:
    raise ValueError(f"{name}: bounds must declare an interval for every numeric "
                     f"hyperparameter; missing for {', '.join(missing)}")
  extra = sorted(set(bounds) - set(numeric))
  if extra:
    raise ValueError(f"{name}: bounds name {', '.join(extra)}, which are not numeric "
                     f"hyperparameters; allowed: {', '.join(numeric)}")
  out = {}
  for k in numeric:
    try:
      out[k] = Interval.parse(bounds[k])
    except ValueError as e:
      raise ValueError(f"{name}: bounds of {k}: {e}") from None
    if defaults[k] not in out[k]:
      raise ValueError(f"{name}: the default {k}={defaults[k]!r} lies outside its bounds "
                       f"{out[k]}")
  return out


def _check_hparam(method: Method, name: str, value):
  """The value, coerced to the default's type; HyperparameterError when it does not fit
  the type, the method's `choices` or its declared `bounds`."""
  err = lambda reason: HyperparameterError(method.name, name, value, reason)
  default = method.defaults[name]
  if name in method.choices:
    if value not in method.choices[name]:
      raise err(f"is unknown; allowed: {', '.join(map(str, method.choices[name]))}")
    return value
  if isinstance(default, bool):
    if not isinstance(value, (bool, np.bool_)):
      raise err("must be True or False")
    return bool(value)
  if isinstance(default, (int, float)):
    number = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)))
    if isinstance(default, int) and not (number and float(value).is_integer()):
      raise err("must be a whole number")
    if not (number and math.isfinite(float(value))):
      raise err("must be a finite number")
    value = int(value) if isinstance(default, int) else float(value)
    if value not in method.bounds[name]:
      raise err(f"lies outside {method.name}'s bounds for {name}: {method.bounds[name]}")
    return value
  if isinstance(default, str) and not isinstance(value, str):
    raise err("must be a string")
  return value


SCALES = ("log", "linear")


def check_space(name: str, space: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
  """A method's search space, checked: every key a float hyperparameter of the method,
  ranges (scale, low, high) with low < high (low > 0 on a log scale) or non-empty value
  lists; or an integer one (epochs, steps) with a tuple of integers that holds its default:
  an outer loop, one compiled program per value. ValueError naming the method, the
  hyperparameter and what is allowed."""
  out = {}
  for k, spec in dict(space).items():
    if k not in defaults:
      raise ValueError(f"{name}: search space names {k!r}, which is not a hyperparameter; "
                       f"allowed: {', '.join(sorted(defaults))}")
    if isinstance(defaults[k], int) and not isinstance(defaults[k], bool):
      if not (isinstance(spec, tuple) and spec and all(
          isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in spec)
              and defaults[k] in spec):
        raise ValueError(f"{name}: space of integer {k} is {spec!r}; allowed: a tuple of "
                         f"positive integers holding its default {defaults[k]} (an outer "
                         "loop, one compiled program per value)")
      out[k] = tuple(dict.fromkeys(spec))
      continue
    if not isinstance(defaults[k], float):
      raise ValueError(f"{name}: only float hyperparameters (traced, one program) and "
                       f"integer ones (an outer loop) are searched; {k} defaults to "
                       f"{defaults[k]!r}")
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] in SCALES:
      scale, low, high = spec
      if not (math.isfinite(low) and math.isfinite(high) and low < high) or \
          (scale == "log" and low <= 0):
        raise ValueError(f"{name}: space of {k} is {spec!r}; a range needs low < high "
                         "(and low > 0 on a log scale)")
      out[k] = (scale, float(low), float(high))
    elif isinstance(spec, (tuple, list)) and spec and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
      out[k] = tuple(float(v) for v in spec)
    else:
      raise ValueError(f"{name}: space of {k} is {spec!r}; allowed: ('log', low, high), "
                       "('linear', low, high) or a tuple of numbers")
  return out


def _check_pair(method: str, name: str, pair, input_shape) -> tuple:
  """(x, y) of matching length, at least one example, the context's input shape and
  integer labels; checked on shapes, so it holds under jit and vmap too."""
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"{method}: data.{name} must be an (x, y) pair; got {type(pair).__name__}")
  x, y = pair
  xs, ys = jnp.shape(x), jnp.shape(y)
  if len(ys) != 1 or not xs or xs[0] != ys[0]:
    raise ValueError(f"{method}: data.{name} has x of shape {xs} and y of shape {ys}; "
                     "expected x [n, *input_shape] and y [n] with the same n")
  if xs[0] == 0:
    raise ValueError(f"{method}: data.{name} is empty; it needs at least one example")
  if tuple(xs[1:]) != tuple(input_shape):
    raise ValueError(f"{method}: data.{name} examples have shape {tuple(xs[1:])}; the "
                     f"context says input_shape={tuple(input_shape)}")
  if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise ValueError(f"{method}: data.{name} labels have dtype {jnp.result_type(y)}; "
                     "expected integer class ids")
  return x, y


def check_labels(y, num_classes: int, what: str = "labels") -> None:
  """Concrete labels must lie in [0, num_classes); traced ones cannot raise (under jit the
  method reports them instead: `aux["invalid_labels"]`, `steps.with_checks`)."""
  if isinstance(y, jax.core.Tracer):
    return
  y = np.asarray(y)
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{what} lie in [{y.min()}, {y.max()}]; allowed: [0, {num_classes}) "
                     f"(num_classes={num_classes})")


def check_finite(tree, what: str) -> None:
  """Concrete floating-point values must be finite: a ValueError naming `what`, the first
  offending leaf and the count. Traced ones cannot raise (under jit the method reports
  them: `aux["nonfinite_inputs"]`, `steps.with_checks`)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.core.Tracer) or not jnp.issubdtype(jnp.result_type(leaf),
                                                                jnp.inexact):
      continue
    bad = int(np.sum(~np.isfinite(np.asarray(leaf))))
    if bad:
      where = jax.tree_util.keystr(path) or "the array"
      raise ValueError(f"{what} hold {bad} non-finite value(s) (NaN/Inf) in {where}; "
                       "allowed: finite values only")


def check_targets(method: str, data: UnlearnData, num_classes: int) -> None:
  """`data.targets` is (forget logits, retain logits), one row of `num_classes` per example
  of data.forget and data.retain, finite when concrete; ValueError naming what differs."""
  t = data.targets
  if not isinstance(t, (tuple, list)) or len(t) != 2:
    raise ValueError(f"{method} reads targets: data.targets must be a pair (forget_logits, "
                     f"retain_logits); got {type(t).__name__}")
  for field, logits in zip(ACCESS_CHOICES, t):
    want = (jnp.shape(getattr(data, field)[0])[0], num_classes)
    if tuple(jnp.shape(logits)) != want:
      raise ValueError(f"{method}: data.targets' {field} logits have shape "
                       f"{tuple(jnp.shape(logits))}; expected {want} (one row per example "
                       f"of data.{field}, num_classes={num_classes})")
  check_finite(tuple(t), f"{method}: data.targets")


_REGISTRY: dict[str, Method] = {}


NEEDS_CHOICES = ("head", "features")


def _checked_call(method: Method, ctx: MethodContext, built: Steps):
  """The pure `unlearn(variables, data, key)` of `built`, checking its inputs on shapes."""
  name, reads = method.name, method.reads

  def checked(variables, data: UnlearnData, key, *, evaluate=None, every: int = 1,
              progress=None):
    if isinstance(variables, Mapping) and not isinstance(variables, dict):
      variables = flax.core.unfreeze(variables)    # a FrozenDict: a plain dict of it
    if not isinstance(variables, dict) or "params" not in variables:
      raise ValueError(f"{name}: variables must be the model's variables dict with "
                       f"'params'; got {type(variables).__name__}")
    if not isinstance(data, UnlearnData):
      raise ValueError(f"{name}: data must be an UnlearnData (see select_data); got "
                       f"{type(data).__name__}")
    for field in ACCESS_CHOICES:
      pair = getattr(data, field)
      if field in reads:
        if pair is None:
          raise ValueError(f"{name} reads {field}: data.{field} must be an (x, y) pair")
        _check_pair(name, field, pair, ctx.input_shape)
        check_labels(pair[1], ctx.num_classes, f"{name}: data.{field} labels")
        check_finite(pair[0], f"{name}: data.{field} examples")
    if "targets" in reads:
      check_targets(name, data, ctx.num_classes)
    check_finite(variables, f"{name}: variables")
    x0 = jax.ShapeDtypeStruct((1,) + ctx.input_shape, jnp.float32)
    out = jax.eval_shape(lambda v, x: ctx.model.logits(v, x), variables, x0)
    if jnp.shape(out)[-1:] != (ctx.num_classes,):
      raise ValueError(f"{name}: the model returns logits of shape {jnp.shape(out)}; the "
                       f"context says num_classes={ctx.num_classes}")
    return steps_lib.run(built, variables, data, key, evaluate=evaluate, every=every,
                         progress=progress)

  functools.update_wrapper(checked, method.factory)
  checked.steps = built
  return checked


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
  """A registered unlearning method, as a value (`register` builds it; module docstring).

  Calling it, `method(ctx, **hparams)`, checks every hyperparameter against its declared
  type, `choices` and `bounds` and returns the pure `unlearn(variables, data, key) ->
  (variables, aux)`; `method.steps(ctx, **hparams)` returns its `steps.Steps`. The fields
  are the registry's facts: the data it `reads`, its `defaults`, `bounds` (an `Interval`
  per numeric hyperparameter), `choices` (per string one), search `space`, the `paper`,
  the `scenarios` it is meant for, what it `requires` of the model and `needs` of the
  adapter, and its `aux` keys. `help(method)` shows its rule, paper and defaults.
  """
  name: str
  factory: Callable = dataclasses.field(repr=False)
  reads: tuple = dataclasses.field(repr=False)
  defaults: Mapping[str, Any] = dataclasses.field(repr=False)
  bounds: Mapping[str, Interval] = dataclasses.field(repr=False)
  paper: str = dataclasses.field(repr=False)
  scenarios: tuple = dataclasses.field(repr=False, default=("random", "class", "subclass"))
  requires: tuple = dataclasses.field(repr=False, default=())
  choices: Mapping[str, tuple] = dataclasses.field(repr=False, default_factory=dict)
  space: Mapping[str, Any] = dataclasses.field(repr=False, default_factory=dict)
  aux: Mapping[str, str] = dataclasses.field(repr=False, default_factory=dict)
  needs: tuple = dataclasses.field(repr=False, default=())

  def __post_init__(self):
    freeze = types.MappingProxyType
    set_ = functools.partial(object.__setattr__, self)
    set_("defaults", freeze(dict(self.defaults)))
    set_("bounds", freeze(dict(self.bounds)))
    set_("choices", freeze({k: tuple(v) for k, v in self.choices.items()}))
    set_("space", freeze(dict(self.space)))
    set_("aux", freeze(dict(self.aux)))
    for field in ("reads", "scenarios", "requires", "needs"):
      set_(field, tuple(getattr(self, field)))
    set_("__signature__", _signature(self.defaults))
    set_("__doc__", _docstring(self))
    set_("__name__", self.name)
    set_("__module__", self.factory.__module__)
    set_("__wrapped__", self.factory)

  @property
  def summary(self) -> str:
    """The docstring's first paragraph, on one line."""
    return " ".join(inspect.cleandoc(self.factory.__doc__ or "").split("\n\n")[0].split())

  def validate(self, overrides: Mapping[str, Any]) -> dict:
    """Defaults with `overrides`, each checked; HyperparameterError for the first bad one."""
    unknown = sorted(set(overrides) - set(self.defaults))
    if unknown:
      raise HyperparameterError(self.name, unknown[0], overrides[unknown[0]],
                                f"is not a hyperparameter of {self.name}; allowed: "
                                f"{', '.join(sorted(self.defaults))}")
    return {k: _check_hparam(self, k, v) for k, v in {**self.defaults, **overrides}.items()}

  def steps(self, ctx: MethodContext, **overrides) -> Steps:
    """The method's `Steps` (`unlearn_jax.steps`) at `overrides` over the defaults."""
    if not isinstance(ctx, MethodContext):
      raise ValueError(f"{self.name}: the first argument must be a MethodContext; got "
                       f"{type(ctx).__name__}")
    built = self.factory(ctx, **self.validate(overrides))
    if not isinstance(built, Steps):
      raise TypeError(f"{self.name}: its factory must return a steps.Steps; got "
                      f"{type(built).__name__}")
    return steps_lib.with_checks(built, ctx.num_classes)

  def __call__(self, ctx: MethodContext, **overrides):
    return _checked_call(self, ctx, self.steps(ctx, **overrides))


def register(name: str, *, reads: tuple, defaults: dict, bounds: dict, paper: str,
             scenarios: tuple = ("random", "class", "subclass"), requires: tuple = (),
             choices: dict | None = None, space: dict | None = None, aux: dict | None = None,
             needs: tuple = ()):
  """Decorator making `factory(ctx, **hparams) -> Steps` the `Method` `name` (registered).

  `paper`: authors, year and venue (or the project the method comes from).
  `reads=()` declares a zero-shot method: it is handed `UnlearnData(None, None)`.
  `bounds`: `{hparam: "[low, high)"}`, an interval for every numeric hyperparameter (inf
  for no limit; `Interval.parse`): the values its rule admits, checked on every call.
  `requires=("batch_norm",)`: the method only runs on models with BatchNorm. `choices`:
  the allowed values of string hyperparameters. `space`: the search space of float
  hyperparameters (`check_space`; `unlearn_jax.tuning` searches them as one program).
  `aux`: `{key: definition}` of the `aux` dict the method returns at its defaults, besides
  the keys every method returns (`steps.COMMON_AUX`). `needs`: what the
  `ModelAdapter` must give at the defaults (`"head"`, `"features"`: the head's input, or
  a `features_fn`). The method's docstring and signature are made from all of these.
  ValueError naming the method and the field when a declaration is inconsistent."""
  bad = [r for r in reads if r not in READS_CHOICES]
  if bad:
    raise ValueError(f"{name}: reads {bad}; allowed {READS_CHOICES} (or none)")
  if "targets" in reads and not {"forget", "retain"} <= set(reads):
    raise ValueError(f"{name}: a method that reads targets reads forget and retain too "
                     "(the targets are the logits on those examples)")
  bad = [n for n in needs if n not in NEEDS_CHOICES]
  if bad:
    raise ValueError(f"{name}: needs {bad}; allowed {NEEDS_CHOICES} (or none)")
  intervals = check_bounds(name, bounds, defaults)
  space = check_space(name, space or {}, defaults)
  for k, spec in space.items():     # a search never proposes a value the method refuses
    ends = spec[1:] if isinstance(spec[0], str) else spec
    if any(v not in intervals[k] for v in ends):
      raise ValueError(f"{name}: the search space of {k} ({spec}) leaves its bounds "
                       f"{intervals[k]}")
  aux = dict(aux or {})
  undefined = [k for k, v in aux.items() if not (isinstance(v, str) and v.strip())]
  if undefined or set(aux) & set(steps_lib.COMMON_AUX):
    raise ValueError(f"{name}: aux must map each key to its definition (missing for "
                     f"{undefined}) and leave out the common keys {list(steps_lib.COMMON_AUX)}")

  def wrap(factory):
    method = Method(name, factory, tuple(reads), dict(defaults), intervals, paper,
                    tuple(scenarios), tuple(requires), dict(choices or {}), space, aux,
                    tuple(needs))
    _REGISTRY[name] = method
    return method

  return wrap


def _signature(defaults: dict) -> inspect.Signature:
  """`method(ctx, *, hparam=default, ...)`: what `help()` and IDEs show."""
  params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation="MethodContext")]
  params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in defaults.items()]
  return inspect.Signature(params, return_annotation="Callable")


def _docstring(method) -> str:
  """The factory's docstring (the rule, the data, the published settings) followed by the
  registry's facts, so `help(method)` shows everything a caller needs."""
  body = inspect.cleandoc(method.factory.__doc__ or method.name)
  space = ", ".join(
      f"{k} {v[0]} [{v[1]:g}, {v[2]:g}]" if isinstance(v[0], str)
      else f"{k} in {{{', '.join(f'{x:g}' for x in v)}}}" for k, v in method.space.items()
  ) or "none (not tuned)"
  choices = "".join(f"\n  {k}: one of {', '.join(map(repr, v))}"
                    for k, v in method.choices.items())
  adapter = ", ".join(method.needs + method.requires) or "nothing beyond running the model"
  aux = "".join(f"\n    {k}: {v}" for k, v in {**method.aux, **steps_lib.COMMON_AUX}.items())
  reads = ", ".join(method.reads) or "nothing (zero-shot: the forget classes only)"
  return (f"{body}\n\n"
          f"Paper: {method.paper}\n"
          f"Reads: {reads}\n"
          f"Scenarios: {', '.join(method.scenarios)}\n"
          f"Needs from the adapter: {adapter}\n"
          f"Defaults: {', '.join(f'{k}={v!r}' for k, v in method.defaults.items())}\n"
          f"Bounds: {', '.join(f'{k} in {v}' for k, v in method.bounds.items()) or 'none'}"
          f"{choices}\n"
          f"Search space (unlearn_jax.tuning): {space}\n\n"
          "Args:\n"
          "  ctx: the MethodContext (the model's adapter, input shape, class count).\n"
          "  **hparams: any of the defaults above; each is checked (HyperparameterError).\n\n"
          "Returns:\n"
          "  unlearn(variables, data, key, *, evaluate=None, every=1, progress=None) ->\n"
          "  (variables, aux): a pure function (jit and vmap it); `data` from\n"
          f"  select_data. aux keys (the method's, then every method's):{aux}\n"
          "  `method.steps(ctx, **hparams)` gives the steps themselves (unlearn_jax.steps).")


MethodSpec = Method   # the earlier name of a registered method


def get_method(name: str):
  """The registered method `name` (help() on it shows its rule, paper, defaults, data)."""
  if name not in _REGISTRY:
    raise ValueError(f"method {name!r} is unknown; allowed: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def list_methods() -> tuple:
  return tuple(_REGISTRY)


def make_method(name: str, ctx: MethodContext, **overrides):
  """`get_method(name)(ctx, **overrides)`: the pure `unlearn(variables, data, key)`."""
  return get_method(name)(ctx, **overrides)


def select_data(spec, forget: tuple | None = None, retain: tuple | None = None,
                num_classes: int | None = None, *, ctx: MethodContext | None = None,
                targets: tuple | None = None) -> UnlearnData:
  """Only what the method declared: undeclared fields stay None. `targets` (forget logits,
  retain logits) is for the methods that read them (`oracle_matching`, `dmm`).

  What is checked where: called on concrete arrays, labels outside [0, num_classes) and
  non-finite examples are a ValueError here (and again when the method is called on
  concrete arrays). Called inside the caller's `jit`, the arrays are tracers and nothing
  here can raise: the method then *reports* what it read, in every method's aux
  (`nonfinite_inputs`, `invalid_labels`; `steps.COMMON_AUX`), and runs on the data as
  given. An out-of-range label is not clamped: its cross-entropy term is wrong, so check
  `aux["invalid_labels"] == 0` after a jitted call, or call `select_data` on concrete
  arrays first. The class count is required: `num_classes`, or `ctx` (the
  `MethodContext`, whose `num_classes` is used)."""
  spec = get_method(spec) if isinstance(spec, str) else spec
  if num_classes is None and ctx is not None:
    num_classes = ctx.num_classes
  if num_classes is None:
    raise ValueError(f"select_data({spec.name!r}, ...): pass num_classes= or ctx= (the "
                     "MethodContext): the labels are checked here, since under jit they "
                     "cannot be")
  out = UnlearnData(forget=forget if "forget" in spec.reads else None,
                    retain=retain if "retain" in spec.reads else None,
                    targets=targets if "targets" in spec.reads else None)
  for field in ACCESS_CHOICES:
    pair = getattr(out, field)
    if field in spec.reads and pair is None:
      raise ValueError(f"{spec.name} reads {field}: pass {field}=(x, y)")
    if isinstance(pair, (tuple, list)) and len(pair) == 2:   # other shapes: the method says
      check_labels(pair[1], num_classes, f"{field} labels")
      check_finite(pair[0], f"{field} examples")
  if "targets" in spec.reads:
    if targets is None:
      raise ValueError(f"{spec.name} reads targets: pass targets=(forget_logits, "
                       "retain_logits) (e.g. attribution.oracle_targets of oracles' logits)")
    check_targets(spec.name, out, num_classes)
  return out


# ----------------------------------------------------------------------------- phases
def sgd(lr: float, momentum: float = 0.9, weight_decay: float = 0.0, grad_clip: float = 0.0,
        schedule: str = "constant", total_steps: int = 1) -> optax.GradientTransformation:
  """The optimizer most methods use: clipped SGD with momentum and weight decay."""
  cfg = train_lib.TrainConfig(epochs=1, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              schedule=schedule, grad_clip=grad_clip)
  return train_lib.make_optimizer(cfg, total_steps)


def adam(lr: float) -> optax.GradientTransformation:
  """Adam at a constant lr, no weight decay (the distillation methods')."""
  return train_lib.make_optimizer(
      train_lib.TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, schedule="constant"), 1)


def model_state(variables) -> TrainState:
  """A carry holding only the model: the first gradient phase's `enter` gives it its
  optimizer state."""
  return TrainState(variables, (), jnp.zeros((), jnp.int32))


def gradient_phase(name: str, loss: Callable, source: str, *, epochs: int, batch_size: int,
                   optimizer: Callable, guard: bool = False, mask: str | None = None,
                   fresh: bool = True) -> Phase:
  """A phase of gradient steps (`steps.make_step`) on `loss(state, variables, batch, key)
  -> (loss, (updates, metrics))` over `epochs` passes of `feeds[source]`.

  `optimizer(total_steps) -> tx` (total over the phase, for cosine schedules; the count
  comes from the feed's static shape). `fresh`: the phase starts from a new optimizer state
  (its `enter`), as every method's separate stages do. `mask`: the name of a params-shaped
  bool tree in `state.const` (weights where it is False stay bitwise unchanged). The carry
  is a `TrainState`."""
  def tx_of(state):
    n = jax.tree_util.tree_leaves(state.feeds[source])[0].shape[0]
    return optimizer(epochs * batching.steps_per_epoch(n, batch_size))

  def update(state: StepState, batch, key):
    step = make_step(lambda v, b, k: loss(state, v, b, k), tx_of(state), guard=guard,
                     mask=None if mask is None else state.const[mask])
    carry, metrics = step(state.carry, batch, key)
    return state._replace(carry=carry), metrics

  enter = None
  if fresh:
    enter = lambda state, key: state._replace(
        carry=init_train_state(state.carry.variables, tx_of(state)))
  return Phase(name, update, source=source, epochs=epochs, batch_size=batch_size, enter=enter)


def ce_phase(name: str, model, source: str, *, epochs: int, batch_size: int, lr: float,
             momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "cosine",
             train: bool = True) -> Phase:
  """Plain CE fine-tuning on `feeds[source]` (the repair phase of many methods): SGD with
  `momentum`, `weight_decay`, a `schedule` over the phase; eval-mode forward passes with
  `train=False`."""
  ce = losses.ce_loss(model, train=train)
  return gradient_phase(name, lambda st, v, b, k: ce(v, b, k), source, epochs=epochs,
                        batch_size=batch_size,
                        optimizer=lambda total: sgd(lr, momentum, weight_decay,
                                                    schedule=schedule, total_steps=total))


def edit_phase(name: str, edit: Callable) -> Phase:
  """A one-shot phase: `edit(state, variables, key) -> (variables, aux)` applied once with
  the phase's own key (a dampening, a reset, a Newton step); its aux scalars are the phase's
  metrics. The carry becomes `model_state` of the result (a later gradient phase starts a
  fresh optimizer on it)."""
  def update(state: StepState, batch, key):
    del batch
    variables, aux = edit(state, state.carry.variables, key)
    return state._replace(carry=model_state(variables)), dict(aux)
  return Phase(name, update, steps=1)


def one_shot(name: str, edit: Callable) -> Steps:
  """A method that is a single edit, `edit(variables, data, key) -> (variables, aux)` with
  the method's key (SSD, Fisher forgetting, influence): one `edit_phase`, its aux the
  method's."""
  def init(variables, data, key):
    return StepState(model_state(variables), {"data": data}, {name: key})

  return Steps(init, (edit_phase(name, lambda st, v, k: edit(v, st.feeds["data"], k)),),
               report=lambda st, h: {k: v[0] for k, v in h[name].items()})


def random_other_labels(key: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
  """Labels drawn uniformly from the classes other than y."""
  shift = jax.random.randint(key, y.shape, 1, num_classes)
  return (y + shift) % num_classes


Hparams = dict[str, Any]
