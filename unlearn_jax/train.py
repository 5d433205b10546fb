"""Pure training: the recipe (optimizer, schedule, augmentation), `fit`, prediction.

Everything here is a pure function of (variables, optimizer state, data, PRNG key):
callers `jax.jit` it and `jax.vmap` it over seeds. The step is `steps.make_step` (the one
gradient step of the library), the loop `steps.scan_epochs`, the batch order
`batching.epoch_plan` (a permutation per epoch; the last batch wraps around), the loss
`losses.cross_entropy`: training and every method share them.

The epoch key is `fold_in(key, epoch)` with the epoch read from the step counter in
the state, so running epochs in chunks (for progress lines, or after a resume) gives
the same result as one call over all of them.

A model is anything `adapter.as_adapter` accepts: a `ModelAdapter`, a library model, or a
plain Linen module. Variables are the model's own collections (`params`, and whatever
else it has); train mode updates the adapter's mutable collections and carries the rest.

Two loop forms, same steps: `train_epochs` runs epochs as one `lax.scan`; `train_steps`
runs a chunk of steps written out without a loop, for a host loop to call (the driver's
`unrolled` train loop). XLA:CPU emits a slow convolution inside compiled loops
(jax-ml/jax#12868) for autodiff's gradient: in a scan the models avoid it themselves
(`models.Conv` on the CPU: the gradient written as canonical convolutions); the unrolled
chunk keeps even autodiff's fast.

Every batch drawn here passes through `parallel.shard_batch`: inside
`parallel.data_parallel(mesh)` (that is, `jax.set_mesh`) it is split over the mesh's
`data` axis (weights stay replicated); outside it nothing changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.adapter import as_adapter
# The step, the epoch loop, the batch order and the loss live in one place each; training
# uses them like every method does.
from unlearn_jax.batching import in_batches, steps_per_epoch  # noqa: F401 (re-exported)
from unlearn_jax.losses import cross_entropy
from unlearn_jax.steps import (TrainState, init_train_state, make_step,  # noqa: F401
                               scan_epochs, unrolled_steps)

Variables = dict  # {"params": ..., and the model's other collections}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training recipe. `schedule`: onecycle | linear_onecycle | cosine | constant (the
  one-cycle schedules peak at `peak_fraction` of the steps); `optimizer`: sgd | adam; SGD's
  momentum is Nesterov's unless `nesterov` is False."""
  epochs: int = 30
  batch_size: int = 128
  lr: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  schedule: str = "onecycle"
  optimizer: str = "sgd"
  augment: bool = False
  grad_clip: float = 0.0
  nesterov: bool = True
  peak_fraction: float = 0.25


# ----------------------------------------------------------------------------- optimizers
SCHEDULES = ("onecycle", "linear_onecycle", "cosine", "constant")


def make_schedule(name: str, lr: float, total_steps: int,
                  peak_fraction: float = 0.25) -> optax.Schedule:
  """The learning rate by step. `onecycle`: cosine up from lr/25 to lr at `peak_fraction`
  of the steps, cosine down to lr/25,000; `linear_onecycle`: linear from 0 to lr at
  `peak_fraction`, linear to 0 at the end (PyTorch's OneCycleLR with linear annealing and
  div factors of 1e6, the Easy Data Unlearning Bench's recipe); `cosine`: cosine decay
  from lr; `constant`."""
  total_steps = max(int(total_steps), 1)
  if not 0 < peak_fraction < 1:
    raise ValueError(f"peak_fraction={peak_fraction!r} must lie strictly between 0 and 1")
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(total_steps, lr, pct_start=peak_fraction,
                                          div_factor=25.0, final_div_factor=1e3)
  if name == "linear_onecycle":
    peak = max(1, int(round(peak_fraction * total_steps)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, peak),
         optax.linear_schedule(lr, 0.0, max(1, total_steps - peak))], [peak])
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps)
  if name == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(f"schedule={name!r} is unknown; allowed: {', '.join(SCHEDULES)}")


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov momentum, coupled weight decay) or Adam, on the recipe's schedule."""
  schedule = make_schedule(cfg.schedule, cfg.lr, cfg.epochs * steps_per_epoch,
                           cfg.peak_fraction)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.optimizer == "sgd":
    # A traced weight decay (a searched hyperparameter) is always applied; a Python 0 adds
    # no transform, so the default program is unchanged.
    if not isinstance(cfg.weight_decay, (int, float)) or cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None,
                           nesterov=bool(cfg.nesterov) and cfg.momentum > 0))
  elif cfg.optimizer == "adam":
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
  else:
    raise ValueError(f"optimizer={cfg.optimizer!r} is unknown; allowed: sgd, adam")
  return optax.chain(*parts)


