"""The method contract, over the whole registry, on real digits data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import methods, metrics, models, train


@pytest.fixture(scope="module")
def setup(digits, digits_split):
  m = models.get_model("mlp", 10)
  v0 = models.init_variables(m, jax.random.PRNGKey(0), digits.input_shape)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  cfg = train.TrainConfig(epochs=15, batch_size=64, lr=0.05)
  v, _ = jax.jit(train.fit, static_argnums=(0, 1))(m, cfg, v0, x, y, jax.random.PRNGKey(1))
  forget = (x[digits_split.forget], y[digits_split.forget])
  retain = (x[digits_split.retain], y[digits_split.retain])
  ctx = methods.MethodContext(m, 10, digits.input_shape, (), "mlp")
  return m, v, forget, retain, ctx


def _quick(spec):
  """Defaults with at most one epoch (two steps/cycles), to keep the contract test fast."""
  def small(k, v):
    if isinstance(v, int) and "epochs" in k:
      return min(v, 1)
    if isinstance(v, int) and (k.endswith("steps") or k == "cycles"):
      return min(v, 2)
    if isinstance(v, int) and k.endswith("per_class"):
      return min(v, 8)
    if isinstance(v, int) and k in ("synth_batch", "num_examples") or (
        k == "batch_size" and isinstance(v, int) and v > 64):
      return min(v, 32)
    return v
  return {k: small(k, v) for k, v in spec.defaults.items()}


@pytest.fixture(scope="module")
def cnn_setup(digits):
  """A small BatchNorm model, for methods that require one (deepinversion)."""
  m = models.get_model("cnn", 10, widths=(8, 16), dense=32)
  v0 = models.init_variables(m, jax.random.PRNGKey(0), digits.input_shape)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  v, _ = jax.jit(train.fit, static_argnums=(0, 1))(
      m, train.TrainConfig(epochs=3, batch_size=64, lr=0.05), v0, x, y, jax.random.PRNGKey(1))
  return m, v


# The contract (jit, vmap over keys, tree structure, dtypes, finite, deterministic) runs for
# every method in tests/test_library_use.py, on three user models; the data-access half of
# it is below (select_data, Untouchable).


@pytest.mark.parametrize("name", methods.list_methods())
def test_method_documents_update_rule_paper_and_data(name):
  spec = methods.get_method(name)
  doc = spec.factory.__doc__ or ""
  assert "Reads:" in doc and "Defaults:" in doc and spec.paper


def test_unknown_hyperparameter_is_named(setup):
  *_, ctx = setup
  with pytest.raises(ValueError, match="finetune: alpha=1.0 is not a hyperparameter"):
    methods.get_method("finetune")(ctx, alpha=1.0)


def test_neggrad_stops_instead_of_diverging(setup):
  m, v, forget, retain, ctx = setup
  fn = methods.make_method("neggrad", ctx, lr=50.0, epochs=20, grad_clip=0.0)
  out, aux = jax.jit(fn)(v, methods.UnlearnData(forget=forget), jax.random.PRNGKey(0))
  chex.assert_tree_all_finite(out)
  assert bool(aux["stopped_early"])


# `whole` dilutes 126 poisoned examples among 1,258: it needs more optimisation.
@pytest.mark.parametrize("variant,epochs,lr", [("interleaved", 3, 0.02), ("forget_only", 3, 0.02),
                                               ("whole", 5, 0.05), ("hybrid", 3, 0.02)])
def test_random_label_variants_move_forget_accuracy_down(setup, variant, epochs, lr):
  m, v, forget, retain, ctx = setup
  fn = methods.make_method("random_label", ctx, variant=variant, epochs=epochs, lr=lr)
  out, _ = jax.jit(fn)(v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  before = metrics.accuracy(train.predict(m, v, forget[0]), forget[1])
  after = metrics.accuracy(train.predict(m, out, forget[0]), forget[1])
  assert after < before


def test_random_label_rejects_unknown_variant(setup):
  *_, ctx = setup
  with pytest.raises(ValueError, match="allowed: interleaved, forget_only, whole, hybrid"):
    methods.make_method("random_label", ctx, variant="mixed")


def test_salun_masked_weights_stay_bitwise(setup):
  m, v, forget, retain, ctx = setup
  from unlearn_jax.importance import saliency_mask
  mask = saliency_mask(m, v, forget, 64, 0.5)
  fn = methods.make_method("salun", ctx, epochs=2)
  out, aux = jax.jit(fn)(v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  for keep, new, old in zip(jax.tree_util.tree_leaves(mask),
                            jax.tree_util.tree_leaves(out["params"]),
                            jax.tree_util.tree_leaves(v["params"])):
    np.testing.assert_array_equal(np.asarray(new)[~np.asarray(keep)],
                                  np.asarray(old)[~np.asarray(keep)])
    assert np.any(np.asarray(new)[np.asarray(keep)] != np.asarray(old)[np.asarray(keep)])
  total = sum(x.size for x in jax.tree_util.tree_leaves(v["params"]))
  assert abs(int(aux["salient_weights"]) / total - 0.5) < 0.01


def test_ssd_fisher_importance_is_the_mean_squared_per_example_gradient(setup):
  m, v, forget, retain, ctx = setup
  from unlearn_jax.importance import ce_gradient as _ce_grad, weight_importance
  x, y = forget[0][:8], forget[1][:8]
  fisher = weight_importance(m, v, (x, y), 8, "fisher")
  by_hand = jax.tree_util.tree_map(
      lambda *g: jnp.mean(jnp.stack([gi ** 2 for gi in g]), 0),
      *[_ce_grad(m, v, x[i:i + 1], y[i:i + 1]) for i in range(8)])
  chex.assert_trees_all_close(fisher, by_hand, rtol=1e-4, atol=1e-10)
  out, aux = jax.jit(methods.make_method("ssd", ctx, importance="fisher"))(
      v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  chex.assert_tree_all_finite(out)


def test_woodfisher_product_matches_the_rank_one_recursion():
  from unlearn_jax.methods.curvature import woodfisher_inverse_product
  rng = np.random.default_rng(0)
  n, p, damp = 12, 30, 0.05
  g = rng.normal(size=(n, p))
  v = rng.normal(size=p)
  inv = np.eye(p) / damp                      # F_0^-1 = I/λ, then N Sherman-Morrison updates
  for gi in g:
    u = inv @ gi
    inv = inv - np.outer(u, u) / (n + gi @ u)
  direct = np.linalg.solve(damp * np.eye(p) + g.T @ g / n, v)
  np.testing.assert_allclose(inv @ v, direct, rtol=1e-6)
  got = woodfisher_inverse_product(jnp.asarray(g, jnp.float32), jnp.asarray(v, jnp.float32), damp)
  np.testing.assert_allclose(np.asarray(got), direct, rtol=2e-3, atol=1e-3)


def test_influence_caps_the_gradient_matrix(setup):
  m, v, forget, retain, ctx = setup
  p = sum(a.size for a in jax.tree_util.tree_leaves(v["params"]))
  fn = methods.make_method("influence", ctx, max_gradient_mib=100 * 4 * p / 2 ** 20)
  _, aux = jax.jit(fn)(v, methods.UnlearnData(forget, retain), jax.random.PRNGKey(0))
  assert int(aux["fisher_examples"]) == 100


@pytest.mark.parametrize("threshold,expect", [   # "none": integration (the default lane's time)
    pytest.param(1.01, "none", marks=pytest.mark.integration), (0.8, "some"), (0.0, "all")])
def test_activation_reset_selects_conv_kernels_by_threshold(digits, digits_split, threshold,
                                                             expect):
  m = models.get_model("cnn", 10, widths=(8, 16), dense=32)
  x, y = jnp.asarray(digits.train_x), jnp.asarray(digits.train_y)
  v0 = models.init_variables(m, jax.random.PRNGKey(0), digits.input_shape)
  v, _ = jax.jit(train.fit, static_argnums=(0, 1))(
      m, train.TrainConfig(epochs=3, batch_size=64, lr=0.05), v0, x, y, jax.random.PRNGKey(1))
  three = np.where(digits.train_y == 3)[0]
  rest = np.where(digits.train_y != 3)[0]
  ctx = methods.MethodContext(m, 10, digits.input_shape, (3,), "cnn")
  fn = methods.make_method("activation_reset", ctx, threshold=threshold, epochs=1)
  out, aux = jax.jit(fn)(v, methods.UnlearnData((x[three], y[three]), (x[rest], y[rest])),
                         jax.random.PRNGKey(2))
  chex.assert_tree_all_finite(out)
  total = 8 + 16 + 32                         # conv0, conv1 and fc channels (the head is always reset)
  reset = int(aux["reset_kernels"])
  assert {"none": reset == 0, "some": 0 < reset < total, "all": reset == total}[expect], reset


class Untouchable:
  """A dataset stand-in that raises on any access: zero-shot methods must never see one."""

  def __getattr__(self, name):
    raise AssertionError(f"a zero-shot method touched the data (.{name})")

  def __getitem__(self, i):
    raise AssertionError("a zero-shot method touched the data ([])")

  def __iter__(self):
    raise AssertionError("a zero-shot method touched the data (iter)")


ZERO_SHOT = [n for n in methods.list_methods() if not methods.get_method(n).reads]


def test_zero_shot_family_is_registered():
  assert set(ZERO_SHOT) == {"zs_minmax_noise", "gkt", "deepinversion"}


@pytest.mark.parametrize("name", ZERO_SHOT)
def test_runner_hands_zero_shot_methods_no_data(name, setup, cnn_setup):
  from unlearn_jax import driver
  m, v = cnn_setup
  ctx = methods.MethodContext(m, 10, (8, 8, 1), (3,), "cnn")
  spec = methods.get_method(name)
  data = methods.select_data(spec, Untouchable(), Untouchable(), num_classes=10)
  assert data == methods.UnlearnData(None, None)
  stacked = jax.tree_util.tree_map(lambda a: a[None], v)
  out = driver.apply_method(spec, ctx, _quick(spec), stacked, data,
                            jax.random.split(jax.random.PRNGKey(0), 1), seed_mode="vmap")
  chex.assert_trees_all_equal_shapes_and_dtypes(out.variables, stacked)


def test_untouchable_data_does_fail_a_method_that_reads():
  spec = methods.get_method("finetune")
  data = methods.select_data(spec, Untouchable(), Untouchable(), num_classes=10)
  m = models.get_model("mlp", 10)
  # The boundary check refuses it before the method runs (it is no (x, y) pair).
  with pytest.raises(ValueError, match="must be an \\(x, y\\) pair"):
    spec(methods.MethodContext(m, 10, (8, 8, 1)))(
        models.init_variables(m, jax.random.PRNGKey(0), (8, 8, 1)), data, jax.random.PRNGKey(0))


def test_zero_shot_needs_forget_classes(setup):
  m, v, forget, retain, ctx = setup
  with pytest.raises(ValueError, match="forget_classes"):
    methods.make_method("gkt", ctx)


def test_deepinversion_refuses_a_model_without_batch_norm(setup):
  m, v, forget, retain, ctx = setup
  ctx = methods.MethodContext(m, 10, ctx.input_shape, (3,), "mlp")
  fn = methods.make_method("deepinversion", ctx, synth_steps=1, epochs=1)
  with pytest.raises(ValueError, match="BatchNorm"):
    fn(v, methods.UnlearnData(), jax.random.PRNGKey(0))


def test_bn_statistic_loss_is_zero_at_the_running_statistics(cnn_setup):
  """With running stats set to a batch's own BN-input statistics the term vanishes."""
  from unlearn_jax.methods.deepinversion import batch_norm_inputs, bn_statistic_loss
  m, v = cnn_setup
  x = jax.random.normal(jax.random.PRNGKey(3), (16, 8, 8, 1))
  _, seen = batch_norm_inputs(m, v, x)
  assert [p[-1] for p, _ in seen] == ["bn0", "bn1"]
  _, before = bn_statistic_loss(m, v, x)
  assert float(before) > 0
  # Replace each BN's running stats by the statistics of its input on x, layer by layer.
  stats = jax.tree_util.tree_map(lambda a: a, v["batch_stats"])
  for i in range(len(seen)):
    _, seen = batch_norm_inputs(m, {**v, "batch_stats": stats}, x)
    path, a = seen[i]
    stats = {**stats, path[-1]: {"mean": a.mean((0, 1, 2)), "var": a.var((0, 1, 2))}}
  _, after = bn_statistic_loss(m, {**v, "batch_stats": stats}, x)
  assert float(after) < 1e-4, float(after)


