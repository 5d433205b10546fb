"""Many devices the modern way: `jax.jit` with a `Mesh` and `NamedSharding`.

The mesh has two axes, `("seeds", "data")`. Weights are replicated over `data`; every
batch a train step or a method's step draws is split over `data` by
`shard_batch` (a `with_sharding_constraint`), and XLA's SPMD partitioner turns the step
into per-device work plus the all-reduces of the gradients and of BatchNorm's batch
statistics. The math is that of one device on the whole batch, so a sharded run matches
the single-device run to float tolerance (the reduction order differs).

When seeds are vmapped, `vmap_seeds` names the `seeds` mesh axis as vmap's
`spmd_axis_name`, so with `seeds=2` on 8 devices each half of the devices trains half of
the seeds, each seed's batch split over 4 devices.

No module-level state steers a trace: `data_parallel(mesh)` is `jax.set_mesh(mesh)`, JAX's
own mesh context, which `jax.jit` includes in its cache key (a function traced outside the
block is traced again inside it). `shard_batch` and `vmap_seeds` read that context with
`jax.sharding.get_abstract_mesh()`; outside any mesh `shard_batch` is the identity.

    mesh = parallel.make_mesh()                        # all devices on `data`
    with parallel.data_parallel(mesh):
      x = parallel.replicate(x, mesh)
      variables, _ = jax.jit(train.fit, static_argnums=(0, 1))(model, cfg, v, x, y, key)

Multi-process: call `initialize_distributed()` (the `--distributed` flag) before anything
touches a device; every process then sees all devices of the job in `jax.devices()`.
`population_mesh_shape` puts a population's axis over every process (data within one);
`to_host` brings arrays other processes hold to this host (a collective); `is_writer`,
`barrier`, `from_process_0` and `same_on_every_process` are what one writer among many
processes needs.
"""

from __future__ import annotations

import contextlib
from typing import Any
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("seeds", "data")

# How the members of a population run (seeds, searched configurations, SISA shards): one
# vmapped program, or one single-member program called member after member. The one list
# and the one check, wherever the choice is made (`seed_mode`, `--seed_loop`,
# `--search_loop`, `shard_loop`).
LOOPS = ("vmap", "sequential")


def check_loop(value: str, argument: str) -> str:
  """`value` if it is one of LOOPS; a ValueError naming `argument` and the allowed values."""
  if value not in LOOPS:
    raise ValueError(f"{argument}={value!r} is unknown; allowed: {', '.join(LOOPS)}")
  return value


class MeshError(ValueError):
  """A mesh shape that the visible devices cannot form."""


