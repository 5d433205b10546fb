"""Methods as steps, and the one loop that runs them (the optax way: the caller owns the loop).

Every registered method is built from a `Steps`: pure functions and a schedule.

    steps = uj.scrub.steps(ctx, lr=1e-3)        # any registered method
    state = steps.init(variables, data, key)     # -> StepState
    for phase in steps.phases:                   # SCRUB: "max" on forget, "min" on retain
      ...  state, metrics = phase.update(state, batch, step_key)
    variables = steps.finalize(state)

* `init(variables, data, key) -> StepState`: everything the updates read. `carry` is what the
  updates change (a `TrainState`, a `(TrainState, stopped)` pair, noise being optimised ...),
  `feeds` the arrays the phases draw batches from (`{name: (x, y)}`, static shapes), `keys`
  one PRNG key per phase (or `"cycle"` for a cycled schedule), `const` what the updates read
  and never change (the teacher θ0, a weight mask).
* `Phase(name, update, source, epochs | steps, batch_size, enter)`: `update(state, batch, key)
  -> (state, metrics)` is one step. A phase with a `source` runs `epochs` passes over
  `feeds[source]` in batches of `batch_size` (an epoch's order and step keys:
  `batching.epoch_plan`, the last batch wrapping around); a phase without one runs `steps`
  data-free steps (batch `None`; keys `jax.random.split(key, steps)`): optimised noise, a
  generator; with `steps=1`, a one-shot edit, called once with the phase's key itself.
  `enter(state, key) -> state` runs before the
  phase (key: the phase's, or the cycle's in a cycled schedule): a fresh optimizer, a feed
  built from the previous phase's result, a retain subsample.
* `cycles`: the phases repeated (SCRUB's epochs). Cycle e has the key
  `fold_in(keys["cycle"], e)`, and phase i inside it `fold_in(that, phase.slot)`; a phase
  with `active(e)` False is skipped in that cycle (`lax.cond` on the cycle counter, which is
  never batched).
* `finalize(state) -> variables`: the model the method returns if stopped now, valid at any
  step (so an evaluator can read it along the way); `report(state, histories) -> aux`, the
  method's scalars (`stopped_early`, ...).

`run(steps, variables, data, key)` is the one driver loop: every phase a `lax.scan` of its
epochs, each a `lax.scan` of its steps, all in one program; the registry's
`uj.<method>(ctx)` is exactly this, so `unlearn(variables, data, key)` and the steps give the
same weights. With `evaluate(variables) -> {name: scalar}` it also records, every `every`
epochs of each phase (every `every` steps of a data-free one; not in phases marked
`observe=False`, whose steps leave the model as it is), that evaluation of the model
`finalize` returns there: `aux["along"]`, one array per phase and metric keyed
`"<phase index>:<phase>/<metric>"` (NaN between evaluations; the index keeps the phases'
order, which a pytree's sorted keys would lose), which the run directory plots (forget and
retain accuracy along a method's steps).
With `progress(done, total)` (a host function) it reports each finished epoch from inside the
program (`jax.debug.callback`), so a long method prints steps/s and time left.

`plan(steps, state, every_epochs, every_steps)` cuts the schedule into `Chunk`s (a phase's
`enter`, pieces of its epochs or data-free steps, pieces of the cycles) and
`run_chunk(steps, chunk, state, start)` runs one; `run` is exactly the loop over the whole-
phase chunks, traced into one program. A host loop over smaller chunks can checkpoint
between them and resume (`driver.MethodProgram.resumable`); `join_histories` and `finish`
end such a run as `run` ends.

`make_step` is the one gradient step of the library (training, every method, SISA,
relearning); `apply_gradients` the one `tx.update` + `apply_updates`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from unlearn_jax import batching
from unlearn_jax.parallel import shard_batch


@flax.struct.dataclass
class TrainState:
  """A model's variables, its optimizer state and the step counter."""
  variables: dict
  opt_state: Any
  step: jax.Array


def init_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