def test_relearn_steps_zero_when_already_known_and_agree_under_jit_and_vmap(setup):
  from unlearn_jax import metrics
  m, v, forget, retain, ctx = setup
  three = forget[1] == forget[1][0]
  cls = (forget[0][three], forget[1][three])
  steps, reached = metrics.relearn_steps(m, v, cls, 0.95, jax.random.PRNGKey(0))
  assert int(steps) == 0 and bool(reached)
  # A freshly initialised model has to learn the class: jit and vmap agree.
  v0 = models.init_variables(m, jax.random.PRNGKey(9), (8, 8, 1))
  relearn = lambda v: metrics.relearn_steps(m, v, cls, 0.95, jax.random.PRNGKey(1), max_steps=60)
  s_jit, r_jit = jax.jit(relearn)(v0)
  s_vmap, r_vmap = jax.vmap(relearn)(jax.tree_util.tree_map(lambda a: a[None], v0))
  assert int(s_jit) == int(s_vmap[0]) > 0 and bool(r_jit) == bool(r_vmap[0])
  np.testing.assert_allclose(metrics.anamnesis_index([0, 10, 40], [20, 20, 20]), [0, 0.5, 2])


def test_deepinversion_entropy_filter_keeps_every_class():
  """The filter keeps the lowest-entropy half *of each class*, even a class whose images
  are all less confident than every image of another class."""
  from unlearn_jax.methods.deepinversion import per_class_lowest
  static = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
  perm = np.array([3, 7, 0, 9, 5, 1, 8, 2, 6, 4])
  labels = jnp.asarray(static[perm])
  # class 1 is always unsure (entropy ≥ 10), classes 0 and 2 always sure (< 1).
  scores = jnp.where(labels == 1, 10.0, 0.0) + jnp.arange(10.0) / 10
  # labels traced (as under vmap over keys); counts from the concrete static labels
  idx = np.asarray(jax.jit(lambda s, l: per_class_lowest(s, l, static, 0.5))(scores, labels))
  kept = np.asarray(labels)[idx]
  assert sorted(kept.tolist()) == [0, 0, 1, 1, 2]
  for c in (0, 1, 2):  # within a class, the kept ones are the least uncertain
    in_c = np.nonzero(np.asarray(labels) == c)[0]
    lowest = in_c[np.argsort(np.asarray(scores)[in_c])][:len(idx[kept == c])]
    assert set(idx[kept == c].tolist()) == set(lowest.tolist())


