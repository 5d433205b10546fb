"""Search spaces and the vmapped configuration grid (unlearn_jax.tuning)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import methods, models, train, tuning
from unlearn_jax.methods.base import check_space
import method_data  # tests/method_data.py: select_data with targets for every method


@pytest.fixture(scope="module")
def setup(digits, digits_split):
  m = models.get_model("mlp", 10, hidden=(32,))
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  cfg = train.TrainConfig(epochs=3, batch_size=64, lr=0.05)
  fit = jax.jit(train.fit, static_argnums=(0, 1))
  seeds = [fit(m, cfg, models.init_variables(m, jax.random.PRNGKey(s), digits.input_shape), x, y,
               jax.random.PRNGKey(10 + s))[0] for s in range(2)]
  variables = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *seeds)
  forget = (x[digits_split.forget][:40], y[digits_split.forget][:40])
  retain = (x[digits_split.retain][:200], y[digits_split.retain][:200])
  ctx = methods.MethodContext(m, 10, digits.input_shape, (), "mlp")
  return m, variables, forget, retain, ctx


@pytest.mark.parametrize("name,fixed", [
    ("finetune", dict(epochs=1)),
    ("ssd", {}),
    ("salun", dict(epochs=1)),
])
@pytest.mark.optimised
def test_vmapped_grid_equals_configurations_run_one_by_one(setup, name, fixed):
  m, variables, forget, retain, ctx = setup
  method = methods.get_method(name)
  configs = tuning.sample_configs(method, 3, jax.random.PRNGKey(0))
  data = method_data.select(method, forget, retain, ctx=ctx)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  grid, _ = jax.jit(tuning.grid_unlearn(method, ctx, configs, fixed))(variables, data, keys)
  for k, cfg in enumerate(tuning.configs_list(configs)):
    one = method(ctx, **fixed, **cfg)
    alone = jax.jit(jax.vmap(lambda v, key: one(v, data, key)[0]))(variables, keys)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[k], grid), alone,
                                rtol=1e-4, atol=1e-5)


def test_every_declared_space_traces(setup):
  """Every searchable hyperparameter reaches the update as a traced value."""
  m, variables, forget, retain, _ = setup
  for name in methods.list_methods():
    method = methods.get_method(name)
    if not method.space or "batch_norm" in method.requires:
      continue
    ctx = methods.MethodContext(m, 10, (8, 8, 1), () if method.reads else (3,), "mlp")
    data = (method_data.select(method, forget, retain, ctx=ctx) if method.reads
            else methods.UnlearnData(None, None))
    short = {k: 1 for k, v in method.defaults.items() if isinstance(v, int)
             and not isinstance(v, bool) and ("epochs" in k or k.endswith("steps") or k == "cycles")}
    configs = tuning.sample_configs(method, 2, jax.random.PRNGKey(0))
    assert set(configs) == {k for k in method.space if not tuning.is_outer(method, k)}, name
    out = jax.eval_shape(tuning.grid_unlearn(method, ctx, configs, short), variables, data,
                         jax.random.split(jax.random.PRNGKey(0), 2))
    assert jax.tree_util.tree_leaves(out[0])[0].shape[:2] == (2, 2), name


def test_samples_start_at_the_defaults_and_stay_in_range():
  method = methods.get_method("scrub")
  configs = tuning.sample_configs(method, 64, jax.random.PRNGKey(3))
  for k, (_scale, low, high) in method.space.items():
    assert configs[k][0] == np.float32(method.defaults[k])
    assert np.all((configs[k][1:] >= np.float32(low)) & (configs[k][1:] <= np.float32(high)))
  again = tuning.sample_configs(method, 64, jax.random.PRNGKey(3))
  chex.assert_trees_all_equal(configs, again)


def test_samples_are_a_latin_hypercube_one_draw_per_stratum():
  method = methods.get_method("scrub")
  k = 9
  configs = tuning.sample_configs(method, k, jax.random.PRNGKey(5))
  for name, (scale, low, high) in method.space.items():
    x = np.asarray(configs[name][1:], float)
    u = (np.log(x / low) / np.log(high / low)) if scale == "log" else (x - low) / (high - low)
    strata = np.minimum(np.floor(u * (k - 1)), k - 2).astype(int)
    assert sorted(strata) == list(range(k - 1)), (name, strata)


def test_selection_keeps_the_retain_floor():
  scores = np.array([[17.0, 17.4], [10.0, 11.0], [12.0, 12.5], [np.inf, 1.0]])
  retain = np.array([[1.0, 1.0], [0.7, 0.8], [0.95, 0.9], [1.0, 1.0]])
  original = np.array([1.0, 1.0])
  # Config 1 scores best but keeps 75% of RA; 3 is non-finite on one seed: never chosen.
  assert tuning.select_configuration(scores, retain, original, 0.9) == (2, True)
  assert tuning.select_configuration(scores, retain, original, 0.0) == (1, True)
  # Nothing eligible: the configuration that keeps the most retain accuracy.
  low = np.array([[0.5, 0.5], [0.6, 0.7], [0.2, 0.2], [1.0, 1.0]])
  assert tuning.select_configuration(scores, low, original, 0.9) == (1, False)
  with pytest.raises(ValueError, match="min_retain=1.5 must lie in"):
    tuning.select_configuration(scores, retain, original, 1.5)
  with pytest.raises(ValueError, match="must both be"):
    tuning.select_configuration(scores[0], retain[0], original)


def test_bad_spaces_and_budgets_are_named():
  defaults = dict(lr=0.1, epochs=3)
  with pytest.raises(ValueError, match="'momentum', which is not a hyperparameter"):
    check_space("m", dict(momentum=("log", 0.1, 1.0)), defaults)
  with pytest.raises(ValueError, match="integer epochs is .*holding its default 3"):
    check_space("m", dict(epochs=(1, 2)), defaults)
  with pytest.raises(ValueError, match="positive integers"):
    check_space("m", dict(epochs=("log", 1, 9)), defaults)
  with pytest.raises(ValueError, match="only float hyperparameters .* and integer ones"):
    check_space("m", dict(name=(1.0, 2.0)), dict(name="a"))
  with pytest.raises(ValueError, match="low > 0 on a log scale"):
    check_space("m", dict(lr=("log", 0.0, 1.0)), defaults)
  with pytest.raises(ValueError, match="budget=0 must be >= 1"):
    tuning.sample_configs(methods.get_method("finetune"), 0, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="no search space; searchable: lr"):
    tuning.sample_configs(methods.get_method("finetune"), 2, jax.random.PRNGKey(0),
                          names=["momentum"])


def test_a_bad_configuration_fails_before_tracing(setup):
  _, _, _, _, ctx = setup
  method = methods.get_method("finetune")
  with pytest.raises(methods.HyperparameterError, match="lr"):
    tuning.grid_unlearn(method, ctx, {"lr": np.array([0.1, -1.0], np.float32)})


def test_selection_parts_never_include_test_or_reported_forget_examples(digits_split):
  parts = tuning.selection_parts(digits_split, 0.2, seed=0)
  for name in ("forget", "retain"):
    sel, rep = parts[f"{name}_select"], parts[f"{name}_report"]
    assert not np.intersect1d(sel, rep).size
    np.testing.assert_array_equal(np.sort(np.concatenate([sel, rep])),
                                  np.sort(getattr(digits_split, name)))
    assert abs(sel.size - 0.2 * getattr(digits_split, name).size) <= 1
  assert not np.intersect1d(parts["val"], digits_split.test).size
  with pytest.raises(ValueError, match="fraction=1.0 must lie strictly between 0 and 1"):
    tuning.selection_parts(digits_split, 1.0)


def test_selection_scores():
  retrained = dict(retain_acc=1.0, forget_acc=0.55, test_acc=0.53, mia_loss_lr=0.47)
  assert tuning.retrain_gap_score(retrained, retrained) == 0.0
  doing_nothing = dict(retain_acc=1.0, forget_acc=1.0, test_acc=0.545, mia_loss_lr=0.77)
  np.testing.assert_allclose(tuning.retrain_gap_score(doing_nothing, retrained),
                             (0 + 45 + 1.5 + 30) / 4)
  # no_retrain: forgetting down to held-out accuracy with nothing lost scores 0.
  good = dict(retain_acc=1.0, forget_acc=0.53, test_acc=0.53, mia_loss_lr=0.5)
  assert tuning.no_retrain_score(good, doing_nothing, "random") == pytest.approx(1.5)
  collapsed = dict(retain_acc=0.1, forget_acc=0.1, test_acc=0.1, mia_loss_lr=0.5)
  assert tuning.no_retrain_score(collapsed, doing_nothing, "random") > 100
  forgot_class = dict(retain_acc=0.99, forget_acc=0.0, test_acc=0.97, mia_loss_lr=0.5)
  original = dict(retain_acc=1.0, forget_acc=1.0, test_acc=0.97, mia_loss_lr=0.45)
  assert tuning.no_retrain_score(forgot_class, original, "class") == pytest.approx(1.0)


@pytest.mark.optimised
def test_sequential_search_equals_the_vmapped_grid(setup):
  m, variables, forget, retain, ctx = setup
  method = methods.get_method("neggrad_plus")
  configs = tuning.sample_configs(method, 3, jax.random.PRNGKey(2))
  data = method_data.select(method, forget, retain, ctx=ctx)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  vm, _, _ = tuning.run_search(method, ctx, configs, dict(epochs=1), variables, data, keys, "vmap")
  seq, _, _ = tuning.run_search(method, ctx, configs, dict(epochs=1), variables, data, keys,
                                "sequential")
  chex.assert_trees_all_close(vm, seq, rtol=1e-4, atol=1e-5)


def test_integer_hyperparameters_form_an_outer_loop():
  """Integer spaces (epochs) are not sampled: each value is one compiled program, the
  defaults first; a value the user set stays fixed."""
  method = methods.get_method("neggrad_plus")
  assert method.space["epochs"] == (5, 20)
  assert "epochs" not in tuning.sample_configs(method, 4, jax.random.PRNGKey(0))
  assert tuning.outer_configs(method) == [{"epochs": 5}, {"epochs": 20}]
  assert tuning.outer_configs(method, fixed={"epochs"}) == [{}]
  assert tuning.outer_configs(methods.get_method("finetune")) == [{}]
