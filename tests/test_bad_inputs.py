"""Bad inputs get one answer each: refused with a one-line ValueError naming the argument
where the values are concrete, reported in every method's aux under `jit` (where a traced
value cannot raise), and warned about in a run's summary. Impossible batch sizes are
clipped by a stated rule (`batching.batch_for`) or refused where the rule cannot hold."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import batching, steps
from experiments.reports import run as report


@pytest.fixture(scope="module")
def setup():
  ds = uj.load_dataset("digits")
  model = uj.as_adapter(uj.get_model("mlp", 10))
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  variables = model.init(jax.random.PRNGKey(0), ds.input_shape)
  ctx = uj.MethodContext(model, num_classes=10, input_shape=ds.input_shape)
  forget, retain = (x[:40], y[:40]), (x[40:240], y[40:240])
  return ctx, variables, forget, retain


def _with_nan(pair, rows=(0,)):
  """`pair` with one whole pixel row (8 values) of each listed example set to NaN."""
  x = pair[0]
  for r in rows:
    x = x.at[r, 0].set(jnp.nan)
  return x, pair[1]


def _one_line(error) -> str:
  text = str(error.value)
  assert "\n" not in text, f"not one line: {text!r}"
  return text


# ------------------------------------------------------------------ concrete: refused
def test_non_finite_examples_are_refused_naming_the_field(setup):
  ctx, variables, forget, retain = setup
  with pytest.raises(ValueError) as e:
    uj.select_data(uj.neggrad, forget=_with_nan(forget), ctx=ctx)
  assert "forget examples hold 8 non-finite value(s)" in _one_line(e)
  with pytest.raises(ValueError) as e:
    uj.finetune(ctx)(variables, uj.UnlearnData(None, _with_nan(retain)), jax.random.PRNGKey(0))
  assert "finetune: data.retain examples hold 8 non-finite" in _one_line(e)


def test_a_non_finite_weight_is_refused_naming_the_leaf(setup):
  ctx, variables, _, retain = setup
  bad = jax.tree_util.tree_map(lambda a: a, variables)
  bad["params"]["Dense_0"]["kernel"] = bad["params"]["Dense_0"]["kernel"].at[0, 0].set(jnp.inf)
  with pytest.raises(ValueError) as e:
    uj.finetune(ctx)(bad, uj.UnlearnData(None, retain), jax.random.PRNGKey(0))
  assert "finetune: variables hold 1 non-finite value(s) (NaN/Inf) in " \
         "['params']['Dense_0']['kernel']" in _one_line(e)


def test_labels_out_of_range_are_refused(setup):
  ctx, variables, forget, _ = setup
  with pytest.raises(ValueError) as e:
    uj.neggrad(ctx)(variables, uj.UnlearnData((forget[0], forget[1].at[3].set(10)), None),
                    jax.random.PRNGKey(0))
  assert "neggrad: data.forget labels lie in [0, 10]; allowed: [0, 10)" in _one_line(e)


# ------------------------------------------------------------------ traced: reported
def test_under_jit_non_finite_inputs_and_bad_labels_are_reported_by_every_method(setup):
  """The same aux keys for a method that reads the forget set, one that reads the retain
  set, and a zero-shot one; the counts are the planted ones."""
  ctx, variables, forget, retain = setup
  bad_forget = _with_nan((forget[0], forget[1].at[1].set(-1).at[2].set(11)), rows=(0, 5))
  for name, data in (("neggrad", uj.UnlearnData(bad_forget, None)),
                     ("finetune", uj.UnlearnData(None, bad_forget)),
                     ("boundary_shrink", uj.UnlearnData(bad_forget, None))):
    _, aux = jax.jit(uj.get_method(name)(ctx, epochs=1))(variables, data, jax.random.PRNGKey(0))
    assert int(aux["nonfinite_inputs"]) == 16, f"{name}: {aux['nonfinite_inputs']}"
    assert int(aux["invalid_labels"]) == 2, f"{name}: {aux['invalid_labels']}"
  out, aux = jax.jit(uj.zs_minmax_noise(
      uj.MethodContext(ctx.model, 10, ctx.input_shape, forget_classes=(3,))))(
      jax.tree_util.tree_map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), variables),
      uj.UnlearnData(None, None), jax.random.PRNGKey(0))
  n_leaves = len(jax.tree_util.tree_leaves(variables))
  assert int(aux["nonfinite_inputs"]) == n_leaves and int(aux["invalid_labels"]) == 0


def test_nan_weights_are_never_silent(setup):
  """finetune on a NaN retain example under jit returns NaN weights (it has no guard) and
  says so: `nonfinite_weights`, and a warning line for the run's summary."""
  ctx, variables, _, retain = setup
  out, aux = jax.jit(uj.finetune(ctx, epochs=1))(variables, uj.UnlearnData(None, _with_nan(retain)),
                                                jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(out)
  assert int(aux["nonfinite_weights"]) == sum(int(jnp.sum(~jnp.isfinite(a))) for a in leaves) > 0
  lines = report.method_warnings({"finetune": types.SimpleNamespace(
      aux={k: np.asarray([v]) for k, v in aux.items()})})
  assert len(lines) == 1 and "non-finite weights in its result (unusable)" in lines[0], lines


def test_dropped_steps_are_counted_in_a_cycled_schedule(setup):
  """SCRUB drops every max step on a batch with a NaN example: with a 40-example forget set
  (one batch an epoch) and its 3 max epochs, exactly 3 steps; the weights stay finite."""
  ctx, variables, forget, retain = setup
  _, aux = jax.jit(uj.scrub(ctx, max_epochs=3))(variables, uj.UnlearnData(_with_nan(forget), retain),
                                               jax.random.PRNGKey(0))
  assert int(aux["nonfinite_steps"]) == 3 and int(aux["nonfinite_weights"]) == 0, aux


def test_every_method_returns_the_common_keys(setup):
  """`steps.with_checks` is applied by the registry: the steps API and a direct
  `steps.run` report the same keys as the one-call method."""
  ctx, variables, _, retain = setup
  _, aux = steps.run(uj.finetune.steps(ctx, epochs=1), variables, uj.UnlearnData(None, retain),
                     jax.random.PRNGKey(0))
  assert set(steps.COMMON_AUX) <= set(aux)


# ------------------------------------------------------------------ batch sizes
def test_a_batch_larger_than_its_set_is_the_whole_set(setup):
  """batch_size=100000 on 50 examples trains exactly as batch_size=50 (bitwise) and asks
  for no more memory: the batch is clipped to the set (`batching.batch_for`)."""
  ctx, variables, _, retain = setup
  small = uj.UnlearnData(None, (retain[0][:50], retain[1][:50]))
  runs = {}
  for b in (100000, 50):
    fn = jax.jit(uj.finetune(ctx, epochs=2, batch_size=b))
    runs[b] = fn(variables, small, jax.random.PRNGKey(0))[0]
    mem = fn.lower(variables, small, jax.random.PRNGKey(0)).compile().memory_analysis()
    if mem is not None:
      assert mem.temp_size_in_bytes < 50e6, f"batch {b}: {mem.temp_size_in_bytes} bytes"
  for a, b in zip(jax.tree_util.tree_leaves(runs[100000]), jax.tree_util.tree_leaves(runs[50])):
    np.testing.assert_array_equal(a, b)
  assert batching.epoch_indices(jax.random.PRNGKey(0), 50, 100000).shape == (1, 50)
  assert batching.fixed_batches((jnp.zeros((7, 2)),), 1000)[1].shape == (1, 7)


def test_a_certified_batch_larger_than_the_data_is_a_hyperparameter_error(setup):
  """noisy_finetune's certificate depends on its batch: it refuses instead of clipping."""
  ctx, variables, forget, retain = setup
  adapter = uj.as_adapter(uj.get_model("mlp", 10))
  ctx = uj.MethodContext(adapter, num_classes=10, input_shape=ctx.input_shape)
  with pytest.raises(uj.methods.HyperparameterError) as e:
    uj.noisy_finetune(ctx, batch_size=100000)(variables, uj.UnlearnData(forget, retain),
                                              jax.random.PRNGKey(0))
  assert _one_line(e) == ("noisy_finetune: batch_size=100000 exceeds the 240 examples of "
                          "D_r ∪ D_f it batches; allowed: 1..240")


# ------------------------------------------------------------------ a useless certificate
@pytest.mark.integration   # a trained model and two certified runs
def test_a_certificate_on_a_useless_head_says_so(digits_mlp):
  """noisy_finetune at ε 0.1 with 50 epochs needs so much noise that the head falls to
  chance on D_r; the certificate still holds, and the aux and the summary say the head is
  useless. At its defaults the head keeps its skill and nothing is said."""
  ds, model, variables, _, _ = digits_mlp
  x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
  split = uj.make_split(uj.SplitSpec("random", 0.1), ds.train_y, ds.test_y, 10)
  ctx = uj.MethodContext(model, num_classes=10, input_shape=ds.input_shape)
  data = uj.select_data(uj.noisy_finetune, forget=(x[split.forget], y[split.forget]),
                        retain=(x[split.retain], y[split.retain]), ctx=ctx)
  sets = {}
  for label, hp in (("defaults", {}), ("tight", dict(epsilon=0.1, epochs=50))):
    _, aux = jax.jit(uj.noisy_finetune(ctx, **hp))(variables, data, jax.random.PRNGKey(3))
    sets[label] = types.SimpleNamespace(aux={k: np.asarray([v]) for k, v in aux.items()})
    assert float(aux["epsilon_bound"]) <= float(aux["certified_epsilon"]) + 1e-6
  assert float(sets["defaults"].aux["certificate_useful"][0]) == 1.0
  assert float(sets["tight"].aux["certificate_useful"][0]) == 0.0
  assert float(sets["tight"].aux["retain_accuracy_after"][0]) < 0.3
  lines = report.method_warnings(sets)
  assert len(lines) == 1 and lines[0].startswith("tight: its certificate holds but"), lines