# The integration lane, for the default lane's 5 minutes (CI runs both lanes).
@pytest.mark.integration
def test_fisher_forgetting_class_branch_redraws_only_the_forgotten_head_column(setup):
  """The reference's class branch (Golatkar et al.'s get_mean_var): the forgotten class's
  head row gets mean 0 and variance 1e-3; nothing else changes beyond the Fisher noise."""
  m, v, forget, retain, ctx = setup
  data = methods.UnlearnData(forget, retain)
  key = jax.random.PRNGKey(0)
  adapter = ctx.model
  head0 = adapter.head_params(v["params"])
  for classes, class_head, zeroed in (((3,), "zero", True), ((3,), "noise", False),
                                      ((), "zero", False)):
    c = methods.MethodContext(m, 10, ctx.input_shape, classes, "mlp")
    out, _ = jax.jit(methods.make_method("fisher_forgetting", c, alpha=1e-14,
                                         class_head=class_head))(v, data, key)
    head = adapter.head_params(out["params"])
    others = np.delete(np.arange(10), 3)
    np.testing.assert_allclose(head["kernel"][:, others], head0["kernel"][:, others], atol=1e-3)
    if zeroed:
      assert float(jnp.max(jnp.abs(head["kernel"][:, 3]))) < 0.2
      assert 0.01 < float(jnp.std(head["kernel"][:, 3])) < 0.06
      assert not np.allclose(head["kernel"][:, 3], head0["kernel"][:, 3], atol=0.05)
    else:
      np.testing.assert_allclose(head["kernel"][:, 3], head0["kernel"][:, 3], atol=1e-3)
      np.testing.assert_allclose(head["bias"], head0["bias"], atol=1e-3)


