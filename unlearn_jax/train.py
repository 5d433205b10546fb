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
from typing import NamedTuple

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
  one-cycle schedules peak at `peak_fraction` of the steps; `linear_onecycle` starts at
  `start_factor`·lr and ends at `end_factor`·lr); `optimizer`: sgd | adam; SGD's momentum
  is Nesterov's unless `nesterov` is False.

  `augmentation` (when `augment`): `crop_flip` (4-pixel zero-padded random crop, random
  flip each step) or `translate_alternating_flip` (airbench's: 2-pixel reflect-padded
  random translation; each example flipped at random once per run, then every odd epoch
  flipped the other way). `label_smoothing`: the cross-entropy's ε. `bias_lr_scale` ≠ 1:
  BatchNorm biases take lr × that and weight decay ÷ that (the same decay per step;
  airbench's `bias_scaler`). `lookahead_every` > 0: airbench's lookahead EMA of the
  weights from epoch `lookahead_start_epoch` (`lookahead_ema`).
  """
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
  start_factor: float = 0.0
  end_factor: float = 0.0
  augmentation: str = "crop_flip"
  label_smoothing: float = 0.0
  bias_lr_scale: float = 1.0
  lookahead_every: int = 0
  lookahead_start_epoch: int = 3
  lookahead_decay: float = 0.95
  lookahead_decay_pow: float = 3.0


# ----------------------------------------------------------------------------- optimizers
SCHEDULES = ("onecycle", "linear_onecycle", "cosine", "constant")


def make_schedule(name: str, lr: float, total_steps: int, peak_fraction: float = 0.25,
                  start_factor: float = 0.0, end_factor: float = 0.0) -> optax.Schedule:
  """The learning rate by step. `onecycle`: cosine up from lr/25 to lr at `peak_fraction`
  of the steps, cosine down to lr/25,000; `linear_onecycle`: linear from
  `start_factor`·lr to lr at `peak_fraction`, linear to `end_factor`·lr at the end (with
  both 0, PyTorch's OneCycleLR with linear annealing and div factors of 1e6, the Easy Data
  Unlearning Bench's recipe; 0.2, 0.23, 0.07 is airbench's triangle); `cosine`: cosine decay
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
        [optax.linear_schedule(start_factor * lr, lr, peak),
         optax.linear_schedule(lr, end_factor * lr, max(1, total_steps - peak))], [peak])
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps)
  if name == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(f"schedule={name!r} is unknown; allowed: {', '.join(SCHEDULES)}")


def _sgd_or_adam(cfg: TrainConfig, schedule, lr_scale: float = 1.0):
  """The recipe's optimizer at lr × `lr_scale` and weight decay ÷ `lr_scale`."""
  wd = cfg.weight_decay if lr_scale == 1 else cfg.weight_decay / lr_scale
  lr = schedule if lr_scale == 1 else (lambda step: lr_scale * schedule(step))
  if cfg.optimizer == "sgd":
    # A traced weight decay (a searched hyperparameter) is always applied; a Python 0 adds
    # no transform, so the default program is unchanged.
    parts = [optax.add_decayed_weights(wd)] if (
        not isinstance(wd, (int, float)) or wd) else []
    return optax.chain(*parts, optax.sgd(lr, momentum=cfg.momentum or None,
                                         nesterov=bool(cfg.nesterov) and cfg.momentum > 0))
  if cfg.optimizer == "adam":
    return optax.adamw(lr, weight_decay=wd)
  raise ValueError(f"optimizer={cfg.optimizer!r} is unknown; allowed: sgd, adam")


