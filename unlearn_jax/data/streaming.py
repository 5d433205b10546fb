"""Streaming input: train from a random-access source without the dataset in device memory.

The in-memory path (`steps.scan_epochs`) gathers each batch on the device from arrays
that sit there whole. For data that should not, `fit_streaming` reads each batch on the
host from a random-access *source* (a `tfds.data_source`, or `ArraySource` over host
arrays), converts it with a `transform`, and hands it to the *same* pure step
(`train.make_supervised_step`) as one global array:

- the batch order is `batching.epoch_indices(fold_in(fold_in(key, epoch), 0), n, B)` and the
  step keys those of `steps.scan_epochs`, so streaming training is the in-memory training
  (a test checks they agree);
- with several processes (multi-host), each reads only its rows of every global batch
  (`parallel.local_batch_slice`) and `jax.make_array_from_process_local_data` assembles
  the global array split over the mesh's `data` axis (`parallel.global_batch`);
- a background thread reads `prefetch` batches ahead, so decoding overlaps the steps.

    src = streaming.tfds_source("cifar10", "train")        # array_record, no TensorFlow
    tf = streaming.image_transform(scale=255.0, mean=..., std=...)
    variables, history = streaming.fit_streaming(model, cfg, variables, src, key, tf, mesh)
"""

from __future__ import annotations

import queue
import threading
from typing import Any
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import batching, parallel
from unlearn_jax import train as train_lib

Transform = Callable[[Sequence[dict]], tuple]


