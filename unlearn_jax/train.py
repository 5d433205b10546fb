"""Pure training: a train step, epochs as `lax.scan` over device-resident data.

Everything here is a pure function of (variables, optimizer state, data, PRNG key):
callers `jax.jit` it and `jax.vmap` it over seeds. Batches are index permutations
drawn from the key; an epoch covers every example (the last batch wraps around),
so small forget sets still take full steps. `scan_epochs` is the one epoch loop of the
library: training, every method's phases and the population driver all run through it.

The epoch key is `fold_in(key, epoch)` with the epoch read from the step counter in
the state, so running epochs in chunks (for progress lines, or after a resume) gives
the same result as one call over all of them.

A model is anything `adapter.as_adapter` accepts: a `ModelAdapter`, a library model, or a
plain Linen module. Variables are the model's own collections (`params`, and whatever
else it has); train mode updates the adapter's mutable collections and carries the rest.

There is one loop mode. XLA:CPU's slow path for convolutions inside compiled loops
(jax-ml/jax#12868) is avoided by the models themselves (`models.Conv`: patches + matmul
on the CPU backend), not by leaving the loop.

Every batch drawn here passes through `parallel.shard_batch`: inside
`parallel.data_parallel(mesh)` (that is, `jax.set_mesh`) it is split over the mesh's
`data` axis (weights stay replicated); outside it nothing changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from unlearn_jax.adapter import as_adapter
from unlearn_jax.parallel import shard_batch

Variables = dict  # {"params": ..., and the model's other collections}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training recipe. `schedule`: onecycle | cosine | constant; `optimizer`: sgd | adam."""
  epochs: int = 30
  batch_size: int = 128
  lr: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  schedule: str = "onecycle"
  optimizer: str = "sgd"
  augment: bool = False
  grad_clip: float = 0.0


@flax.struct.dataclass
class TrainState:
  variables: Variables
  opt_state: Any
  step: jax.Array


# ----------------------------------------------------------------------------- losses
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE with integer labels: −log softmax(logits)_y."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def forward(model, variables: Variables, x: jax.Array, train: bool, rng=None):
  """(logits, updates): the model through its adapter; `updates` holds the collections a
  train-mode call mutated (merge with `{**variables, **updates}`)."""
  return as_adapter(model).apply(variables, x, train=train, rng=rng)


# ----------------------------------------------------------------------------- optimizers
def make_schedule(name: str, lr: float, total_steps: int) -> optax.Schedule:
  total_steps = max(int(total_steps), 1)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(total_steps, lr, pct_start=0.25,
                                          div_factor=25.0, final_div_factor=1e3)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps)
  if name == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(f"schedule={name!r} is unknown; allowed: onecycle, cosine, constant")


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov momentum, coupled weight decay) or Adam, on the recipe's schedule."""
  schedule = make_schedule(cfg.schedule, cfg.lr, cfg.epochs * steps_per_epoch)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.optimizer == "sgd":
    # A traced weight decay (a searched hyperparameter) is always applied; a Python 0 adds
    # no transform, so the default program is unchanged.
    if not isinstance(cfg.weight_decay, (int, float)) or cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.momentum > 0))
  elif cfg.optimizer == "adam":
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay))
  else:
    raise ValueError(f"optimizer={cfg.optimizer!r} is unknown; allowed: sgd, adam")
  return optax.chain(*parts)


def steps_per_epoch(n: int, batch_size: int) -> int:
  return max(1, math.ceil(n / batch_size))


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


# ----------------------------------------------------------------------------- epoch loops
def epoch_indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """[steps, batch_size] indices of a permutation; the last batch wraps around."""
  nb = steps_per_epoch(n, batch_size)
  perm = jax.random.permutation(key, n)
  return jnp.resize(perm, (nb * batch_size,)).reshape(nb, batch_size)


def epoch_plan(key: jax.Array, epoch, n: int, batch_size: int):
  """(batch indices [steps, batch_size], step keys [steps]) of epoch `epoch`: the one
  derivation of an epoch's order, shared by `scan_epochs` and streaming input."""
  ekey = jax.random.fold_in(key, epoch)
  idx = epoch_indices(jax.random.fold_in(ekey, 0), n, batch_size)
  return idx, jax.random.split(jax.random.fold_in(ekey, 1), idx.shape[0])