class StepState(NamedTuple):
  """What a method's updates read and write (module docstring); `checks` holds what
  `with_checks` counted in the inputs (the same for every method)."""
  carry: Any
  feeds: dict = {}
  keys: dict = {}
  const: Any = ()
  checks: dict = {}


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a method's schedule (module docstring)."""
  name: str
  update: Callable
  source: str | None = None
  epochs: int = 1
  batch_size: int = 0
  steps: int = 1
  enter: Callable | None = None
  active: Callable | None = None
  slot: int = 0
  observe: bool = True      # evaluated along the way (False: the model does not change)

  def num_steps(self, feeds: dict) -> int:
    """Steps of this phase per cycle, given the feeds (static shapes)."""
    if self.source is None:
      return self.steps
    n = jax.tree_util.tree_leaves(feeds[self.source])[0].shape[0]
    return self.epochs * batching.steps_per_epoch(n, self.batch_size)


@dataclasses.dataclass(frozen=True)
class Steps:
  """A method as steps: `init`, `phases`, `finalize`, `report` (module docstring)."""
  init: Callable
  phases: tuple
  finalize: Callable = lambda state: state.carry.variables
  report: Callable = lambda state, histories: {}
  cycles: int = 0

  def phase(self, name: str) -> Phase:
    for p in self.phases:
      if p.name == name:
        return p
    raise ValueError(f"phase {name!r} is unknown; allowed: "
                     f"{', '.join(p.name for p in self.phases)}")


# ----------------------------------------------------------------------------- input checks
# The aux keys every registered method returns besides its own (`with_checks`): one policy
# for non-finite values and labels out of range, the same under jit as outside it.
COMMON_AUX = {
    "nonfinite_inputs": "number of NaN/Inf values in the inputs the method read (the "
                        "variables and the examples of its data); 0 for a sound call. "
                        "Outside jit such inputs are refused (ValueError) before running",
    "invalid_labels": "number of labels in the method's data outside [0, num_classes); 0 for "
                      "a sound call. Outside jit they are refused (ValueError)",
    "nonfinite_steps": "number of gradient steps dropped because their loss or new weights "
                       "were not finite (guarded ascent phases keep the last finite weights; "
                       "always 0 in a method without a guarded phase)",
    "nonfinite_weights": "number of NaN/Inf values in the returned variables: anything but 0 "
                         "means the result is unusable (the run's summary warns)",
}


def count_nonfinite(tree) -> jax.Array:
  """Number (int32) of NaN/Inf values over the floating-point leaves of `tree`."""
  counts = [jnp.sum(~jnp.isfinite(x)).astype(jnp.int32)
            for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return sum(counts, jnp.zeros((), jnp.int32))


def count_invalid_labels(labels, num_classes: int) -> jax.Array:
  """Number (int32) of integer labels (over every integer leaf) outside [0, num_classes)."""
  counts = [jnp.sum((y < 0) | (y >= num_classes)).astype(jnp.int32)
            for y in jax.tree_util.tree_leaves(labels)
            if jnp.issubdtype(jnp.result_type(y), jnp.integer)]
  return sum(counts, jnp.zeros((), jnp.int32))


def with_checks(steps: Steps, num_classes: int) -> Steps:
  """`steps` whose `report` adds `COMMON_AUX` for every method alike.

  `init` counts the non-finite values in the variables and the data's examples and the
  labels outside [0, num_classes) (under jit these are reports, not errors: a traced value
  cannot raise); `report` adds them, the dropped steps (every `nonfinite` metric a guarded
  step records, summed over the histories) and the non-finite values of the variables
  `finalize` returns. The registry applies it to every method (`method.steps`)."""
  def init(variables, data, key):
    state = steps.init(variables, data, key)
    fields = [f for f in (getattr(data, "forget", None), getattr(data, "retain", None))
              if f is not None]
    checks = {"nonfinite_inputs": count_nonfinite((variables, [f[0] for f in fields])),
              "invalid_labels": count_invalid_labels([f[1] for f in fields], num_classes)}
    return state._replace(checks=checks)

  def report(state, histories):
    aux = dict(steps.report(state, histories))
    dropped = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(histories)[0]
               if getattr(path[-1], "key", None) == "nonfinite"]
    aux.update(state.checks)
    aux["nonfinite_steps"] = sum((jnp.sum(d).astype(jnp.int32) for d in dropped),
                                 jnp.zeros((), jnp.int32))
    aux["nonfinite_weights"] = count_nonfinite(steps.finalize(state))
    return aux

  return dataclasses.replace(steps, init=init, report=report)