class ArraySource:
  """A random-access source over host arrays: record i is {"image": x[i], "label": y[i]}."""

  def __init__(self, x: np.ndarray, y: np.ndarray):
    if len(x) != len(y):
      raise ValueError(f"x has {len(x)} rows, y {len(y)}")
    self.x, self.y = np.asarray(x), np.asarray(y)

  def __len__(self) -> int:
    return len(self.y)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.x[i], "label": self.y[i]}

  def __getitems__(self, idx: Sequence[int]) -> list:
    return [self[i] for i in idx]


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split)`: random access over array_record files (reading needs
  no TensorFlow). Raises `DatasetError` with one line when tfds cannot provide it."""
  import tensorflow_datasets as tfds
  from unlearn_jax.data.datasets import DatasetError
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # tfds raises many types
    raise DatasetError(f"tfds could not provide {name}[{split}] as a data source "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def image_transform(scale: float = 255.0, mean: Any = 0.0, std: Any = 1.0) -> Transform:
  """Records → (x float32 [B, H, W, C] standardised as `(image / scale − mean) / std`,
  y int32 [B]): the in-memory loaders' normalisation, per batch."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def transform(records):
    x = np.stack([np.asarray(r["image"], np.float32) for r in records]) / scale
    if x.ndim == 3:
      x = x[..., None]
    y = np.asarray([int(r["label"]) for r in records], np.int32)
    return (x - mean) / std, y

  return transform


def channel_statistics(source, scale: float = 255.0, sample: int = 10_000, seed: int = 0):
  """Per-channel mean and std of `image / scale` over up to `sample` random records (the
  normalisation constants, without reading the whole source)."""
  n = len(source)
  idx = np.sort(np.random.default_rng(seed).permutation(n)[:min(n, sample)])
  x = image_transform(scale)(_get(source, [int(i) for i in idx]))[0]
  return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2)) + 1e-6


def _get(source, idx: Sequence[int]) -> list:
  try:
    return list(source.__getitems__(list(idx)))
  except (AttributeError, TypeError):  # mock sources index one record at a time
    return [source[i] for i in idx]


def epoch_plan(key: jax.Array, epoch: int, n: int, batch_size: int):
  """(indices [steps, B] on the host, step keys [steps]) of one epoch: `batching.epoch_plan`."""
  idx, keys = batching.epoch_plan(key, epoch, n, batch_size)
  return np.asarray(idx), keys


def host_batches(source, idx: np.ndarray, transform: Transform, mesh=None, prefetch: int = 2):
  """Yields the global batches of one epoch's index plan: this process's rows read from
  `source` and transformed in a background thread, `prefetch` batches ahead."""
  rows = parallel.local_batch_slice(idx.shape[1])
  out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
  stop = threading.Event()

  def reader():
    try:
      for b in range(idx.shape[0]):
        if stop.is_set():
          return
        out.put(transform(_get(source, [int(i) for i in idx[b, rows]])))
      out.put(None)
    except BaseException as e:  # surface reader errors in the training loop
      out.put(e)

  thread = threading.Thread(target=reader, daemon=True)
  thread.start()
  try:
    while True:
      item = out.get()
      if item is None:
        return
      if isinstance(item, BaseException):
        raise item
      if mesh is not None and (mesh.shape["data"] > 1 or jax.process_count() > 1):
        yield parallel.global_batch(item, mesh)
      else:
        yield jax.tree_util.tree_map(jnp.asarray, item)
  finally:
    stop.set()


def train_step(model, cfg: train_lib.TrainConfig, steps_per_epoch: int) -> Callable:
  """The jitted supervised step `fit_streaming` runs (the recipe's optimizer over
  `steps_per_epoch` steps per epoch); build it once and pass it to every call."""
  if cfg.augment and cfg.augmentation == "translate_alternating_flip":
    raise ValueError("augmentation='translate_alternating_flip' needs the whole training set "
                     "in memory (its per-run flips); streamed training allows: crop_flip")
  tx = train_lib.make_optimizer(cfg, steps_per_epoch)
  return jax.jit(train_lib.make_supervised_step(
      model, tx, cfg.augment and cfg.augmentation, label_smoothing=cfg.label_smoothing,
      steps_per_epoch=steps_per_epoch))


def fit_streaming(model, cfg: train_lib.TrainConfig, variables, source, key: jax.Array,
                  transform: Transform | None = None, mesh=None, prefetch: int = 2,
                  first_epoch: int = 0, on_epoch: Callable | None = None,
                  step: Callable | None = None):
  """`train.fit` with batches streamed from `source` (see the module docstring).

  `transform` defaults to records that are already model inputs (`ArraySource` over
  normalised arrays). With a `mesh`, weights are replicated and each batch split over
  its `data` axis. `on_epoch(epoch, state, metrics)` is called after every epoch (progress,
  checkpoints). `step`: the jitted `train_step(model, cfg, steps_per_epoch)` of an earlier
  call to reuse (seed after seed: one compilation). Returns (variables, per-epoch mean
  metrics)."""
  transform = transform or image_transform(scale=1.0)
  n = len(source)
  if mesh is None and jax.process_count() > 1:
    raise ValueError("fit_streaming on several processes needs a mesh (parallel.make_mesh())")
  if mesh is not None:
    parallel.check_batch_size(cfg.batch_size, mesh)
  spe = train_lib.steps_per_epoch(n, cfg.batch_size)
  tx = train_lib.make_optimizer(cfg, spe)
  step = step or train_step(model, cfg, spe)
  state = train_lib.init_train_state(variables, tx)
  if mesh is not None:
    state = parallel.replicate(state, mesh)
  history = []
  for epoch in range(first_epoch, cfg.epochs):
    idx, keys = epoch_plan(key, epoch, n, cfg.batch_size)
    metrics = []
    for b, batch in enumerate(host_batches(source, idx, transform, mesh, prefetch)):
      state, m = step(state, batch, keys[b])
      metrics.append(m)
    mean = jax.tree_util.tree_map(lambda *ms: jnp.mean(jnp.stack(ms)), *metrics)
    history.append(mean)
    if on_epoch is not None:
      on_epoch(epoch, state, mean)
  stacked = jax.tree_util.tree_map(lambda *hs: jnp.stack(hs), *history) if history else None
  return state.variables, stacked
