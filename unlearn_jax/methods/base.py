"""The method interface: a registry of factories returning pure unlearning functions.

A method is registered with the data it reads (`forget`, `retain`, both, or none),
its defaults, its paper and the scenarios it is meant for:

    @register("finetune", reads=("retain",), defaults=dict(epochs=5, lr=0.02), ...)
    def finetune(ctx: MethodContext, *, epochs, lr):
      def unlearn(variables, data: UnlearnData, key):
        new_variables, history = finetune_on(ctx.model, variables, data.retain, key,
                                             epochs=epochs, lr=lr, batch_size=64)
        return new_variables, {"final_loss": history["loss"][-1]}
      return unlearn

`make_method(name, ctx, **overrides)` closes over the hyperparameters and returns the
pure `unlearn(variables, data, key) -> (variables, aux)`; `aux` is a dict of scalars
(e.g. `stopped_early` for ascent methods). Methods never jit themselves: the caller
applies `jax.jit`/`jax.vmap`. `select_data` builds the `UnlearnData` a method may see:
the fields it did not declare are `None`, so a method cannot read them by accident.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unlearn_jax import train as train_lib
from unlearn_jax.parallel import shard_batch

ACCESS_CHOICES = ("forget", "retain")


class UnlearnData(NamedTuple):
  """The data a method may read: `(x, y)` pairs, or None where not declared."""
  forget: Optional[tuple] = None
  retain: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class MethodContext:
  """What a method knows besides data: the model and the task (no examples)."""
  model: nn.Module
  num_classes: int
  input_shape: tuple
  forget_classes: tuple = ()
  model_name: str = ""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  name: str
  factory: Callable
  reads: tuple
  defaults: dict
  paper: str
  scenarios: tuple
  summary: str
  requires: tuple = ()   # e.g. ("batch_norm",): what the model must have

  def __call__(self, ctx: MethodContext, **overrides):
    unknown = sorted(set(overrides) - set(self.defaults))
    if unknown:
      raise ValueError(f"--{self.name}.{unknown[0]} is not a hyperparameter of {self.name}; "
                       f"allowed: {', '.join(sorted(self.defaults))}")
    return self.factory(ctx, **{**self.defaults, **overrides})


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, reads: tuple, defaults: dict, paper: str,
             scenarios: tuple = ("random", "class", "subclass"), requires: tuple = ()):
  """Decorator registering `factory(ctx, **hparams) -> unlearn` under `name`.

  `reads=()` declares a zero-shot method: it is handed `UnlearnData(None, None)`.
  `requires=("batch_norm",)`: the method only runs on models with BatchNorm."""
  bad = [r for r in reads if r not in ACCESS_CHOICES]
  if bad:
    raise ValueError(f"{name}: reads {bad}; allowed {ACCESS_CHOICES} (or none)")

  def wrap(factory):
    summary = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
    _REGISTRY[name] = MethodSpec(name, factory, tuple(reads), dict(defaults), paper,
                                 tuple(scenarios), summary, tuple(requires))
    return factory

  return wrap


def get_method(name: str) -> MethodSpec:
  if name not in _REGISTRY:
    raise ValueError(f"--methods: {name!r} is unknown; allowed: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def list_methods() -> tuple:
  return tuple(_REGISTRY)


def make_method(name: str, ctx: MethodContext, **overrides):
  return get_method(name)(ctx, **overrides)


def select_data(spec: MethodSpec, forget: tuple, retain: tuple) -> UnlearnData:
  """Only what the method declared: undeclared fields stay None."""
  return UnlearnData(forget=forget if "forget" in spec.reads else None,
                     retain=retain if "retain" in spec.reads else None)


# ----------------------------------------------------------------------------- helpers
def sgd(lr: float, momentum: float = 0.9, weight_decay: float = 0.0, grad_clip: float = 0.0,
        schedule: str = "constant", total_steps: int = 1) -> optax.GradientTransformation:
  """The optimizer most methods use: clipped SGD with momentum and weight decay."""
  cfg = train_lib.TrainConfig(epochs=1, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              schedule=schedule, grad_clip=grad_clip)
  return train_lib.make_optimizer(cfg, total_steps)


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, guard: bool = False,
              with_step: bool = False, mask=None):
  """A gradient step on `loss_fn(variables, batch, key) -> (loss, (batch_stats, metrics))`.

  `with_step` passes the step counter as a fourth argument (for schedules inside the
  loss, e.g. l1_sparse's decaying α_t). `mask` (a params-shaped tree of bools) keeps
  every weight where it is False bitwise unchanged: applied after the whole optimizer,
  i.e. after weight decay and momentum (SalUn).

  With `guard`, a step whose loss or new weights are not finite is dropped and the
  carry's `stopped` flag is set (the run keeps its last finite weights): ascent
  methods use it so that no NaN/Inf ever leaves them.
  """

  def step(state: train_lib.TrainState, batch, key):
    variables = state.variables

    def wrapped(params):
      v = {**variables, "params": params}
      return loss_fn(v, batch, key, state.step) if with_step else loss_fn(v, batch, key)

    (loss, (new_stats, metrics)), grads = jax.value_and_grad(wrapped, has_aux=True)(
        variables["params"])
    updates, opt_state = tx.update(grads, state.opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    if mask is not None:
      params = jax.tree_util.tree_map(jnp.where, mask, params, variables["params"])
    new_state = train_lib.TrainState({"params": params, "batch_stats": new_stats}, opt_state,
                                     state.step + 1)
    metrics = {"loss": loss, **metrics}
    if guard:
      finite = jnp.isfinite(loss) & all_finite(params) & all_finite(new_stats)
      new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
      metrics["nonfinite"] = (~finite).astype(jnp.float32)
    return new_state, metrics

  return step


def all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def run_epochs(step, variables, tx, data, key, epochs, batch_size):
  """Runs `step` for `epochs` over `data` from fresh optimizer state."""
  state = train_lib.init_train_state(variables, tx)
  state, history = train_lib.scan_epochs(step, state, data, key, epochs, batch_size)
  return state.variables, history


def sample_batch(data: tuple, key: jax.Array, batch_size: int) -> tuple:
  """A uniformly sampled batch (with replacement) from `(x, y)`: pairs retain batches
  with forget batches in the interleaved methods."""
  n = data[0].shape[0]
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return shard_batch(jax.tree_util.tree_map(lambda a: a[idx], data))


def ce_loss(model, train: bool = True):
  """`loss_fn` of mean CE on `(x, y)` for `make_step`."""

  def loss_fn(variables, batch, key):
    x, y = batch
    logits, stats = train_lib.forward(model, variables, x, train=train)
    return train_lib.cross_entropy(logits, y).mean(), (stats, {})

  return loss_fn


def random_other_labels(key: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
  """Labels drawn uniformly from the classes other than y."""
  shift = jax.random.randint(key, y.shape, 1, num_classes)
  return (y + shift) % num_classes


def finetune_on(model, variables, data, key, *, epochs, lr, batch_size, momentum=0.9,
                weight_decay=5e-4, schedule="cosine"):
  """Plain CE fine-tuning of `variables` on `(x, y)` (the repair phase of many methods)."""
  n = data[0].shape[0]
  tx = sgd(lr, momentum, weight_decay, schedule=schedule,
           total_steps=epochs * train_lib.steps_per_epoch(n, batch_size))
  return run_epochs(make_step(ce_loss(model), tx), variables, tx, data, key, epochs, batch_size)


def fixed_batches(data: tuple, batch_size: int) -> tuple:
  """`data` reshaped to [num_batches, batch_size, ...] in order (last batch wraps)."""
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  idx = jnp.resize(jnp.arange(n), (train_lib.steps_per_epoch(n, batch_size) * batch_size,))
  idx = idx.reshape(-1, batch_size)
  return jax.tree_util.tree_map(lambda a: a[idx], data)


def batched_mean(fn: Callable, data: tuple, batch_size: int):
  """mean over fixed-order batches of `fn(batch)` (a pytree), via `train.map_batches`
  (`lax.map`, or a host loop over the jitted `fn` in host mode: kernel gradients inside a
  compiled loop are slow on XLA:CPU even when the kernels are loop-invariant)."""
  out = train_lib.map_batches(lambda b: fn(shard_batch(b)), fixed_batches(data, batch_size))
  return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), out)


def kl_divergence(teacher_logits, student_logits, tau: float = 1.0):
  """Mean over the batch of τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) (Hinton's scaling)."""
  p_log = jax.nn.log_softmax(teacher_logits / tau)
  q_log = jax.nn.log_softmax(student_logits / tau)
  return (tau ** 2) * jnp.mean(jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1))


def subsample(data: tuple, key: jax.Array, fraction: float, minimum: int = 1) -> tuple:
  """A random subset (without replacement) of a static size round(fraction·n)."""
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  k = int(min(n, max(minimum, round(fraction * n))))
  idx = jax.random.choice(key, n, (k,), replace=False)
  return jax.tree_util.tree_map(lambda a: a[idx], data)


Hparams = dict[str, Any]
