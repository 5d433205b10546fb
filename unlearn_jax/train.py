"""Pure training: a train step, epochs as `lax.scan` over device-resident data.

Everything here is a pure function of (variables, optimizer state, data, PRNG key):
callers `jax.jit` it and `jax.vmap` it over seeds. Batches are index permutations
drawn from the key; an epoch covers every example (the last batch wraps around),
so small forget sets still take full steps.

The epoch key is `fold_in(key, epoch)` with the epoch read from the step counter in
the state, so running epochs in chunks (for progress lines, or after a resume) gives
the same result as one call over all of them.

Loop modes. `scan` (default) compiles all epochs into one `lax.scan` program. XLA's
CPU backend runs a convolution whose kernel is carried through a while loop ~50x
slower than the same step outside a loop (jax-ml/jax#12868; measured here: 9 vs 460
images/s for the small CNN), so for conv models on CPUs the runner switches to `host`:
a Python loop over one jitted step, with the same permutations, keys and math.

Every batch drawn here passes through `parallel.shard_batch`: inside
`parallel.data_parallel(mesh)` it is split over the mesh's `data` axis (weights stay
replicated), outside it nothing changes.
In `host` mode a method must be called eagerly (not under an outer `jax.jit`);
`jax.vmap` still works. `loop_mode("host")` is a context manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unlearn_jax.parallel import shard_batch

Variables = dict  # {"params": ..., "batch_stats": ...}


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


def forward(model: nn.Module, variables: Variables, x: jax.Array, train: bool,
            features: bool = False):
  """Runs the model; in train mode also returns the updated batch statistics."""
  if train and variables.get("batch_stats"):
    out, mutated = model.apply(variables, x, train=True, features=features,
                               mutable=["batch_stats"])
    return out, mutated["batch_stats"]
  out = model.apply(variables, x, train=train, features=features)
  return out, variables.get("batch_stats", {})


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
    if cfg.weight_decay:
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


LOOP_MODES = ("scan", "host")
_loop_mode = ["scan"]
_batch_callback = [None]


@contextlib.contextmanager
def on_host_batch(callback):
  """In `host` mode, calls `callback(batch_index, num_batches)` after every step
  (progress lines inside long CPU epochs)."""
  previous, _batch_callback[0] = _batch_callback[0], callback
  try:
    yield
  finally:
    _batch_callback[0] = previous


def get_loop_mode() -> str:
  return _loop_mode[0]


@contextlib.contextmanager
def loop_mode(mode: str):
  """Temporarily sets how `scan_epochs` loops: `scan` (compiled) or `host` (Python)."""
  if mode not in LOOP_MODES:
    raise ValueError(f"loop mode {mode!r} is unknown; allowed: {', '.join(LOOP_MODES)}")
  previous, _loop_mode[0] = _loop_mode[0], mode
  try:
    yield
  finally:
    _loop_mode[0] = previous


def default_loop_mode(model_name: str) -> str:
  """`host` for conv models on CPU (jax-ml/jax#12868), else `scan`."""
  if jax.default_backend() == "cpu" and model_name in ("cnn", "resnet18"):
    return "host"
  return "scan"


def _host_epochs(step_fn, carry, data, key, num_epochs, batch_size, first_epoch):
  """`scan_epochs` as a Python loop over one jitted step (same keys, same batches)."""
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  run_batch = jax.jit(lambda c, d, bidx, bkey: step_fn(
      c, shard_batch(jax.tree_util.tree_map(lambda a: a[bidx], d)), bkey))
  history = []
  for epoch in range(int(first_epoch), int(first_epoch) + num_epochs):
    ekey = jax.random.fold_in(key, epoch)
    idx = epoch_indices(jax.random.fold_in(ekey, 0), n, batch_size)
    bkeys = jax.random.split(jax.random.fold_in(ekey, 1), idx.shape[0])
    metrics = []
    for b in range(idx.shape[0]):
      carry, m = run_batch(carry, data, idx[b], bkeys[b])
      metrics.append(m)
      if _batch_callback[0] is not None:
        _batch_callback[0](b + 1, idx.shape[0])
    history.append(jax.tree_util.tree_map(lambda *ms: jnp.mean(jnp.stack(ms)), *metrics))
  if not history:
    return carry, None
  return carry, jax.tree_util.tree_map(lambda *hs: jnp.stack(hs), *history)


def scan_epochs(step_fn: Callable, carry: Any, data: Any, key: jax.Array, num_epochs: int,
                batch_size: int, first_epoch: jax.Array | int = 0):
  """Runs `num_epochs` epochs of `step_fn(carry, batch, key) -> (carry, metrics)`.

  `data` is a pytree of arrays sharing their leading (example) axis; each epoch draws
  a permutation from `fold_in(key, epoch)`. Returns (carry, per-epoch mean metrics).
  Compiled as `lax.scan` in `scan` mode, a host loop in `host` mode (module docstring).
  """
  if get_loop_mode() == "host":
    return _host_epochs(step_fn, carry, data, key, num_epochs, batch_size, first_epoch)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]

  def one_epoch(carry, epoch):
    ekey = jax.random.fold_in(key, epoch)
    idx = epoch_indices(jax.random.fold_in(ekey, 0), n, batch_size)
    bkeys = jax.random.split(jax.random.fold_in(ekey, 1), idx.shape[0])

    def body(carry, xs):
      bidx, bkey = xs
      batch = shard_batch(jax.tree_util.tree_map(lambda a: a[bidx], data))
      return step_fn(carry, batch, bkey)

    carry, metrics = jax.lax.scan(body, carry, (idx, bkeys))
    return carry, jax.tree_util.tree_map(jnp.mean, metrics)

  epochs = jnp.arange(num_epochs) + first_epoch
  return jax.lax.scan(one_epoch, carry, epochs)