def test_fisher_forgetting_class_branch_needs_a_head_or_says_which_option(setup):
  import flax.linen as nn
  from unlearn_jax.adapter import ModelAdapter

  class Headless(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(x.reshape((x.shape[0], -1)))

  ctx = methods.MethodContext(ModelAdapter(Headless()), 10, (8, 8, 1), (3,))
  with pytest.raises(ValueError, match="class_head='noise'"):
    methods.make_method("fisher_forgetting", ctx)
  methods.make_method("fisher_forgetting", ctx, class_head="noise")     # no head needed


def test_jit_lipschitz_takes_its_authors_values_per_scenario_and_family():
  """jwf40/Information-Theoretic-Unlearning's forget_*_main.py: ViT and VGG branches."""
  from experiments.pipeline import settings
  from unlearn_jax.methods.lipschitz import jit_lipschitz_defaults
  authors = {("random", "vit:64-2-4"): (0.5, 0.1), ("random", "cnn"): (0.01, 3e-4),
             ("class", "vit"): (0.8, 1.5), ("class", "resnet18"): (0.5, 3e-4),
             ("subclass", "vit:192-6-3"): (1.5, 0.5), ("subclass", "cnn:16-32-64"): (0.01, 3e-4)}
  for (scenario, model), (sigma, lr) in authors.items():
    assert jit_lipschitz_defaults(model, scenario) == {"sigma": sigma, "lr": lr}
  # Neither family (an MLP, a user's model): the registry's defaults stand.
  registry = methods.get_method("jit_lipschitz").defaults
  assert jit_lipschitz_defaults("mlp", "class") == {} == jit_lipschitz_defaults("UserNet", "random")
  kept = settings.resolve_hparams(("jit_lipschitz",), {"jit_lipschitz": dict(registry)}, "class",
                               lambda s: None, "mlp")["jit_lipschitz"]
  assert (kept["sigma"], kept["lr"]) == (registry["sigma"], registry["lr"]) == (0.1, 3e-4)
  # The CLIs' hyperparameters: the table, unless the user chose a value.
  got = settings.resolve_hparams(("jit_lipschitz",), {"jit_lipschitz": dict(registry)}, "class",
                              lambda s: None, "vit:64-2-4")["jit_lipschitz"]
  assert (got["sigma"], got["lr"]) == (0.8, 1.5)
  mine = settings.resolve_hparams(("jit_lipschitz",), {"jit_lipschitz": {**registry, "lr": 0.02}},
                               "class", lambda s: None, "vit")["jit_lipschitz"]
  assert (mine["sigma"], mine["lr"]) == (0.8, 0.02)
  with pytest.raises(ValueError, match="scenario='sideways' is unknown"):
    jit_lipschitz_defaults("cnn", "sideways")