def make_mesh(data: int = 0, seeds: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `("seeds", "data")` mesh: `seeds` × `data` devices (`data=0`: all that remain).

  Raises MeshError naming the numbers when the devices cannot be arranged so."""
  devices = list(jax.devices() if devices is None else devices)
  if seeds < 1:
    raise MeshError(f"mesh seeds axis must be >= 1, got {seeds}")
  if data <= 0:
    if len(devices) % seeds:
      raise MeshError(f"{len(devices)} devices cannot be split into {seeds} seed groups")
    data = len(devices) // seeds
  if seeds * data > len(devices):
    raise MeshError(f"a mesh of {seeds} seeds x {data} data needs {seeds * data} devices; "
                    f"{len(devices)} are visible ({jax.default_backend()})")
  grid = np.asarray(devices[:seeds * data], dtype=object).reshape(seeds, data)
  return Mesh(grid, MESH_AXES)


def population_mesh_shape(population: int, data: int = 0) -> tuple[int, int]:
  """(seeds, data) of a mesh whose population axis spans every process: the largest
  `seeds` that divides `population` and the device count, is a multiple of the process
  count and leaves `data = devices / seeds` within one process (`data` given: that one).
  No gradient then crosses a process; MeshError when no such split exists."""
  devices, procs = jax.device_count(), jax.process_count()
  local = jax.local_device_count()
  options = [s for s in range(devices, 0, -1)
             if devices % s == 0 and population % s == 0 and s % procs == 0
             and devices // s <= local and (data <= 0 or devices // s == data)]
  if not options:
    raise MeshError(f"{population} models cannot be spread over {procs} processes x {local} "
                    f"devices{f' with --mesh_data={data}' if data > 0 else ''}: the population "
                    f"axis needs a multiple of {procs} models that divides {devices} (e.g. "
                    f"{procs} or {devices})")
  return options[0], devices // options[0]


def active_mesh():
  """The abstract mesh of the enclosing `data_parallel` block, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or "data" not in mesh.axis_names else mesh


@contextlib.contextmanager
def data_parallel(mesh: Mesh | None):
  """`jax.set_mesh(mesh)`: within the block `shard_batch` splits batches over `mesh`'s
  `data` axis and `vmap_seeds` maps seeds onto its `seeds` axis. `None` is a no-op."""
  if mesh is None:
    yield None
    return
  with jax.set_mesh(mesh):
    yield mesh


def data_size(mesh=None) -> int:
  mesh = mesh if mesh is not None else active_mesh()
  return 1 if mesh is None else mesh.shape["data"]


def shard_batch(tree: Any) -> Any:
  """Constrains each leaf's leading (example) axis to the `data` axis of the active mesh.

  Leaves whose leading size the data axis does not divide are left to the partitioner
  (replicated); outside `data_parallel` this is the identity."""
  mesh = active_mesh()
  if mesh is None or mesh.shape["data"] == 1:
    return tree
  n = mesh.shape["data"]

  def one(a):
    if not hasattr(a, "ndim") or a.ndim == 0 or a.shape[0] % n:
      return a
    return jax.lax.with_sharding_constraint(a, P("data", *([None] * (a.ndim - 1))))

  return jax.tree_util.tree_map(one, tree)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """Places every leaf on all devices of `mesh` (the weights, the in-memory datasets)."""
  mesh = mesh if mesh is not None else _concrete_mesh()
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_seeds(tree: Any, mesh: Mesh | None = None) -> Any:
  """Places a seed-stacked pytree (leading axis = seed) with seeds split over the `seeds`
  mesh axis and replicated over `data`; replicated when the axis does not divide it."""
  mesh = mesh if mesh is not None else _concrete_mesh()
  if mesh is None:
    return tree
  def one(a):
    return jax.device_put(a, _seed_sharding(mesh, jax.numpy.shape(a)))

  return jax.tree_util.tree_map(one, tree)


def seed_sharded(abstract: Any, mesh: Mesh | None = None) -> Any:
  """`jax.ShapeDtypeStruct`s of a seed-stacked tree placed as `shard_seeds` would place
  it (what a multi-process restore needs to know); unchanged outside a mesh."""
  mesh = mesh if mesh is not None else _concrete_mesh()
  if mesh is None:
    return abstract
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=_seed_sharding(mesh, a.shape)), abstract)


def _seed_sharding(mesh: Mesh, shape) -> NamedSharding:
  """The one placement rule of a seed-stacked leaf: leading axis on `seeds` when that
  axis (larger than 1) divides it, else replicated."""
  s = mesh.shape["seeds"]
  if s > 1 and len(shape) and shape[0] % s == 0:
    return NamedSharding(mesh, P("seeds", *([None] * (len(shape) - 1))))
  return NamedSharding(mesh, P())


def _concrete_mesh() -> Mesh | None:
  """The concrete mesh of the enclosing `data_parallel` block (device placement), or None."""
  if active_mesh() is None:
    return None
  mesh = jax.sharding.get_mesh()
  return None if mesh is None or mesh.empty else mesh


def vmap_seeds(fn: Callable, in_axes=0, out_axes=0) -> Callable:
  """`jax.vmap` over seeds; inside `data_parallel` with a `seeds` axis larger than 1 the
  vmapped dimension of every sharding constraint goes on that axis (`spmd_axis_name`)."""
  mesh = active_mesh()
  if mesh is not None and "seeds" in mesh.axis_names and mesh.shape["seeds"] > 1:
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes, spmd_axis_name="seeds")
  return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)