# ----------------------------------------------------------------------------- the step
def apply_gradients(tx: optax.GradientTransformation, grads, opt_state, params):
  """(new params, new optimizer state): `tx.update` then `optax.apply_updates`."""
  deltas, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, deltas), opt_state


def all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, guard: bool = False,
              with_step: bool = False, mask=None):
  """A gradient step on `loss_fn(variables, batch, key) -> (loss, (updates, metrics))`.

  Returns `step(train_state, batch, key) -> (train_state, {"loss", **metrics})`.
  `updates` are the collections the loss's train-mode forward passes mutated (BatchNorm
  statistics; `{}` for none): the new variables are `{**variables, **updates, "params":
  new params}`, so collections the model has but does not mutate are carried unchanged.
  `with_step` passes the step counter as a fourth argument (for schedules inside the
  loss, e.g. l1_sparse's decaying α_t). `mask` (a params-shaped tree of bools) keeps
  every weight where it is False bitwise unchanged: applied after the whole optimizer,
  i.e. after weight decay and momentum (SalUn).

  With `guard`, a step whose loss or new weights are not finite is dropped and
  `metrics["nonfinite"]` is 1 (the run keeps its last finite weights): ascent methods use
  it so that no NaN/Inf ever leaves them.
  """
  def step(state, batch, key):
    variables = state.variables

    def wrapped(params):
      v = {**variables, "params": params}
      return loss_fn(v, batch, key, state.step) if with_step else loss_fn(v, batch, key)

    (loss, (updates, metrics)), grads = jax.value_and_grad(wrapped, has_aux=True)(
        variables["params"])
    params, opt_state = apply_gradients(tx, grads, state.opt_state, variables["params"])
    if mask is not None:
      params = jax.tree_util.tree_map(jnp.where, mask, params, variables["params"])
    new_state = TrainState({**variables, **updates, "params": params}, opt_state,
                           state.step + 1)
    metrics = {"loss": loss, **metrics}
    if guard:
      finite = jnp.isfinite(loss) & all_finite(params) & all_finite(updates)
      new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
      metrics["nonfinite"] = (~finite).astype(jnp.float32)
    return new_state, metrics

  return step


# ----------------------------------------------------------------------------- the loop
def epoch_loop(step_fn: Callable, carry: Any, epochs: jax.Array, plan: Callable,
               batch: Callable, after_epoch=None):
  """The one epoch loop: a `lax.scan` over `epochs` (an int array), each epoch a `lax.scan`
  of `step_fn(carry, batch, key) -> (carry, metrics)` over its steps.

  The batch source is two functions: `plan(epoch) -> (selectors, step keys)`, one row per
  step (a pytree with a leading steps axis, keys [steps]), and `batch(selector) -> batch`,
  run inside the step loop (so an epoch's batches are gathered one step at a time, never
  all at once). In memory: `scan_epochs`; SISA's padded shards: `sisa._stage_fn`.
  Returns (carry, per-epoch mean metrics (a guarded step's `nonfinite` flag summed:
  dropped steps per epoch), plus `after_epoch(carry, epoch)`'s dict where given)."""
  def one_epoch(carry, epoch):
    selectors, keys = plan(epoch)

    def body(carry, xs):
      selector, key = xs
      return step_fn(carry, batch(selector), key)

    carry, metrics = jax.lax.scan(body, carry, (selectors, keys))
    # Means per epoch, but a guarded step's `nonfinite` flag is counted (COMMON_AUX).
    metrics = ({k: jnp.sum(v).astype(jnp.int32) if k == "nonfinite" else
                jax.tree_util.tree_map(jnp.mean, v) for k, v in metrics.items()}
               if isinstance(metrics, dict) else jax.tree_util.tree_map(jnp.mean, metrics))
    if after_epoch is not None:
      metrics = {**metrics, **after_epoch(carry, epoch)}
    return carry, metrics

  return jax.lax.scan(one_epoch, carry, epochs)