def scan_epochs(step_fn: Callable, carry: Any, data: Any, key: jax.Array, num_epochs: int,
                batch_size: int, first_epoch: jax.Array | int = 0):
  """Runs `num_epochs` epochs of `step_fn(carry, batch, key) -> (carry, metrics)`.

  `data` is a pytree of arrays sharing their leading (example) axis; each epoch draws
  a permutation from `fold_in(key, epoch)`. Returns (carry, per-epoch mean metrics).
  NumPy leaves are taken as device arrays first (they may be indexed by traced indices).
  """
  data = jax.tree_util.tree_map(jnp.asarray, data)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]

  def one_epoch(carry, epoch):
    idx, bkeys = epoch_plan(key, epoch, n, batch_size)

    def body(carry, xs):
      bidx, bkey = xs
      batch = shard_batch(jax.tree_util.tree_map(lambda a: a[bidx], data))
      return step_fn(carry, batch, bkey)

    carry, metrics = jax.lax.scan(body, carry, (idx, bkeys))
    return carry, jax.tree_util.tree_map(jnp.mean, metrics)

  epochs = jnp.arange(num_epochs) + first_epoch
  return jax.lax.scan(one_epoch, carry, epochs)


def repeat_steps(step_fn: Callable, carry: Any, key: jax.Array, num_steps: int):
  """Runs `step_fn(carry, key) -> (carry, metrics)` `num_steps` times as one `lax.scan`,
  with keys split from `key` (data-free loops such as zero-shot generators). Returns
  (carry, stacked metrics)."""
  return jax.lax.scan(step_fn, carry, jax.random.split(key, num_steps))


def make_supervised_step(model, tx: optax.GradientTransformation,
                         augment: bool = False) -> Callable:
  """One step of mean CE on a batch `(x, y)`; returns (state, {loss, accuracy}). The step's
  key draws the augmentation and the model's train-mode rng streams (dropout)."""
  adapter = as_adapter(model)

  def step(state: TrainState, batch, key):
    x, y = batch
    if augment:
      x = augment_batch(x, key)

    def loss_fn(params):
      logits, updates = adapter.apply({**state.variables, "params": params}, x, train=True,
                                      rng=key)
      loss = cross_entropy(logits, y).mean()
      return loss, (updates, jnp.mean(jnp.argmax(logits, -1) == y))

    (loss, (updates, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.variables["params"])
    deltas, opt_state = tx.update(grads, state.opt_state, state.variables["params"])
    params = optax.apply_updates(state.variables["params"], deltas)
    new_state = TrainState({**state.variables, **updates, "params": params}, opt_state,
                           state.step + 1)
    return new_state, {"loss": loss, "accuracy": acc}

  return step


def init_train_state(variables: Variables, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


def train_epochs(model, cfg: TrainConfig, state: TrainState, x: jax.Array,
                 y: jax.Array, key: jax.Array, num_epochs: int):
  """Continues `state` for `num_epochs` epochs (the epoch index comes from `state.step`)."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe)
  step = make_supervised_step(model, tx, cfg.augment)
  return scan_epochs(step, state, (x, y), key, num_epochs, cfg.batch_size,
                     first_epoch=state.step // spe)


def fit(model, cfg: TrainConfig, variables: Variables, x: jax.Array,
        y: jax.Array, key: jax.Array):
  """Trains `variables` on (x, y) with the recipe; returns (variables, history).

  Pure: `jax.jit(fit, static_argnums=(0, 1))` compiles it, `jax.vmap` runs seeds.
  """
  tx = make_optimizer(cfg, steps_per_epoch(x.shape[0], cfg.batch_size))
  state, history = train_epochs(model, cfg, init_train_state(variables, tx), x, y, key,
                                cfg.epochs)
  return state.variables, history


# ----------------------------------------------------------------------------- prediction
def _in_batches(fn: Callable, x: jax.Array, batch_size: int):
  """fn over fixed-size batches of x (`lax.map`, the last batch padded), rows restored."""
  x = jnp.asarray(x)
  n = x.shape[0]
  if n <= batch_size:
    return fn(shard_batch(x))
  nb = math.ceil(n / batch_size)
  padded = jnp.pad(x, ((0, nb * batch_size - n),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(lambda b: fn(shard_batch(b)), padded.reshape((nb, batch_size) + x.shape[1:]))
  return jax.tree_util.tree_map(lambda a: a.reshape((nb * batch_size,) + a.shape[2:])[:n], out)


def predict(model, variables: Variables, x: jax.Array, batch_size: int = 1000) -> jax.Array:
  """Eval-mode logits for every row of x, in batches."""
  adapter = as_adapter(model)
  return _in_batches(lambda b: adapter.logits(variables, b), x, batch_size)


def predict_features(model, variables: Variables, x: jax.Array, batch_size: int = 1000):
  """Eval-mode (logits, penultimate features) for every row of x (the adapter's features)."""
  adapter = as_adapter(model)
  return _in_batches(lambda b: adapter.features(variables, b)[:2], x, batch_size)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)