def check_batch_size(batch_size: int, mesh: Mesh | None = None, what: str = "batch size"):
  """A batch that the data axis does not divide cannot be split: say so up front."""
  n = data_size(mesh)
  if batch_size % n:
    raise MeshError(f"{what} {batch_size} is not divisible by the {n} devices of the data "
                    f"axis; use a multiple of {n}")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_seconds: int | None = None) -> None:
  """`jax.distributed.initialize` for multi-process jobs (the `--distributed` flag).

  With no arguments JAX detects the cluster (SLURM, Open MPI, TPU pods, GKE); pass them
  explicitly elsewhere (one machine: `127.0.0.1:PORT`, N, 0..N-1). CPU collectives go
  through gloo (XLA's CPU client has no other cross-process implementation). Must run
  before any device is touched. `heartbeat_timeout_seconds`: how long a process that
  stopped answering is waited for before the others fail (JAX's default: 100)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                  num_processes=num_processes, process_id=process_id,
                                  heartbeat_timeout_seconds=heartbeat_timeout_seconds
                                  ).items() if v is not None}
  jax.distributed.initialize(**kwargs)


def is_writer() -> bool:
  """Whether this process writes a run's files: process 0 of a multi-process job (every
  process computes; one writes)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here for the others (`multihost_utils.sync_global_devices`); a
  no-op on one process. Used around files one process writes and all read."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def from_process_0(value: int) -> int:
  """Process 0's `value` on every process (a collective; the value itself on one)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def same_on_every_process(text: str) -> int | None:
  """None when every process passes the same `text` (its flags, say), else the index of
  the first process that differs from process 0. A collective; a no-op on one process."""
  if jax.process_count() == 1:
    return None
  import hashlib
  from jax.experimental import multihost_utils
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int64)
  every = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1)
  differ = np.nonzero(every != every[0])[0]
  return int(differ[0]) if differ.size else None


def describe(mesh: Mesh | None) -> str:
  if mesh is None:
    return "single device"
  return (f"mesh seeds={mesh.shape['seeds']} x data={mesh.shape['data']} over "
          f"{mesh.devices.size} {jax.default_backend()} device(s), "
          f"{jax.process_count()} process(es)")


def local_batch_slice(global_batch: int) -> slice:
  """The rows of a global batch that this process feeds (streaming input, multi-host)."""
  per = global_batch // jax.process_count()
  if per * jax.process_count() != global_batch:
    raise MeshError(f"global batch {global_batch} is not divisible by the "
                    f"{jax.process_count()} processes")
  start = jax.process_index() * per
  return slice(start, start + per)


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Assembles each process's rows into one global array split over `data`
  (`jax.make_array_from_process_local_data`): the input path of streaming training."""
  def one(a):
    a = np.asarray(a)
    spec = P("data", *([None] * (a.ndim - 1)))
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), a)
  return jax.tree_util.tree_map(one, local)


__all__ = ["MESH_AXES", "MeshError", "make_mesh", "population_mesh_shape", "active_mesh",
           "data_parallel", "data_size",
           "shard_batch", "replicate", "shard_seeds", "seed_sharded", "vmap_seeds",
           "check_batch_size", "initialize_distributed", "is_writer", "barrier",
           "from_process_0", "same_on_every_process",
           "describe", "local_batch_slice",
           "global_batch", "to_host"]


def to_host(tree: Any) -> Any:
  """Every leaf as a NumPy array on this host, whole: a leaf spread over other processes'
  devices (a seed-sharded population in a multi-process job) is gathered with
  `multihost_utils.process_allgather` (a collective: every process calls it, in the same
  order), a local one is copied (`np.asarray`)."""
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree_util.tree_map(one, tree)