def repeat_steps(step_fn: Callable, carry: Any, key: jax.Array, num_steps: int):
  """Runs `step_fn(carry, key) -> (carry, metrics)` `num_steps` times with keys split from
  `key`: a `lax.scan` in `scan` mode, a Python loop over the jitted step in `host` mode
  (for data-free loops such as zero-shot generators). Returns (carry, stacked metrics)."""
  keys = jax.random.split(key, num_steps)
  if get_loop_mode() == "scan":
    return jax.lax.scan(lambda c, k: step_fn(c, k), carry, keys)
  run = jax.jit(step_fn)
  history = []
  for i in range(num_steps):
    carry, m = run(carry, keys[i])
    history.append(m)
    if _batch_callback[0] is not None:
      _batch_callback[0](i + 1, num_steps)
  return carry, jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *history)


def map_batches(fn: Callable, xs: Any):
  """`[fn(x) for x in xs]` over the leading axis, stacked: `lax.map` in `scan` mode, a
  Python loop over the jitted `fn` in `host` mode. Gradients with respect to convolution
  kernels inside a compiled loop hit the same XLA:CPU slow path as training does (2.4
  vs ~400 images/s for the CIFAR CNN's batch gradients), so host mode avoids the loop."""
  if get_loop_mode() == "scan":
    return jax.lax.map(fn, xs)
  run = jax.jit(fn)
  n = jax.tree_util.tree_leaves(xs)[0].shape[0]
  outs = [run(jax.tree_util.tree_map(lambda a: a[i], xs)) for i in range(n)]
  return jax.tree_util.tree_map(lambda *o: jnp.stack(o), *outs)


def make_supervised_step(model: nn.Module, tx: optax.GradientTransformation,
                         augment: bool = False) -> Callable:
  """One SGD step of mean CE on a batch `(x, y)`; returns (state, {loss, accuracy})."""

  def step(state: TrainState, batch, key):
    x, y = batch
    if augment:
      x = augment_batch(x, key)

    def loss_fn(params):
      logits, new_stats = forward(model, {**state.variables, "params": params}, x, train=True)
      loss = cross_entropy(logits, y).mean()
      return loss, (new_stats, jnp.mean(jnp.argmax(logits, -1) == y))

    (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.variables["params"])
    updates, opt_state = tx.update(grads, state.opt_state, state.variables["params"])
    params = optax.apply_updates(state.variables["params"], updates)
    new_state = TrainState({"params": params, "batch_stats": new_stats}, opt_state,
                           state.step + 1)
    return new_state, {"loss": loss, "accuracy": acc}

  return step


def init_train_state(variables: Variables, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


def train_epochs(model: nn.Module, cfg: TrainConfig, state: TrainState, x: jax.Array,
                 y: jax.Array, key: jax.Array, num_epochs: int):
  """Continues `state` for `num_epochs` epochs (the epoch index comes from `state.step`)."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe)
  step = make_supervised_step(model, tx, cfg.augment)
  return scan_epochs(step, state, (x, y), key, num_epochs, cfg.batch_size,
                     first_epoch=state.step // spe)


def fit(model: nn.Module, cfg: TrainConfig, variables: Variables, x: jax.Array,
        y: jax.Array, key: jax.Array):
  """Trains `variables` on (x, y) with the recipe; returns (variables, history).

  Pure: `jax.jit(fit, static_argnums=(0, 1))` compiles it, `jax.vmap` runs seeds.
  """
  tx = make_optimizer(cfg, steps_per_epoch(x.shape[0], cfg.batch_size))
  state, history = train_epochs(model, cfg, init_train_state(variables, tx), x, y, key,
                                cfg.epochs)
  return state.variables, history


# ----------------------------------------------------------------------------- prediction
def predict(model: nn.Module, variables: Variables, x: jax.Array, batch_size: int = 1000,
            features: bool = False):
  """Logits (or (logits, features)) for every row of x, in eval mode, in batches."""
  n = x.shape[0]
  if n <= batch_size:
    return model.apply(variables, shard_batch(x), train=False, features=features)
  nb = math.ceil(n / batch_size)
  padded = jnp.pad(x, ((0, nb * batch_size - n),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(lambda b: model.apply(variables, shard_batch(b), train=False,
                                          features=features),
                    padded.reshape((nb, batch_size) + x.shape[1:]))
  return jax.tree_util.tree_map(lambda a: a.reshape((nb * batch_size,) + a.shape[2:])[:n], out)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)