# ----------------------------------------------------------------------------- augmentation
def augment_batch(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop (zero padding `pad`) and horizontal flip, per example (CIFAR recipe)."""
  n, h, w, c = x.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (n,))
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(img, off, flip):
    img = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(flip, img[:, ::-1], img)

  return jax.vmap(one)(padded, offsets, flips)


# ----------------------------------------------------------------------------- steps
def make_supervised_step(model, tx: optax.GradientTransformation,
                         augment: bool = False) -> Callable:
  """One step of mean CE on a batch `(x, y)` (`steps.make_step`); returns (state, {loss,
  accuracy}). The step's key draws the augmentation and the model's train-mode rng streams
  (dropout)."""
  adapter = as_adapter(model)

  def loss_fn(variables, batch, key):
    x, y = batch
    if augment:
      x = augment_batch(x, key)
    logits, updates = adapter.apply(variables, x, train=True, rng=key)
    return cross_entropy(logits, y).mean(), (updates, {
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return make_step(loss_fn, tx)


def train_epochs(model, cfg: TrainConfig, state: TrainState, x: jax.Array,
                 y: jax.Array, key: jax.Array, num_epochs: int,
                 tx: optax.GradientTransformation | None = None):
  """Continues `state` for `num_epochs` epochs (the epoch index comes from `state.step`).
  `tx`: the optimizer `state` was initialised with (built once by the caller; default
  `make_optimizer(cfg, steps per epoch)`, the same one)."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe) if tx is None else tx
  step = make_supervised_step(model, tx, cfg.augment)
  return scan_epochs(step, state, (x, y), key, num_epochs, cfg.batch_size,
                     first_epoch=state.step // spe)


def train_steps(model, cfg: TrainConfig, state: TrainState, x: jax.Array, y: jax.Array,
                key: jax.Array, count: int, tx: optax.GradientTransformation | None = None):
  """Continues `state` by `count` steps written out without a loop (`steps.unrolled_steps`):
  the steps `train_epochs` would take next, same batches and keys. `count` divides the
  steps per epoch; ⌈n / batch⌉ / count calls make one epoch. Returns (state, per-step
  metrics). `tx` as for `train_epochs`."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe) if tx is None else tx
  step = make_supervised_step(model, tx, cfg.augment)
  return unrolled_steps(step, state, (x, y), key, cfg.batch_size, count, state.step)


def fit(model, cfg: TrainConfig, variables: Variables, x: jax.Array,
        y: jax.Array, key: jax.Array):
  """Trains `variables` on (x, y) with the recipe; returns (variables, history).

  Pure: `jax.jit(fit, static_argnums=(0, 1))` compiles it, `jax.vmap` runs seeds.
  """
  tx = make_optimizer(cfg, steps_per_epoch(x.shape[0], cfg.batch_size))
  state, history = train_epochs(model, cfg, init_train_state(variables, tx), x, y, key,
                                cfg.epochs, tx)
  return state.variables, history


# ----------------------------------------------------------------------------- prediction

def predict(model, variables: Variables, x: jax.Array, batch_size: int = 1000) -> jax.Array:
  """Eval-mode logits for every row of x, in batches."""
  adapter = as_adapter(model)
  return in_batches(lambda b: adapter.logits(variables, b), x, batch_size)


def predict_features(model, variables: Variables, x: jax.Array, batch_size: int = 1000):
  """Eval-mode (logits, penultimate features) for every row of x (the adapter's features)."""
  adapter = as_adapter(model)
  return in_batches(lambda b: adapter.features(variables, b)[:2], x, batch_size)