def scan_epochs(step_fn: Callable, carry: Any, data: Any, key: jax.Array, num_epochs: int,
                batch_size: int, first_epoch: jax.Array | int = 0, after_epoch=None):
  """Runs `num_epochs` epochs of `step_fn(carry, batch, key) -> (carry, metrics)` over
  in-memory `data` (`epoch_loop`).

  `data` is a pytree of arrays sharing their leading (example) axis; epoch e draws its
  order and step keys from `batching.epoch_plan(key, e, ...)`. Returns (carry, per-epoch
  mean metrics, plus `after_epoch(carry, epoch)`'s dict where given). Every batch passes
  through `parallel.shard_batch` (split over a mesh's `data` axis inside
  `parallel.data_parallel`)."""
  data = jax.tree_util.tree_map(jnp.asarray, data)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  return epoch_loop(
      step_fn, carry, jnp.arange(num_epochs) + first_epoch,
      plan=lambda epoch: batching.epoch_plan(key, epoch, n, batch_size),
      batch=lambda bidx: shard_batch(jax.tree_util.tree_map(lambda a: a[bidx], data)),
      after_epoch=after_epoch)


def unrolled_steps(step_fn: Callable, carry: Any, data: Any, key: jax.Array, batch_size: int,
                   count: int, first_step):
  """`count` steps of `scan_epochs`' schedule, from global step `first_step` (may be
  traced), written out one after another: no loop in the program.

  The batches and step keys are exactly those `scan_epochs` gives steps `first_step` ..
  `first_step + count - 1` (`batching.epoch_plan` of their epoch), so calling this
  ⌈n / batch_size⌉ / count times per epoch from the host trains the same model as the
  scan. Why: XLA's CPU backend compiles autodiff's convolution gradients far slower
  inside a while loop (jax-ml/jax#12868); a straight-line chunk keeps them fast. `count` must
  divide the steps per epoch (a chunk never spans two epochs). Returns (carry, metrics
  stacked over the `count` steps)."""
  data = jax.tree_util.tree_map(jnp.asarray, data)
  n = jax.tree_util.tree_leaves(data)[0].shape[0]
  spe = batching.steps_per_epoch(n, batch_size)
  if count < 1 or spe % count:
    raise ValueError(f"count={count} must divide the {spe} steps per epoch "
                     f"({n} examples in batches of {batch_size})")
  idx, bkeys = batching.epoch_plan(key, first_step // spe, n, batch_size)
  offset = first_step % spe
  idx = jax.lax.dynamic_slice_in_dim(idx, offset, count)
  bkeys = jax.lax.dynamic_slice_in_dim(bkeys, offset, count)
  out = []
  for i in range(count):
    batch = shard_batch(jax.tree_util.tree_map(lambda a: a[idx[i]], data))
    carry, m = step_fn(carry, batch, bkeys[i])
    out.append(m)
  return carry, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *out)


def _every(fn: Callable, count, every: int, like: dict):
  """fn() when `count` (1-based) is a multiple of `every`, else NaNs of fn's shapes."""
  nan = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), like)
  return jax.lax.cond(count % every == 0, lambda: fn(), lambda: nan)


def _observe(steps: Steps, evaluate, state: StepState, count, every: int) -> dict:
  """`{"along/<metric>": value}` of `evaluate(finalize(state))` when `count` is a multiple
  of `every` (NaN otherwise); `{}` without an evaluator."""
  if evaluate is None:
    return {}
  f = lambda: {k: jnp.asarray(v, jnp.float32) for k, v in evaluate(steps.finalize(state)).items()}
  return {f"along/{k}": v for k, v in _every(f, count, every, jax.eval_shape(f)).items()}


def with_enter(phase: Phase, first: Callable) -> Phase:
  """`phase` whose `enter` runs `first(state, key)` before its own (building the feed the
  phase reads, then its fresh optimizer)."""
  own = phase.enter
  enter = first if own is None else (lambda st, k: own(first(st, k), k))
  return dataclasses.replace(phase, enter=enter)


def total_steps(steps: Steps, state: StepState) -> int:
  """Steps of the whole schedule, from the feeds' static shapes (an `enter` that builds a
  feed is run abstractly to see its shape)."""
  total, st = 0, state
  for phase in steps.phases:
    if phase.enter is not None:
      st = jax.eval_shape(phase.enter, st, st.keys.get(phase.name, st.keys.get("cycle")))
    total += phase.num_steps(st.feeds)
  return total * max(steps.cycles, 1)


