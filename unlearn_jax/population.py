"""One way to run a program over a population of models: `PopulationProgram`.

The field's bottleneck is populations (originals, oracles, shadows, seeds, shards,
configurations), and every one of them is the same thing: a per-member program, some
arguments that carry the members on axis 0 and some that every member shares. This module
is the one place that decides how such a program runs:

* `vmap` — the members as one program (`parallel.vmap_seeds`: on a mesh with a `seeds`
  axis, the members are sharded over it), optionally in chunks of `chunk` members, every
  chunk of the same size one executable;
* `sequential` — one single-member executable called member after member (on a CPU a
  vmapped convolution becomes a grouped one, which XLA:CPU has no fast path for).

Each distinct argument signature is lowered and compiled once (`.lower().compile()`); a
`cache` dict shared between instances (with a `name`) lets programs built anew for each
chunk of a population reuse the executable. Donated arguments (`donate`) hand their buffers
to the output. Outputs come back stacked over the members, in order. After a call the
program says what it cost: `seconds`, `compile_seconds`, `peak_bytes` (XLA's memory
analysis of the executables it ran); `progress(done, total)` hears after every chunk or
member. Resuming is the caller's: a population cut into calls of `take_members` slices
(`driver.MethodProgram.resumable` saves each finished chunk) reuses one executable per
chunk size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from unlearn_jax import parallel

MODES = ("vmap", "sequential")


def compiled_peak_bytes(compiled) -> float:
  """Peak memory of a compiled program by XLA's buffer assignment (`memory_analysis()`:
  its peak where the backend reports one, else arguments + outputs + temporaries −
  aliased); NaN where the backend gives no analysis. Per program, so comparable across
  methods and backends without running them; the device's own peak counter
  (`memory_stats()["peak_bytes_in_use"]`, GPUs) also counts other live buffers."""
  try:
    m = compiled.memory_analysis()
  except Exception:   # backends without an analysis  # noqa: BLE001
    return float("nan")
  if m is None:
    return float("nan")
  peak = getattr(m, "peak_memory_in_bytes", 0) or 0
  if peak > 0:
    return float(peak)
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _signature(args) -> str:
  """Shapes, dtypes and, for arrays placed on devices, their shardings: an executable is
  compiled for its inputs' shardings (on a mesh, populations of another placement get a
  program of their own, as `jax.jit` would give them)."""
  return str(jax.tree_util.tree_map(
      lambda a: (jnp.shape(a), jnp.result_type(a),
                 str(a.sharding) if isinstance(a, jax.Array) else None), args))


def members_of(args, in_axes) -> int:
  """The population size: axis 0 of the first argument that carries the members."""
  for a, axis in zip(args, in_axes):
    if axis is not None:
      leaves = jax.tree_util.tree_leaves(a)
      if leaves:
        return int(jnp.shape(leaves[0])[0])
  raise ValueError(f"in_axes={tuple(in_axes)}: no argument carries the members (axis 0)")


def take_members(args, in_axes, start: int, stop: int):
  """The arguments of members [start, stop): sliced where they carry members."""
  return tuple(a if axis is None else jax.tree_util.tree_map(lambda x: x[start:stop], a)
               for a, axis in zip(args, in_axes))


def take_member(args, in_axes, i: int):
  """The arguments of member i alone (no member axis)."""
  return tuple(a if axis is None else jax.tree_util.tree_map(lambda x: x[i], a)
               for a, axis in zip(args, in_axes))


def stack_members(trees):
  """Per-member pytrees stacked along a new leading axis."""
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def concat_members(trees):
  """Pytrees of member chunks concatenated along their leading axis."""
  if len(trees) == 1:
    return trees[0]
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *trees)


class PopulationProgram:
  """`fn` (one member) over a population, compiled once per argument signature.

  `in_axes`: per positional argument, 0 where it carries the members on axis 0, None where
  every member shares it. `mode`: `vmap` or `sequential` (module docstring); `chunk` > 0
  runs the vmapped members that many at a time (0: all at once). `donate`: indices of
  arguments whose buffers the program may reuse. `cache` and `name`: a dict shared with
  other programs, so that one built anew for the same computation (`name`) reuses the
  executable. After a call: `seconds` (wall time of the call after compilation),
  `compile_seconds` (summed over every compilation), `last` (the last executable run),
  `peak_bytes` (the largest `compiled_peak_bytes` of the executables the call ran).
  `progress(done, total)`, where given, is called with the members done after every
  chunk (vmap) or member (sequential).
  `spread=False` keeps a vmapped program off the mesh's `seeds` axis (a population that
  the axis does not divide).
  """

  def __init__(self, fn: Callable, in_axes: Sequence, *, mode: str = "vmap", chunk: int = 0,
               donate: tuple = (), cache: dict | None = None, name: str | None = None,
               spread: bool = True, progress: Callable[[int, int], None] | None = None):
    if mode not in MODES:
      raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    if int(chunk) < 0:
      raise ValueError(f"chunk={chunk} must be 0 (all members at once) or positive")
    self.fn, self.in_axes, self.mode, self.chunk = fn, tuple(in_axes), mode, int(chunk)
    self.donate = tuple(donate)
    self._cache = {} if cache is None else cache
    self._name = name if name is not None else f"{getattr(fn, '__name__', 'fn')}@{id(fn)}"
    vmap = parallel.vmap_seeds if spread else jax.vmap
    self._member_fn = vmap(fn, in_axes=self.in_axes) if mode == "vmap" else fn
    self.spread = spread
    self.progress = progress
    self.peak_bytes = float("nan")
    self.compile_seconds = 0.0
    self.seconds = 0.0
    self.last = None

  def executable(self, *args):
    """The executable for arguments shaped like `args` (members already taken: a chunk in
    `vmap` mode, one member in `sequential`), compiled on first use."""
    key = (self._name, self.mode, self.spread, _signature(args))
    if key not in self._cache:
      t0 = time.perf_counter()
      self._cache[key] = jax.jit(self._member_fn, donate_argnums=self.donate).lower(
          *args).compile()
      self.compile_seconds += time.perf_counter() - t0
    self.last = self._cache[key]
    return self.last

  def executables(self) -> int:
    """How many executables this program (its name and mode) has compiled into its cache:
    one per argument signature (chunk sizes, shapes)."""
    return sum(1 for key in self._cache
               if key[:3] == (self._name, self.mode, self.spread))

  def calls(self, args):
    """[(executable, its arguments)]: every call a run of `args` makes, in member order
    (chunks in `vmap` mode, members in `sequential`); compiles what is new."""
    n = members_of(args, self.in_axes)
    if self.mode == "sequential":
      parts = [take_member(args, self.in_axes, i) for i in range(n)]
    elif self.chunk and self.chunk < n:
      parts = [take_members(args, self.in_axes, i, min(n, i + self.chunk))
               for i in range(0, n, self.chunk)]
    else:
      parts = [tuple(args)]
    return [(self.executable(*p), p) for p in parts]

  def __call__(self, *args):
    """The outputs of every member, stacked on axis 0 (in member order)."""
    calls = self.calls(args)
    total = members_of(args, self.in_axes)
    peaks = [b for b in {id(run): compiled_peak_bytes(run) for run, _ in calls}.values()
             if b == b]                                               # NaN: no analysis
    self.peak_bytes = max(peaks) if peaks else float("nan")
    t0 = time.perf_counter()
    outs, done = [], 0
    for run, p in calls:
      outs.append(jax.block_until_ready(run(*p)))
      done += 1 if self.mode == "sequential" else members_of(p, self.in_axes)
      if self.progress is not None:
        self.progress(done, total)
    self.seconds = time.perf_counter() - t0
    return stack_members(outs) if self.mode == "sequential" else concat_members(outs)
