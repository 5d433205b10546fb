"""Methods as steps (`unlearn_jax.steps`): the documented protocol reproduces every method,
the driver loop records evaluations and progress along a method's steps, and its errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import batching, checkpoint, driver, methods, models, steps as steps_lib
import method_data  # tests/method_data.py: select_data with targets for every method

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def setting():
  ds = uj.load_dataset("digits")
  split = uj.make_split(uj.SplitSpec("random", 0.1), ds.train_y, ds.test_y, NUM_CLASSES)
  model = models.get_model("mlp", NUM_CLASSES)
  cfg = uj.TrainConfig(epochs=3, batch_size=64, lr=0.05)
  v0 = uj.init_variables(model, jax.random.PRNGKey(0), ds.input_shape)
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  variables, _ = jax.jit(uj.fit, static_argnums=(0, 1))(model, cfg, v0, x, y,
                                                        jax.random.PRNGKey(1))
  forget = (x[split.forget], y[split.forget])
  retain = (x[split.retain][:300], y[split.retain][:300])
  ctx = uj.MethodContext(model, NUM_CLASSES, ds.input_shape)
  return ctx, variables, forget, retain


def _user_loop(steps, variables, data, key):
  """The protocol as the `steps` module documents it, written out by hand: `init`, each
  phase's `enter` and its epochs of `update` over `epoch_plan` batches (or its data-free
  steps), `cycles` with their fold_in keys, then `finalize`. Python loops; no driver code."""
  state = steps.init(variables, data, key)

  def phase_run(state, phase, key):
    if phase.source is None:
      keys = [key] if phase.steps == 1 else list(jax.random.split(key, phase.steps))
      for k in keys:
        state, _ = phase.update(state, None, k)
      return state
    source = state.feeds[phase.source]
    n = source[0].shape[0]
    for e in range(phase.epochs):
      idx, ks = batching.epoch_plan(key, e, n, phase.batch_size)
      for i, k in zip(idx, ks):
        state, _ = phase.update(state, jax.tree_util.tree_map(lambda a: a[i], source), k)
    return state

  if steps.cycles:
    for e in range(steps.cycles):
      ke = jax.random.fold_in(state.keys["cycle"], e)
      for phase in steps.phases:
        if phase.active is not None and not phase.active(e):
          continue
        if phase.enter is not None:
          state = phase.enter(state, ke)
        state = phase_run(state, phase, jax.random.fold_in(ke, phase.slot))
  else:
    for phase in steps.phases:
      key_p = state.keys.get(phase.name)
      if phase.enter is not None:
        state = phase.enter(state, key_p)
      state = phase_run(state, phase, key_p)
  return steps.finalize(state)


@pytest.mark.parametrize("name", ["finetune", "scrub", "unsir", "prune_complex", "ssd"])
def test_a_hand_written_loop_over_the_steps_gives_the_methods_weights(setting, name):
  """One method per schedule shape (one phase; cycles with an inactive phase; noise then
  two phases; an edit between phases; a one-shot edit): a Python loop over the documented
  protocol ends where `uj.<method>(ctx)` does, so the steps are the method."""
  ctx, variables, forget, retain = setting
  hp = {"scrub": dict(epochs=3, max_epochs=2), "unsir": dict(noise_steps=3),
        "finetune": dict(epochs=2), "prune_complex": dict(overfit_epochs=1, epochs=1)}.get(name, {})
  method = methods.get_method(name)
  data = method_data.select(method, forget=forget, retain=retain, ctx=ctx)
  key = jax.random.PRNGKey(3)
  expected, _ = jax.jit(method(ctx, **hp))(variables, data, key)
  by_hand = _user_loop(method.steps(ctx, **hp), variables, data, key)
  chex.assert_trees_all_close(by_hand, expected, atol=2e-5, rtol=2e-5)


def test_every_registered_method_is_built_from_steps(setting):
  ctx = setting[0]
  ctx_class = uj.MethodContext(ctx.model, NUM_CLASSES, ctx.input_shape, forget_classes=(3,))
  for name in methods.list_methods():
    method = methods.get_method(name)
    built = method.steps(ctx_class if "class" in method.scenarios and not method.reads
                         else ctx)
    assert isinstance(built, steps_lib.Steps), f"{name}: steps() returned {type(built)}"
    assert built.phases, f"{name} has no phases"
    assert method(ctx_class if not method.reads else ctx).steps is not None


def test_along_records_the_evaluator_every_k_epochs(setting):
  ctx, variables, forget, retain = setting
  steps = uj.finetune.steps(ctx, epochs=4)
  data = methods.select_data(uj.finetune, retain=retain, ctx=ctx)
  acc = lambda v: {"forget_acc": uj.accuracy(ctx.model.logits(v, forget[0]), forget[1])}
  out, aux = jax.jit(lambda v, d, k: steps_lib.run(steps, v, d, k, evaluate=acc, every=2))(
      variables, data, jax.random.PRNGKey(0))
  along = np.asarray(aux["along"]["0:finetune/forget_acc"])
  assert along.shape == (4,), "one entry per epoch of the phase"
  assert np.isnan(along[0]) and np.isnan(along[2]), "no evaluation between every-th epochs"
  np.testing.assert_allclose(along[3], float(acc(out)["forget_acc"]), atol=1e-6,
                             err_msg="the last evaluation is not of the returned weights")
  plain, _ = jax.jit(uj.finetune(ctx, epochs=4))(variables, data, jax.random.PRNGKey(0))
  chex.assert_trees_all_close(out, plain, atol=1e-6)


def test_progress_is_reported_from_inside_the_program(setting):
  ctx, variables, forget, retain = setting
  seen = []
  steps = uj.neggrad_plus.steps(ctx, epochs=3)
  data = methods.select_data(uj.neggrad_plus, forget=forget, retain=retain, ctx=ctx)
  jax.block_until_ready(jax.jit(lambda v, d, k: steps_lib.run(
      steps, v, d, k, progress=lambda done, total: seen.append((int(done), int(total)))))(
          variables, data, jax.random.PRNGKey(0)))
  jax.effects_barrier()
  per_epoch = batching.steps_per_epoch(forget[0].shape[0], 64)
  assert [d for d, _ in seen] == [per_epoch * (e + 1) for e in range(3)]
  assert {t for _, t in seen} == {3 * per_epoch}


def test_every_must_be_a_positive_whole_number(setting):
  ctx, variables, forget, retain = setting
  data = methods.select_data(uj.finetune, retain=retain, ctx=ctx)
  with pytest.raises(ValueError, match="every=0"):
    steps_lib.run(uj.finetune.steps(ctx), variables, data, jax.random.PRNGKey(0), every=0)


def test_an_unknown_phase_name_lists_the_phases(setting):
  with pytest.raises(ValueError, match="allowed: max, min"):
    uj.scrub.steps(setting[0]).phase("maximise")


class _Killed(Exception):
  pass


class _DyingStore(checkpoint.ResumeStore):
  """A resume store whose process "dies" right after writing checkpoint `die_at`."""
  die_at = None

  def save(self, name, step, tree, meta):
    super().save(name, step, tree, meta)
    if step == self.die_at:
      raise _Killed


@pytest.mark.parametrize("name,hp", [
    ("scrub", dict(epochs=3, max_epochs=2)),            # cycles, an inactive phase
    pytest.param("unsir", dict(noise_steps=20),         # data-free steps, enter, two phases
                 marks=pytest.mark.integration),       # (the default lane's 5 minutes)
    ("ssd", {})])                                       # one-shot edit
def test_a_method_killed_mid_way_resumes_to_the_one_program_result(setting, tmp_path, name, hp):
  """Checkpointed chunks (`MethodProgram.resumable`, one epoch / cycle or 10 data-free
  steps each), killed after the second checkpoint and rerun from the store, end with the
  weights, aux and along-evaluations of the uninterrupted one-program run (2 vmapped
  seeds; equal up to XLA fusing the pieces differently)."""
  ctx, variables, forget, retain = setting
  method = methods.get_method(name)
  data = method_data.select(method, forget=forget, retain=retain, ctx=ctx)
  seeds = driver.stack_seeds([variables, variables])
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  acc = lambda v, f: {"forget_acc": uj.accuracy(ctx.model.logits(v, f[0]), f[1])}
  want = driver.apply_method(method, ctx, hp, seeds, data, keys, along=(acc, 1),
                             eval_data=forget)
  store = _DyingStore.open(tmp_path / "resume", {"test": name})
  chunks = steps_lib.plan(method.steps(ctx, **hp), jax.eval_shape(
      method.steps(ctx, **hp).init, variables, data, keys[0]), 1, 10)
  saves = [i + 1 for i, c in enumerate(chunks) if c.kind != "enter"]
  store.die_at = saves[1] if len(saves) > 1 else saves[0]
  with pytest.raises(_Killed):
    driver.apply_method(method, ctx, hp, seeds, data, keys, along=(acc, 1), eval_data=forget,
                        resume=(store, "steps", 1, 10))
  store.die_at, lines = None, []
  got = driver.apply_method(method, ctx, hp, seeds, data, keys, along=(acc, 1),
                            eval_data=forget, resume=(store, "steps", 1, 10),
                            log=lines.append)
  assert any(f"resumed after chunk {saves[1] if len(saves) > 1 else saves[0]}/{len(chunks)}"
             in line for line in lines), lines
  chex.assert_trees_all_close(got.variables, want.variables, atol=1e-6, rtol=1e-6)
  assert got.aux.keys() == want.aux.keys()
  assert got.along.keys() == want.along.keys() and want.along, "along evaluations lost"
  for k in want.along:
    np.testing.assert_allclose(got.along[k], want.along[k], atol=1e-6, err_msg=k)