def run(steps: Steps, variables, data, key, *, evaluate: Callable | None = None,
        every: int = 1, progress: Callable | None = None):
  """`(variables, aux)`: the method's schedule run as one program (module docstring).

  `aux` is `steps.report(state, histories)` (histories: `{phase name: per-epoch metrics}`),
  plus `aux["along"] = {phase/metric: [evaluations]}` with an `evaluate`."""
  check_every(every)
  state = steps.init(variables, data, key)
  total = total_steps(steps, state) if progress is not None else 0
  chunks, hists = plan(steps, state), []
  for chunk in chunks:
    state, hist = run_chunk(steps, chunk, state, evaluate=evaluate, every=every,
                            progress=progress, total=total)
    hists.append(hist)
  return finish(steps, state, join_histories(steps, chunks, hists))


def check_every(every) -> int:
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every={every!r} must be a whole number >= 1 (epochs between "
                     "evaluations)")
  return every


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Chunk:
  """A piece of a schedule (`plan`): phase `phase`'s `enter`, a one-shot update, or
  `length` of its epochs (`"epochs"`), data-free steps (`"steps"`) or, for a cycled
  schedule, `length` cycles (`phase` -1), starting at `start`. `done_before`: steps of
  the schedule before this phase (for progress)."""
  kind: str
  phase: int
  start: int = 0
  length: int = 1
  done_before: int = 0

  @property
  def signature(self) -> tuple:
    """What its program depends on (`start` is an argument): equal-length chunks of a
    phase share one compiled program."""
    return (self.kind, self.phase, self.length)


def _pieces(total: int, every: int):
  every = total if every <= 0 else every
  return [(a, min(every, total - a)) for a in range(0, total, every)]


def plan(steps: Steps, state: StepState, every_epochs: int = 0,
         every_steps: int = 0) -> tuple:
  """The schedule as `Chunk`s, in order: each phase's `enter`, then its epochs in pieces
  of `every_epochs` (a cycled schedule: its cycles), its data-free steps in pieces of
  `every_steps` (0: whole phases). Running the chunks one after another (`run_chunk`) is
  the schedule `run` runs; a host loop between them can checkpoint (`driver`)."""
  if steps.cycles:
    return tuple(Chunk("cycles", -1, a, n) for a, n in _pieces(steps.cycles, every_epochs))
  out, done, st = [], 0, state
  for i, phase in enumerate(steps.phases):
    if phase.enter is not None:
      out.append(Chunk("enter", i))
      st = jax.eval_shape(phase.enter, st, st.keys.get(phase.name))
    if phase.source is not None:
      out += [Chunk("epochs", i, a, n, done) for a, n in _pieces(phase.epochs, every_epochs)]
    elif phase.steps == 1:
      out.append(Chunk("once", i, 0, 1, done))
    else:
      out += [Chunk("steps", i, a, n, done) for a, n in _pieces(phase.steps, every_steps)]
    done += phase.num_steps(st.feeds)
  return tuple(out)


def run_chunk(steps: Steps, chunk: Chunk, state: StepState, start=None, *,
              evaluate: Callable | None = None, every: int = 1,
              progress: Callable | None = None, total: int = 0):
  """(state, history) after one `Chunk` of the schedule (history None for an `enter`).
  `start` (default `chunk.start`) may be a traced integer, so every chunk of one
  `signature` runs in one compiled program."""
  start = chunk.start if start is None else start
  if chunk.kind == "cycles":
    return _run_cycles(steps, state, start, chunk.length, evaluate, every, progress, total)
  phase = steps.phases[chunk.phase]
  key = state.keys.get(phase.name)
  if chunk.kind == "enter":
    return phase.enter(state, key), None
  return _run_piece(steps, phase, chunk.kind, state, key, start, chunk.length,
                    evaluate if phase.observe else None, every, progress,
                    chunk.done_before, total)


def _kind(phase: Phase) -> str:
  return "epochs" if phase.source is not None else "once" if phase.steps == 1 else "steps"