def batch_norm_bias_labels(params) -> dict:
  """"bn_bias" for the `bias` of every BatchNorm layer (a params dict holding `bias` and
  no `kernel`, i.e. a normalisation's shift), "other" for everything else."""
  def label(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
      norm = "bias" in tree and "kernel" not in tree and "embedding" not in tree
      return {k: ("bn_bias" if norm and k == "bias" else "other") if not hasattr(v, "items")
              else label(v) for k, v in tree.items()}
    return "other"
  return label(params)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (Nesterov momentum, coupled weight decay) or Adam, on the recipe's schedule;
  BatchNorm biases at `bias_lr_scale`, airbench's lookahead EMA where the recipe asks."""
  total = cfg.epochs * steps_per_epoch
  schedule = make_schedule(cfg.schedule, cfg.lr, total, cfg.peak_fraction,
                           cfg.start_factor, cfg.end_factor)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.bias_lr_scale != 1:
    parts.append(optax.multi_transform(
        {"bn_bias": _sgd_or_adam(cfg, schedule, cfg.bias_lr_scale),
         "other": _sgd_or_adam(cfg, schedule)}, batch_norm_bias_labels))
  else:
    parts.append(_sgd_or_adam(cfg, schedule))
  if cfg.lookahead_every:
    parts.append(lookahead_ema(cfg.lookahead_every, cfg.lookahead_start_epoch * steps_per_epoch,
                               total, steps_per_epoch, cfg.lookahead_decay,
                               cfg.lookahead_decay_pow))
  return optax.chain(*parts)


class LookaheadState(NamedTuple):
  count: jax.Array
  started: jax.Array
  slow: optax.Params


def lookahead_ema(every: int, start_step: int, total_steps: int, steps_per_epoch: int,
                  decay: float = 0.95, decay_pow: float = 3.0) -> optax.GradientTransformation:
  """Airbench's lookahead (Jordan 2024, `airbench94.py`'s `LookaheadState`), as the last
  transform of an optimizer chain (it needs the parameters).

  Counting steps t = 1, 2, …: at every t that `every` divides, from `start_step` on, the
  first such step copies the weights w into a slow copy s; each later one moves
  s ← s + (1 − ρ_t)(w − s) with ρ_t = decay^every · (t / total_steps)^decay_pow and sets
  w ← s. At the end of every epoch after the slow copy exists, w ← s. The inner
  optimizer's momentum is left as it is (airbench's way). Applies to `params` only.
  """
  rho_base = float(decay) ** int(every)

  def init(params):
    return LookaheadState(jnp.zeros([], jnp.int32), jnp.zeros([], bool),
                          jax.tree_util.tree_map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("lookahead_ema needs the parameters (optax.apply_updates' params)")
    t = state.count + 1
    fast = optax.apply_updates(params, updates)
    sync = (t % every == 0) & (t > start_step)
    first = sync & ~state.started
    rho = rho_base * (t / total_steps) ** decay_pow
    moved = jax.tree_util.tree_map(lambda s, w: s + (1 - rho) * (w - s), state.slow, fast)
    slow = jax.tree_util.tree_map(
        lambda w, m, s: jnp.where(first, w, jnp.where(sync, m, s)), fast, moved, state.slow)
    started = state.started | first
    copy_back = (sync & ~first) | (started & (t % steps_per_epoch == 0))
    new = jax.tree_util.tree_map(lambda s, w: jnp.where(copy_back, s, w), slow, fast)
    updates = jax.tree_util.tree_map(lambda n, p: n - p, new, params)
    return updates, LookaheadState(t, started, slow)

  return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- augmentation
AUGMENTATIONS = ("crop_flip", "translate_alternating_flip")
# fold_in data for the per-run flips of `translate_alternating_flip` (epochs use 0, 1, ...).
_FLIP_STREAM = 0x0F11F


def augment_batch(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop (zero padding `pad`) and horizontal flip, per example (CIFAR recipe)."""
  n, h, w, c = x.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (n,))
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return _crop_and_flip(padded, offsets, flips, h, w)


def translate_batch(x: jax.Array, key: jax.Array, flips: jax.Array, pad: int = 2):
  """Airbench's augmentation: a random translation by up to `pad` pixels each way (reflect
  padding), then a horizontal flip where `flips` is True."""
  n, h, w, _ = x.shape
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return _crop_and_flip(padded, offsets, flips, h, w)


def _crop_and_flip(padded, offsets, flips, h, w):
  def one(img, off, flip):
    img = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jnp.where(flip, img[:, ::-1], img)
  return jax.vmap(one)(padded, offsets, flips)


def run_flips(key: jax.Array, n: int) -> jax.Array:
  """`translate_alternating_flip`'s per-example flips of a run (epoch 0's; odd epochs
  flip the other way)."""
  return jax.random.bernoulli(jax.random.fold_in(key, _FLIP_STREAM), 0.5, (n,))


def augmented(style: str | None, batch, key: jax.Array, step, steps_per_epoch: int):
  """The images of `batch` as step `step` of a run trains on them: unchanged (`style`
  None), `augment_batch`ed (`crop_flip`) or `translate_batch`ed with the run's flips
  (`batch[2]`), reversed on odd epochs (`translate_alternating_flip`)."""
  x = batch[0]
  if style == "crop_flip":
    return augment_batch(x, key)
  if style == "translate_alternating_flip":
    odd = (step // steps_per_epoch) % 2 == 1
    return translate_batch(x, key, batch[2] ^ odd)
  return x


# ----------------------------------------------------------------------------- steps
def make_supervised_step(model, tx: optax.GradientTransformation, augment=False, *,
                         label_smoothing: float = 0.0, steps_per_epoch: int = 0) -> Callable:
  """One step of mean CE (label-smoothed by `label_smoothing`) on a batch `(x, y)`
  (`steps.make_step`); returns (state, {loss, accuracy}). The step's key draws the
  augmentation and the model's train-mode rng streams (dropout). `augment`: False, True
  (`crop_flip`) or an `AUGMENTATIONS` name; `translate_alternating_flip` takes batches
  `(x, y, run flips)` (`run_flips`, gathered like the examples) and `steps_per_epoch` to
  tell odd epochs."""
  adapter = as_adapter(model)
  style = ("crop_flip" if augment is True else augment) if augment else None
  if style is not None and style not in AUGMENTATIONS:
    raise ValueError(f"augmentation={style!r} is unknown; allowed: {', '.join(AUGMENTATIONS)}")
  if style == "translate_alternating_flip" and steps_per_epoch < 1:
    raise ValueError("translate_alternating_flip needs steps_per_epoch >= 1 (odd epochs flip)")

  def loss_fn(variables, batch, key, step):
    x, y = augmented(style, batch, key, step, steps_per_epoch), batch[1]
    logits, updates = adapter.apply(variables, x, train=True, rng=key)
    if label_smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets)
    else:
      loss = cross_entropy(logits, y)
    return loss.mean(), (updates, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)})

  return make_step(loss_fn, tx, with_step=True)


def recipe_step(model, cfg: TrainConfig, tx: optax.GradientTransformation, n: int):
  """The recipe's step (`make_supervised_step`) on a training set of `n` examples."""
  return make_supervised_step(model, tx, cfg.augment and cfg.augmentation,
                              label_smoothing=cfg.label_smoothing,
                              steps_per_epoch=steps_per_epoch(n, cfg.batch_size))


def recipe_data(cfg: TrainConfig, x: jax.Array, y: jax.Array, key: jax.Array):
  """What the recipe's step batches: (x, y), and the run's flips for
  `translate_alternating_flip`."""
  if cfg.augment and cfg.augmentation == "translate_alternating_flip":
    return (x, y, run_flips(key, x.shape[0]))
  return (x, y)


def train_epochs(model, cfg: TrainConfig, state: TrainState, x: jax.Array,
                 y: jax.Array, key: jax.Array, num_epochs: int,
                 tx: optax.GradientTransformation | None = None):
  """Continues `state` for `num_epochs` epochs (the epoch index comes from `state.step`).
  `tx`: the optimizer `state` was initialised with (built once by the caller; default
  `make_optimizer(cfg, steps per epoch)`, the same one)."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe) if tx is None else tx
  step = recipe_step(model, cfg, tx, x.shape[0])
  return scan_epochs(step, state, recipe_data(cfg, x, y, key), key, num_epochs,
                     cfg.batch_size, first_epoch=state.step // spe)


def train_steps(model, cfg: TrainConfig, state: TrainState, x: jax.Array, y: jax.Array,
                key: jax.Array, count: int, tx: optax.GradientTransformation | None = None):
  """Continues `state` by `count` steps written out without a loop (`steps.unrolled_steps`):
  the steps `train_epochs` would take next, same batches and keys. `count` divides the
  steps per epoch; ⌈n / batch⌉ / count calls make one epoch. Returns (state, per-step
  metrics). `tx` as for `train_epochs`."""
  spe = steps_per_epoch(x.shape[0], cfg.batch_size)
  tx = make_optimizer(cfg, spe) if tx is None else tx
  step = recipe_step(model, cfg, tx, x.shape[0])
  return unrolled_steps(step, state, recipe_data(cfg, x, y, key), key, cfg.batch_size, count,
                        state.step)


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


def predict_tta(model, variables: Variables, x: jax.Array, level: int = 2,
                batch_size: int = 1000) -> jax.Array:
  """Eval-mode logits with airbench's test-time augmentation: `level` 0 plain, 1 the mean
  of the image and its mirror, 2 half that and half the mean of the mirror-averaged
  logits of the image translated by one pixel up-left and down-right (reflect padding)."""
  if level not in (0, 1, 2):
    raise ValueError(f"level={level!r}: allowed 0 (none), 1 (mirror), 2 (mirror + translate)")
  adapter = as_adapter(model)

  def mirrored(b):
    return 0.5 * adapter.logits(variables, b) + 0.5 * adapter.logits(variables, b[:, :, ::-1])

  def one(b):
    if level == 0:
      return adapter.logits(variables, b)
    if level == 1:
      return mirrored(b)
    h, w = b.shape[1:3]
    padded = jnp.pad(b, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = 0.5 * (mirrored(padded[:, :h, :w]) + mirrored(padded[:, 2:h + 2, 2:w + 2]))
    return 0.5 * mirrored(b) + 0.5 * shifted

  return in_batches(one, x, batch_size)
