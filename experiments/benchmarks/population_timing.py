"""Timing a population's training, ours and PyTorch's: the measurements
`experiments.benchmarks.population_benchmark` (CPU) and `experiments.benchmarks.gpu_benchmark` (GPU) print.

No flags here (both scripts import it). PyTorch is imported only by `torch_population`.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import models, train
from unlearn_jax.population import PopulationProgram


def jax_population(spec, ds, cfg, n: int, mode: str, repeats: int, *, tta: int = 0,
                   init_images: int = 0):
  """N members of `spec` (a model spec or a module) trained by `PopulationProgram` in
  `mode`: (median training seconds, compile seconds, member test accuracies).
  `init_images` > 0: the models' data-dependent initialisation (`models.data_init`) reads
  that many training images, inside each member's program. `tta`: `train.predict_tta`'s
  level for the accuracies."""
  model = models.get_model(spec, ds.num_classes) if isinstance(spec, str) else spec
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  init_x = x[:init_images] if init_images else None

  def fit_member(key, xx, yy, images):
    k_init, k_train = jax.random.split(key)
    variables = models.init_variables(model, k_init, ds.input_shape)
    if images is not None:
      variables = models.data_init(model, variables, images)
    return train.fit(model, cfg, variables, xx, yy, k_train)[0]

  program = PopulationProgram(fit_member, (0, None, None, None), mode=mode)
  keys = jax.random.split(jax.random.PRNGKey(n), n)
  program.calls((keys, x, y, init_x))              # compiles every executable the run needs
  seconds = []
  for _ in range(repeats):
    trained = program(keys, x, y, init_x)
    seconds.append(program.seconds)
  logits = PopulationProgram(lambda v, xx: train.predict_tta(model, v, xx, tta), (0, None),
                             mode=mode)(trained, jnp.asarray(ds.test_x))
  acc = np.asarray(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(ds.test_y), axis=-1))
  return statistics.median(seconds), program.compile_seconds, acc


def torch_population(spec: str, ds, cfg, n: int, stacked: bool, repeats: int,
                     device: str = "cpu"):
  """N members of `spec` in PyTorch on `device`, one network of N members (`stacked`) or
  N networks one at a time: (median training seconds, 0, member test accuracies)."""
  import torch

  from . import torch_population as tp
  base, kwargs = models.parse_model_spec(spec)
  as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
  x, tx = as_torch(ds.train_x.transpose(0, 3, 1, 2)), as_torch(ds.test_x.transpose(0, 3, 1, 2))
  y, ty = as_torch(ds.train_y.astype(np.int64)), as_torch(ds.test_y.astype(np.int64))
  steps = train.steps_per_epoch(len(ds.train_y), cfg.batch_size)
  schedule = train.make_schedule(cfg.schedule, cfg.lr, cfg.epochs * steps, cfg.peak_fraction,
                                 cfg.start_factor, cfg.end_factor)
  lr_by_step = np.asarray(jax.vmap(schedule)(jnp.arange(cfg.epochs * steps)))
  groups = [n] if stacked else [1] * n
  seconds, acc = [], []
  for r in range(repeats):
    acc = []
    tp.synchronize(device)
    t0 = time.perf_counter()
    for g, members in enumerate(groups):
      torch.manual_seed(1000 * r + g)
      net = tp.build(base, kwargs, members, ds.input_shape, ds.num_classes).to(device)
      tp.train_members(net, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr_by_step=lr_by_step, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                       augment=cfg.augment, seed=1000 * r + g)
      acc.append(tp.member_accuracies(net, tx, ty))
    tp.synchronize(device)
    seconds.append(time.perf_counter() - t0)
  return statistics.median(seconds), 0.0, np.concatenate(acc)