def _run_piece(steps, phase, kind, state, key, start, length, evaluate, every, progress,
               done_before, total):
  """(state, history) of `length` epochs / data-free steps of `phase` from `start`."""
  observe = lambda st, count: _observe(steps, evaluate, st, count, every)
  if kind == "once":   # a one-shot update: the phase's own key
    state, m = phase.update(state, None, key)
    return state, jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None],
                                         {**m, **observe(state, 1)})
  if kind == "steps":
    # The scan carries the whole state: an update may write a feed (optimised noise).
    def body(st, xs):
      i, k = xs
      st, m = phase.update(st, None, k)
      m = {**m, **observe(st, i + 1)}
      if progress is not None:
        jax.debug.callback(progress, done_before + i + 1, total)
      return st, m
    idx = jnp.arange(length) + start
    return jax.lax.scan(body, state, (idx, jax.random.split(key, phase.steps)[idx]))

  n = jax.tree_util.tree_leaves(state.feeds[phase.source])[0].shape[0]
  spe = batching.steps_per_epoch(n, phase.batch_size)

  def after_epoch(st, epoch):
    if progress is not None:
      jax.debug.callback(progress, done_before + (epoch + 1) * spe, total)
    return observe(st, epoch + 1)

  # The batches come from the feed as it is when the phase starts (feeds an update writes
  # are read by later phases).
  return scan_epochs(lambda st, b, k: phase.update(st, b, k), state,
                     state.feeds[phase.source], key, length, phase.batch_size,
                     first_epoch=start, after_epoch=after_epoch)


def _run_cycles(steps: Steps, state: StepState, start, length: int, evaluate, every, progress,
                total: int):
  """Cycles `start` .. `start + length` of a cycled schedule (module docstring)."""
  per_cycle = total // steps.cycles

  def cycle(st, e):
    ke = jax.random.fold_in(st.keys["cycle"], e)
    dropped, guarded = jnp.zeros((), jnp.int32), []
    for phase in steps.phases:
      def run_it(s, phase=phase):
        s = phase.enter(s, ke) if phase.enter else s
        length = phase.epochs if phase.source is not None else phase.steps
        s, hist = _run_piece(steps, phase, _kind(phase), s, jax.random.fold_in(ke, phase.slot),
                             0, length, None, every, None, 0, 0)
        # The cycle keeps a guarded phase's count of dropped steps, not its metrics (known
        # when this is traced: the flag is static).
        guarded.append("nonfinite" in hist)
        return s, jnp.sum(hist.get("nonfinite", jnp.zeros(()))).astype(jnp.int32)
      st, d = run_it(st) if phase.active is None else jax.lax.cond(
          phase.active(e), run_it, lambda s: (s, jnp.zeros((), jnp.int32)), st)
      dropped = dropped + d
    if progress is not None:
      jax.debug.callback(progress, (e + 1) * per_cycle, total)
    observed = _observe(steps, evaluate, st, e + 1, every)
    return st, ({**observed, "nonfinite": dropped} if any(guarded) else observed)

  return jax.lax.scan(cycle, state, jnp.arange(length) + start)


def join_histories(steps: Steps, chunks, hists, axis: int = 0) -> dict:
  """`{phase name (or "cycle"): history}`: the chunks' histories joined along their
  epoch / step / cycle axis (`axis` 1 for a population's, seed first)."""
  parts = {}
  for c, h in zip(chunks, hists):
    if h is not None:
      name = "cycle" if c.kind == "cycles" else steps.phases[c.phase].name
      parts.setdefault(name, []).append(h)
  return {name: hs[0] if len(hs) == 1 else
          jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis), *hs)
          for name, hs in parts.items()}


def finish(steps: Steps, state: StepState, histories: dict):
  """(variables, aux) at the end of the schedule: `finalize`, `report` and the evaluations
  along the way (`run`)."""
  aux = dict(steps.report(state, histories))
  # The phase's index from the schedule, not from `histories`' order: a dict that passed
  # through jit comes back with sorted keys.
  order = {p.name: i for i, p in enumerate(steps.phases)}
  along = {f"{order.get(name, 0)}:{name}/{k[len('along/'):]}": v
           for name, hist in histories.items()
           for k, v in hist.items() if k.startswith("along/")}
  if along:
    aux["along"] = along
  return steps.finalize(state), aux
